"""The three version numbers of a results directory, in one place, with what bumps each.

* :data:`SCHEMA_VERSION` enters every run id (and ``plan.json``). Bump it when a config default changes
  (run ids hash only a config's difference from the defaults, so a changed default would otherwise give two
  different trainings one id; ``tests/test_run_ids.py`` fails until it is bumped) or when what a run directory
  holds changes incompatibly. A results directory of another schema is refused, never mixed in.
* :data:`EVAL_SCHEMA` is the format of ``eval/step-NNNNNN.json``; a file of another schema is not a result
  (it is redone).
* :data:`EVAL_VERSION` enters the eval hash: bump it when a probe's definition changes, so cached base
  results and base log-probs are recomputed.
"""

SCHEMA_VERSION = 2
EVAL_SCHEMA = 1
EVAL_VERSION = 1
