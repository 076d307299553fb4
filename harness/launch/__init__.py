"""The launcher: jobs (jobs.py), submitting a grid (submit.py), SLURM parameters (slurm.py), where a grid
stands (status.py) and its commands (cli.py)."""
