"""Write benchmarks/RESULTS.md from the JSON files the benchmarks leave in benchmarks/out/ (make bench).

    .venv/bin/python benchmarks/report.py [--out benchmarks/RESULTS.md]

Numbers, verdicts and the machine line all come from the JSON files; the hand-written benchmarks/NOTES.md (what the profile
means, which levers were tried) is kept next to the numbers it refers to and is rewritten by hand when a
benchmark changes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def _load(name: str) -> dict | None:
    p = OUT / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _la(x) -> str:
    return " / ".join(f"{v:.2f}" for v in x) if x else "?"


def _k(x: float) -> str:
    return f"{x / 1e3:.2f}k" if x < 10_000 else f"{x / 1e3:.1f}k"


def machine_section(m: dict) -> list[str]:
    v = m["versions"]
    return [f"- **Machine**: {m['cpu']} ({m['cores']} cores visible, flags: {m['cpu_flags']}), {m['platform']}",
            f"- **Versions**: Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, "
            f"TRL {v.get('trl')}",
            f"- **Date**: {m['date']}"]


def vs_trl_section(r: dict) -> list[str]:
    a = r["args"]
    lines = ["## 1. Training throughput: `train()` vs TRL `SFTTrainer`", "",
             f"Same random-init Llama, same mini-world conversations ({a['examples']}), assistant-only loss, "
             f"sequence length {a['seq']}, {a['rows']} x {a['seq']} tokens per optimizer step, fp32, "
             f"{a['threads']} threads, {a['steps']} optimizer steps per run (first {a['warmup']} untimed), "
             f"{a['rounds']} rounds of ours / TRL packed / TRL padded, each run its own process. Medians over "
             "the rounds; the ratio is the median of the per-round ratios (ours / TRL).", "",
             "| model | config | real tok/s | supervised tok/s | peak RSS | CPU-MFU | ratio real tok/s (per round) "
             "| ratio supervised |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for name, e in r["models"].items():
        pcs = e["params"]
        for kind, p in e["pairs"].items():
            mo, mt = p["median"]["ours"], p["median"][kind]
            if kind == next(iter(e["pairs"])):
                lines.append(f"| {name} ({pcs['total'] / 1e6:.2f}M) | ours `train()`, layout {a.get('layout', 'packed')}{', compiled' if a.get('compile') else ''} | "
                             f"{mo['tokens_per_s']:.0f} | "
                             f"{mo['supervised_per_s']:.0f} | {mo['peak_rss_mb']:.0f} MB | {mo['mfu']:.1%} | | |")
            label = {"trl_packed": "TRL packing=True bfd, bs 1 x accum", "trl_padded": "TRL padded, assistant_only_loss",
                     "ours_packed": "ours `train()`, layout packed, eager",
                     "trl_packed_compile": "TRL packing=True bfd, bs 1 x accum, torch_compile"}
            lines.append(f"| | {label.get(kind, kind)} | {mt['tokens_per_s']:.0f} | {mt['supervised_per_s']:.0f} | "
                         f"{mt['peak_rss_mb']:.0f} MB | {mt['mfu']:.1%} | **{p['median_ratio']:.2f}x** "
                         f"({', '.join(f'{x:.2f}' for x in p['ratios'])}) | {p['median_supervised_ratio']:.2f}x |")
    lines += ["", "Load average (1 min) when each run started: " + "; ".join(
        f"{n}: {', '.join(f'{x:.1f}' for x in e['load_at_start'])}" for n, e in r["models"].items()) + ".", ""]
    lines += ["**Loss curves** (first round; mean loss per window of optimizer steps; the data order differs: "
              "first-fit rows of a shuffled order vs TRL's best-fit-decreasing packs, so only windows are "
              "compared):", "",
              "| model | vs | step 1 (ours / TRL) | windows: ours / TRL (relative difference) | agree (< 10%) |",
              "|---|---|---|---|---|"]
    for name, e in r["models"].items():
        for kind, p in e["pairs"].items():
            c = p["curves"]
            wins = "; ".join(f"{w['steps'][0]}-{w['steps'][1]}: {w['ours']:.3f} / {w['trl']:.3f} "
                             f"({w['rel_diff']:.1%})" for w in c["windows"])
            lines.append(f"| {name} | {kind} | {c['first_step'][0]:.3f} / {c['first_step'][1]:.3f} | {wins} | "
                         f"{'yes' if c['agree'] else '**no**'} |")
    return lines + [""]


def one_thread_section(r: dict) -> list[str]:
    a = r["args"]
    lines = [f"**Contention check, {a['threads']} thread** (same set-up; a thread never waits at an OpenMP barrier "
             "for a partner descheduled by the other job on the machine):", "",
             "| model | vs | ours tok/s | TRL tok/s | ratio (per round) | loss curves agree |", "|---|---|---:|---:|---|---|"]
    for name, e in r["models"].items():
        for kind, p in e["pairs"].items():
            lines.append(f"| {name} | {kind} | {p['median']['ours']['tokens_per_s']:.0f} | "
                         f"{p['median'][kind]['tokens_per_s']:.0f} | **{p['median_ratio']:.2f}x** "
                         f"({', '.join(f'{x:.2f}' for x in p['ratios'])}) | {p['curves']['agree']} |")
    return lines + [""]


def data_prep_section(r: dict) -> list[str]:
    med, sp, same = r["median_s"], r["speedup"], r["same"]
    lines = ["## 3. Data preparation", "",
             f"{r['n']:,} mini-world conversations from one JSONL file to trainer-ready examples under the "
             f"assistant-only regime (max length {r['seq']}); median of {len(r['seconds']['ours_padded'])} "
             "alternating rounds after a warm-up, one process.", "",
             "| variant | ours | TRL | ours faster by |", "|---|---:|---:|---:|",
             f"| tokenize + segment + label | {med['ours_padded']:.2f} s | {med['trl_padded']:.2f} s | "
             f"**{sp['padded']:.2f}x** |",
             f"| ... + packing (ours first-fit, TRL bfd) | {med['ours_packed']:.2f} s | {med['trl_packed']:.2f} s | "
             f"**{sp['packed']:.2f}x** |"]
    if "trl_padded_2proc" in med:
        lines.append(f"| TRL with `dataset_num_proc=2` (vs ours, one process) | {med['ours_padded']:.2f} s | "
                     f"{med['trl_padded_2proc']:.2f} s | {sp['padded_vs_trl_2proc']:.2f}x |")
    lines += ["", f"Same regime, checked token by token: identical token ids for {same['same_tokens']:,} of "
              f"{same['examples']:,} conversations and identical supervised positions for "
              f"{same['same_supervised_positions']:,} of {same['examples']:,}.", ""]
    return lines


def mfu_section(r: dict) -> list[str]:
    lines = ["## 2. CPU utilisation (CPU-MFU) and where the time goes", "",
             "Model FLOPs = 6 x non-embedding parameters (decoder + LM head) x real tokens + causal attention "
             "inside each example; peak = best 2048^3 fp32 GEMM on the same threads in the same process, "
             "measured next to each timed block. *Executed* counts what our step really computes (LM head "
             "only on supervised positions, plus a forward-only head on the other prompt/response positions for "
             "the fixed-mask metrics on logging steps).", "",
             "| model | tok/s | model GFLOP/s | GEMM peak GFLOP/s | **CPU-MFU** | executed util. | GEMMs alone reach |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in r["models"].items():
        m, p = e["median"], e["profile"]
        lines.append(f"| {name} | {m['tokens_per_s']:.0f} | {m['model_flops_per_s'] / 1e9:.1f} | "
                     f"{m['peak'] / 1e9:.1f} | **{m['mfu']:.1%}** | {m['executed_util']:.1%} | "
                     f"{p['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s ({p['matmul_flops_per_s'] / m['peak']:.0%} of peak) |")
    lines += ["", "Profile of `Engine.step` (torch.profiler, self time per ATen op, grouped; share of the step's "
              "wall time):", ""]
    groups = sorted({g for e in r["models"].values() for g in e["profile"]["groups_s"]})
    lines += ["| group | " + " | ".join(r["models"]) + " |", "|---|" + "---:|" * len(r["models"])]
    order = sorted(groups, key=lambda g: -max(e["profile"]["groups_s"].get(g, 0) / e["profile"]["wall_s"]
                                               for e in r["models"].values()))
    for g in order:
        lines.append(f"| {g} | " + " | ".join(f"{e['profile']['groups_s'].get(g, 0) / e['profile']['wall_s']:.0%}"
                                              for e in r["models"].values()) + " |")
    lines.append("| outside ATen ops (Python, dispatch, collation) | " + " | ".join(
        f"{e['profile']['outside_ops_s'] / e['profile']['wall_s']:.0%}" for e in r["models"].values()) + " |")
    big = list(r["models"])[-1]
    lines += ["", f"Top ops, {big}: " + ", ".join(f"`{t['op']}` {t['self_s'] / r['models'][big]['profile']['wall_s']:.0%}"
                                                  for t in r["models"][big]["profile"]["top_ops"][:8]) + ".", ""]
    if r.get("levers"):
        base = r["levers"].get("eager (baseline)", {}).get("tokens_per_s")
        lines += [f"Levers on {r['args']['levers_model']} (steady-state real tokens/s, same steps):", "",
                  "| setting | tok/s | vs eager | set-up + warm-up |", "|---|---:|---:|---:|"]
        for k, v in r["levers"].items():
            rel = f"{v['tokens_per_s'] / base:.2f}x" if base else ""
            lines.append(f"| {k} | {v['tokens_per_s']:.0f} | {rel} | {v['setup_and_warmup_s']:.0f} s |")
        lines.append("")
    return lines


def overhead_section(rs: list[dict]) -> list[str]:
    # runs from before the package reorganisation timed `import harness.train` and did not record the module
    mods = sorted({r.get("import_floor_module", "harness.train") for r in rs if "import_floor_s" in r})
    floor_import = " / ".join(f"`import {m}`" for m in mods) or "`import harness.training.loop`"
    lines = ["## 4. Harness overhead (smoke grid)", "",
             "`harness run experiments/smoke.yaml` (6 runs, 2 checkpoints each, base evaluated once) into a fresh "
             "results directory. Work = the union of `train()` calls (DONE's `wall_seconds`: data, model, steps, "
             "checkpoints) and evaluations (each eval JSON's `seconds`); overhead = wall time not covered by any "
             f"work. Import floor = a fresh process's {floor_import} (torch, transformers; median of 3, "
             "timed after the grid): what any worker waits for before its first step, however it is launched; "
             "the last column subtracts it once (the workers import in parallel).", "",
             "| launcher | wall | train() | of which optimizer steps | evaluation | work (union) | **overhead** | "
             "before first work | after last | import floor | overhead beyond the floor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rs:
        floor = (f"{r['import_floor_s']:.1f} s | {r['overhead_beyond_import_floor']:.1%}" if "import_floor_s" in r
                 else "- | -")
        lines.append(f"| {r.get('launcher', 'local')} (parallel {r['parallel'] or 'default'}) | {r['wall_s']:.1f} s | "
                     f"{r['train_s']:.1f} s | {r['train_steps_s']:.1f} s | {r['eval_s']:.1f} s | "
                     f"{r['work_union_s']:.1f} s | **{r['overhead']:.1%}** | {r['before_first_work_s']:.1f} s | "
                     f"{r['after_last_work_s']:.1f} s | {floor} |")
    return lines + [""]


def acceptance(vs, dp, mfu, oh) -> list[str]:
    rows = ["## Acceptance", "", "| criterion | measured | holds |", "|---|---|---|"]
    if vs:
        for name, e in vs["models"].items():
            p = e["pairs"].get("trl_packed")
            if p:
                rows.append(f"| training >= 1.5x TRL's best isolating config, {name} ({vs['args']['threads']} "
                            f"thread{'s' if vs['args']['threads'] > 1 else ''}) | {p['median_ratio']:.2f}x "
                            f"(loss curves agree: {p['curves']['agree']}) | "
                            f"{'yes' if p['median_ratio'] >= 1.5 and p['curves']['agree'] else '**no**'} |")
    if dp:
        s = min(dp["speedup"]["padded"], dp["speedup"]["packed"])
        rows.append(f"| data preparation >= 2x TRL's | {dp['speedup']['padded']:.2f}x (packed "
                    f"{dp['speedup']['packed']:.2f}x) | {'yes' if s >= 2 else '**no**'} |")
    if oh:
        o = oh[0]
        floor = (f"; {o['overhead_beyond_import_floor']:.1%} beyond the {o['import_floor_s']:.1f} s import floor"
                 if "import_floor_s" in o else "")
        rows.append(f"| harness overhead < 5% of the smoke grid's wall time | {o['overhead']:.1%} "
                    f"({o.get('launcher', 'local')} launcher{floor}) | {'yes' if o['overhead'] < 0.05 else '**no**'} |")
    if mfu:
        for name, e in mfu["models"].items():
            rows.append(f"| CPU-MFU reported, {name} ({mfu['args']['threads']} thread"
                        f"{'s' if mfu['args']['threads'] > 1 else ''}) | {e['median']['mfu']:.1%} | yes"
                        f"{' (below 30%: see the profile and notes)' if e['median']['mfu'] < 0.3 else ''} |")
    return rows + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    vs, dp, mfu = _load("vs_trl"), _load("data_prep"), _load("mfu")
    vs1 = _load("vs_trl_1thread")
    if vs is None:  # only the 1-thread run exists: it is the comparison
        vs, vs1 = vs1, None
    oh = [x for x in (_load("overhead"), _load("overhead_debug")) if x]
    any_ = vs or dp or mfu or (oh[0] if oh else None)
    lines = ["# Benchmarks: harness vs TRL, CPU-MFU, data preparation, harness overhead", "",
             "Generated by `make bench` (benchmarks/report.py from benchmarks/out/*.json); the notes at the end "
             "are written by hand.", ""]
    if any_:
        lines += machine_section(any_["machine"])
        lines.append("- **Load average** (1/5/15 min) at the end of each benchmark: " + "; ".join(
            f"{n} {_la(x.get('load_avg_end'))}" for n, x in (("vs_trl", vs), ("data_prep", dp), ("mfu", mfu),
                                                              *(("overhead " + o.get("launcher", "local"), o)
                                                                for o in oh)) if x) +
            ". The machine is shared: another engineer's CPU-bound job ran on the same 2 cores during some of "
            "these runs (see the notes).")
        lines.append("")
    lines += acceptance(vs, dp, mfu, oh)
    if vs:
        lines += vs_trl_section(vs)
    if vs1:
        lines += one_thread_section(vs1)
    if mfu:
        lines += mfu_section(mfu)
    if dp:
        lines += data_prep_section(dp)
    if oh:
        lines += overhead_section(oh)
    lines += ["## 5. GPU", "", "Not run: no NVIDIA GPU was available in this session (`benchmarks/gpu_smoke.py` "
              "was not executed, and no GPU number is reported here).", ""]
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
