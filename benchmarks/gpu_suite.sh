#!/usr/bin/env bash
# The prepared GPU suite (issue #19): attention correctness for every kernel, Qwen2.5-0.5B-shaped throughput and
# MFU through the real engine, and ours vs TRL's best offline configuration -> benchmarks/out/gpu.json.
# One command, < 8 minutes on one H200, nothing large installed (details: benchmarks/gpu_suite.py).
#
# Through the device tool (torch + transformers there; no trl, datasets, lm-eval, internet or project install):
#   1. here, once:   bash benchmarks/gpu_suite.sh --fetch-wheels    # trl + datasets + dill + multiprocess -> .whl/
#   2. device tool:  run(command="bash benchmarks/gpu_suite.sh", carry=[".whl"], timeout_s=540)
#      benchmarks/out/gpu.json comes back only through $OUT: the script copies it and its log there when OUT is
#      set (the reply's files_at). Without .whl/ the TRL part is recorded as a skip. Parts: ~6 min in all (a
#      time budget of 420 s skips what does not fit, recorded); the python is killed at 465 s whatever happens.
# Here (CPU, tiny model, same code paths, ~40 s): bash benchmarks/gpu_suite.sh --dry-run
#   (writes benchmarks/out/gpu_dryrun.json; the real gpu.json is never touched by a dry run).
# Extra arguments go to gpu_suite.py (--out PATH, --budget-s S, --attn a,b, --trl-attn a,b).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

# pinned so that one version of each travels: datasets 4.8 takes the huggingface-hub 1.x that transformers 5.17
# needs (datasets 5.x wants hub >= 1.31); dill and multiprocess are datasets' needs the GPU image lacks
WHEELS=(trl==1.16.0 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    rm -rf .whl && mkdir -p .whl
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "${WHEELS[@]}"
    ls -l .whl && du -sh .whl
    exit 0
fi

PY=${PYTHON:-python3}
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then PY=.venv/bin/python; fi  # here; the GPU machine has none
if compgen -G ".whl/*.whl" > /dev/null && ! "$PY" -c "import trl, datasets" 2> /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then  # the device tool brings back what lies under $OUT: the log too
    exec > >(tee "$OUT/gpu_suite.log") 2>&1
fi
rc=0
timeout --kill-after=10 "${SUITE_TIMEOUT:-465}" "$PY" benchmarks/gpu_suite.py "$@" || rc=$?
if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then  # the device tool brings back what lies under $OUT
    cp benchmarks/out/gpu*.json "$OUT"/ 2>/dev/null || true
fi
exit $rc
