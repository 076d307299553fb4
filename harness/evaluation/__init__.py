"""Evaluation: what identifies an evaluation (identity.py, torch-free), lm-eval on the in-memory model
(lm_eval.py), the probes (probes.py, generate.py), the evaluator (evaluator.py), writing results (results.py),
evaluating a base, a checkpoint or a run (evaluate.py) and ``harness eval`` (cli.py)."""
