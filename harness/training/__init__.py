"""Training: the loop (loop.py), one optimizer step (engine.py), how examples become steps and micro-batches
(packing.py), the loss (loss.py), optimizers and schedules (optim.py), checkpoints (checkpoint.py) and data
parallelism (distributed.py)."""
