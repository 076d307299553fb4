"""harness: an SFT research harness that compares loss-masking regimes.

One tokenization of each conversation (with a segment id per token), many regimes
(prompt-masked, full, prompt-only, prompt-loss weight), grids launched with submitit,
every checkpoint evaluated, and tidy results for figures.
"""

__version__ = "0.1.0"
