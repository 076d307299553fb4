"""Where `make demo`'s time goes, and how fast the world's pretraining loop is next to a plain torch loop.

    .venv/bin/python benchmarks/demo_time.py --rev HEAD                  # one fresh clone, `make demo`
    .venv/bin/python benchmarks/demo_time.py --rev f2c0bc5 --rev HEAD    # old then new, one after the other
    .venv/bin/python benchmarks/demo_time.py --rev OLD --rev NEW --rev NEW --rev OLD   # ABBA: machine drift cancels
    .venv/bin/python benchmarks/demo_time.py --pretrain-steps 60         # only the pretraining ratio

Each ``--rev`` is cloned from this repository into a temporary directory and ``make demo`` runs there as a
researcher's first run would (creating ``.venv`` included; pip's wheel cache is the machine's). Its output is
timestamped line by line and cut into stages at the demo's own markers: ``venv`` (make's pip install), ``world``
([1/4]: data, tokenizer, weights, measurements), ``audit`` ([2/4]), ``grid`` ([3/4]: workers, base
evaluation, training, evaluation) and ``report`` ([4/4]). The grid is split further from what its run
directories record: training (the sum of DONE's ``wall_seconds``) and evaluation (the sum of the eval JSONs'
``seconds``), per worker-second of the grid. The clone's ``findings.json`` verdicts are kept, so two revisions can
be compared claim by claim.

The pretraining ratio: harness's ``pretrain()`` (harness/world/pretrain.py) against the same model, data and
optimizer in a plain 20-line loop (below), in this process, alternating ``--rounds`` times; tokens/s of each and
their ratio (stable across machines, unlike tokens/s). The fp32 GEMM rate of this machine is recorded beside it.

Writes benchmarks/out/demo_time.json. Run it on a quiet machine: it is a timing.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, gemm_peak, load, machine  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MARKERS = {"world": "[1/4]", "audit": "[2/4]", "grid": "[3/4]", "report": "[4/4]"}


def plain_loop(model, rows: torch.Tensor, steps: int, batch: int, lr: float) -> float:
    """The reference: the same model, rows, AdamW and clipping as pretrain(), nothing else. Returns tokens/s."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    g = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        x = rows[torch.randint(len(rows), (batch,), generator=g)]
        logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    return steps * batch * rows.shape[1] / (time.perf_counter() - t0)


