"""Pretraining sweep for the mini-world: build worlds with overridden pretraining settings, print one JSON
line of measurements each (tuning aid for the demo size; not run by tests).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/world_sweep.py --size 500 --set lr=1e-3,2e-3 --set steps=650
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import tempfile
import time
from pathlib import Path


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="field=v1,v2 (a PretrainConfig field)")
    ap.add_argument("--out", default=None, help="keep the worlds under this directory")
    args = ap.parse_args()
    from harness.world import build_world

    axes = [(k, [_value(v) for v in vs.split(",")]) for k, vs in (s.split("=", 1) for s in args.set)]
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="world-sweep-"))
    for combo in itertools.product(*[vs for _, vs in axes]):
        over = dict(zip([k for k, _ in axes], combo))
        name = "-".join(f"{k}{v}" for k, v in over.items()) or "default"
        t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
        out = build_world(args.size, root / name, seed=args.seed, overrides=over, log=lambda *a: None)
        meas = json.loads((out / "measurements.json").read_text())
        meas.update(over=over, wall_s=round(time.perf_counter() - t0, 1),
                    cpu_s=round(resource.getrusage(resource.RUSAGE_SELF).ru_utime - c0, 1),
                    load=os.getloadavg()[0])
        print(json.dumps(meas), flush=True)


if __name__ == "__main__":
    main()