def pretrain_ratio(steps: int, rounds: int) -> dict:
    """harness pretrain() vs plain_loop() on the demo world's model shape and a corpus-sized random row set."""
    from dataclasses import replace

    from harness.world.build import SIZES
    from harness.world.pretrain import make_model, pretrain

    cfg = replace(SIZES["demo"]["pretrain"], steps=steps)
    vocab = SIZES["demo"]["vocab"]
    torch.set_num_threads(cfg.threads)
    rows = torch.randint(1, vocab, (527, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    ours, plain = [], []
    for _ in range(rounds):
        model = make_model(cfg, vocab, 0, 0)
        t0 = time.perf_counter()
        pretrain(model, rows, cfg, progress=False)
        ours.append(steps * cfg.batch * cfg.seq_len / (time.perf_counter() - t0))
        plain.append(plain_loop(make_model(cfg, vocab, 0, 0), rows, steps, cfg.batch, cfg.lr))
    best = lambda xs: max(xs)  # noqa: E731  (the least disturbed round)
    return {"steps": steps, "rounds": rounds, "threads": cfg.threads, "shape": f"{cfg.layers}x{cfg.hidden}",
            "batch": f"{cfg.batch}x{cfg.seq_len}", "harness_tok_s": round(best(ours)),
            "plain_tok_s": round(best(plain)), "ratio": round(best(ours) / best(plain), 3),
            "all_harness": [round(x) for x in ours], "all_plain": [round(x) for x in plain]}


def run_demo(rev: str, keep: Path | None) -> dict:
    """Clone `rev`, run `make demo` there with a timestamp per output line; stages, grid split, verdicts."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="demo-time-"))
    clone = work / f"clone-{rev.replace('/', '_')}-{time.strftime('%H%M%S')}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                            text=True).stdout.strip()
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(["make", "demo"], cwd=clone, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    rc = proc.wait()
    wall = time.perf_counter() - t0
    (work / f"make-demo-{clone.name}.log").write_text("".join(f"{t:8.1f} {ln}\n" for t, ln in lines))
    starts = {"venv": 0.0}
    for stage, marker in MARKERS.items():
        starts[stage] = next((t for t, ln in lines if ln.startswith(marker)), float("nan"))
    order = list(starts)
    stages = {s: (starts[order[i + 1]] if i + 1 < len(order) else wall) - starts[s] for i, s in enumerate(order)}
    out = {"rev": rev, "commit": commit, "rc": rc, "wall_s": round(wall, 1),
           "stages_s": {k: round(v, 1) for k, v in stages.items()},
           "shares": {k: round(v / wall, 3) for k, v in stages.items()},
           "grid": grid_split(clone / "results" / "mini_lima", stages["grid"]),
           "world": _json(clone / "results" / "world" / "demo-seed0" / "measurements.json"),
           "verdicts": verdicts(clone / "results" / "mini_lima" / "report" / "findings.json"),
           "log": str(work / f"make-demo-{clone.name}.log")}
    return out


def grid_split(exp: Path, grid_wall: float) -> dict:
    """Worker-seconds of the grid spent training (DONE's wall_seconds) and evaluating (eval JSONs' seconds)."""
    train = sum(json.loads(Path(f).read_text()).get("wall_seconds", 0) for f in glob.glob(f"{exp}/runs/*/DONE"))
    evals = [json.loads(Path(f).read_text()) for f in glob.glob(f"{exp}/runs/*/eval/step-*.json")]
    base = [json.loads(Path(f).read_text()) for f in glob.glob(f"{exp}/base/**/*.json", recursive=True)]
    ev = sum(e.get("seconds", 0) or 0 for e in evals)
    base_s = sum(b.get("seconds", 0) or 0 for b in base if isinstance(b, dict))
    workers = 2 * grid_wall  # two local workers (the demo machine's two cores)
    return {"train_worker_s": round(train, 1), "eval_worker_s": round(ev, 1), "base_eval_s": round(base_s, 1),
            "other_worker_s": round(workers - train - ev - base_s, 1), "checkpoints": len(evals)}


def verdicts(path: Path) -> dict:
    rows = _json(path) or {}
    items = rows.get("findings", rows) if isinstance(rows, dict) else rows
    return {f.get("id"): f.get("verdict") for f in items if isinstance(f, dict)} if isinstance(items, list) else {}


def _json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", action="append", default=[], help="a revision to clone and time (repeatable)")
    ap.add_argument("--keep", type=Path, default=None, help="clone here instead of a temporary directory")
    ap.add_argument("--pretrain-steps", type=int, default=60, help="steps per pretraining timing (0: skip)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "demo_time.json")
    args = ap.parse_args()
    res = {"machine": machine(), "load_before": load(),
           "gemm_fp32_gflops": {t: round(gemm_peak(t) / 1e9, 1) for t in (1, 2)}}
    if args.pretrain_steps:
        res["pretrain"] = pretrain_ratio(args.pretrain_steps, args.rounds)
        p = res["pretrain"]
        print(f"pretraining {p['shape']}, {p['batch']}: harness {p['harness_tok_s']:,} tok/s, plain loop "
              f"{p['plain_tok_s']:,} tok/s, ratio {p['ratio']}")
    res["demos"] = []
    for rev in args.rev:
        d = run_demo(rev, args.keep)
        res["demos"].append(d)
        print(f"{rev} ({d['commit']}): make demo {d['wall_s']} s, rc {d['rc']}; " +
              ", ".join(f"{k} {v} s ({100 * d['shares'][k]:.0f}%)" for k, v in d["stages_s"].items()))
    commits = list(dict.fromkeys(d["commit"] for d in res["demos"]))
    if len(commits) == 2:  # old = the first --rev; several runs of each (e.g. ABBA against drift): their means
        walls = {c: [d["wall_s"] for d in res["demos"] if d["commit"] == c] for c in commits}
        res["wall_s_by_commit"] = walls
        res["ratio_new_over_old"] = round(statistics.mean(walls[commits[1]]) / statistics.mean(walls[commits[0]]), 3)
        res["same_verdicts"] = all(d["verdicts"] == res["demos"][0]["verdicts"] for d in res["demos"])
        print(f"new / old = {res['ratio_new_over_old']} (means of {walls}); same verdicts: {res['same_verdicts']}")
    res["load_after"] = load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
