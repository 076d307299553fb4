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


def vs_trl_section(r: dict, title: str) -> list[str]:
    """One vs_trl.py invocation: every model x regime, ours vs TRL on identical optimizer steps."""
    a = r["args"]
    lines = [title, "",
             f"{a['rows']} x {a['seq']}-token packed rows per optimizer step, {a['threads']} threads, "
             f"{a['steps']} steps per run (first {a['warmup']} untimed), {a['rounds']} rounds alternating the kinds "
             f"({a['kinds']}), each run its own process. TRL gets harness's own packed rows in the same order "
             "(padding-free, one row per micro-batch, accumulation = rows per step), so both sides train on the "
             "same examples, real tokens and supervised tokens in every step: asserted per step by the driver. "
             "Speed-up = TRL's time per identical optimizer step / ours (median of the per-round ratios).", "",
             "| model | regime | tokens / supervised per step (equal, asserted) | pair | s/step ours / TRL | "
             "**speed-up** (per round) | supervised tok/s ours / TRL | peak RSS ours / TRL | CPU-MFU ours / TRL "
             "| loss curves (max rel. diff per step) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in r["models"].items():
        for regime, g in e["regimes"].items():
            ps = g["per_step"]
            for key, p in g["pairs"].items():
                if "median_speedup" not in p:
                    continue
                o, t = key.split(" / ")
                mo, mt = p["median"][o], p["median"][t]
                c = p.get("curves")
                cv = (f"{'agree' if c['agree'] else '**differ**'} ({c['max_rel_diff']:.1e})" if c
                      else "n/a (TRL has no prompt weight: its partner is the full loss)")
                lines.append(
                    f"| {name} ({e['params']['total'] / 1e6:.1f}M) | {regime} | {ps['tokens']} / {ps['supervised']}"
                    f" | {key} | {mo['seconds_per_step']:.2f} / {mt['seconds_per_step']:.2f} | "
                    f"**{p['median_speedup']:.2f}x** ({', '.join(f'{x:.2f}' for x in p['trl_time_over_ours'])}) | "
                    f"{mo['supervised_per_s']:.0f} / {mt['supervised_per_s']:.0f} | {mo['peak_rss_mb']:.0f} / "
                    f"{mt['peak_rss_mb']:.0f} MB ({p['median_rss_ratio']:.2f}x) | {mo['mfu']:.1%} / {mt['mfu']:.1%} "
                    f"| {cv} |")
            extra = g["pairs"].get("ours_bf16 vs ours (curves)")
            if extra:
                c = extra["curves"]
                lines.append(f"| {name} | {regime} | | ours bf16 vs ours fp32 | | | | | | "
                             f"{'agree' if c['agree'] else '**differ**'} ({c['max_rel_diff']:.1e}, tol {c['tol']}) |")
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
    lines = ["## 4. Harness overhead", "",
             "`harness run EXPERIMENT` (smoke.yaml: 6 runs, 2 checkpoints each, base evaluated once; mini_lima.yaml: "
             "the demo grid) into a fresh results directory. Work = the union of `train()` calls (DONE's `wall_seconds`: data, model, steps, "
             "checkpoints) and evaluations (each eval JSON's `seconds`); overhead = wall time not covered by any "
             f"work. Import floor = a fresh process's {floor_import} (torch, transformers; median of 3, "
             "timed after the grid): what any worker waits for before its first step, however it is launched; "
             "the last column subtracts it once (the workers import in parallel).", "",
             "| grid | launcher | wall | train() | of which optimizer steps | evaluation | work (union) | **overhead** | "
             "before first work | after last | import floor | overhead beyond the floor |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rs:
        floor = (f"{r['import_floor_s']:.1f} s | {r['overhead_beyond_import_floor']:.1%}" if "import_floor_s" in r
                 else "- | -")
        lines.append(f"| {Path(r.get('experiment', 'smoke.yaml')).stem} | {r.get('launcher', 'local')} (parallel {r['parallel'] or 'default'}) | {r['wall_s']:.1f} s | "
                     f"{r['train_s']:.1f} s | {r['train_steps_s']:.1f} s | {r['eval_s']:.1f} s | "
                     f"{r['work_union_s']:.1f} s | **{r['overhead']:.1%}** | {r['before_first_work_s']:.1f} s | "
                     f"{r['after_last_work_s']:.1f} s | {floor} |")
    return lines + [""]


def _pair(r: dict | None, model: str, regime: str, key: str = "ours / trl") -> dict | None:
    return (((r or {}).get("models", {}).get(model) or {}).get("regimes", {}).get(regime) or {}).get(
        "pairs", {}).get(key)


def acceptance(vs, gemma, dp, mfu, oh) -> list[str]:
    rows = ["## Acceptance", "", "| criterion | measured | holds |", "|---|---|---|"]
    files = [(n, r) for n, r in (("vs_trl", vs), *gemma) if r]
    if files:
        n_checked = sum(len(e["regimes"]) for _, r in files for e in r["models"].values())
        rows.append(f"| vs_trl: real and supervised token counts equal per optimizer step on both sides | asserted "
                    f"per step in {n_checked} model x regime comparisons ({', '.join(n for n, _ in files)}) | yes |")
    for name, e in (vs or {"models": {}})["models"].items():
        p = _pair(vs, name, "prompt_masked")
        if p:
            rows.append(f"| tiny Llama {name}, prompt-masked: speed-up vs TRL restated on identical steps "
                        f"(target 1.5x, judged before on unequal work) | {p['median_speedup']:.2f}x, RSS "
                        f"{p['median_rss_ratio']:.2f}x | {'yes' if p['median_speedup'] >= 1.5 else '**no**'} |")
    for _, r in gemma:
        for name in (r or {"models": {}})["models"]:
            p = _pair(r, name, "prompt_masked")
            if p:
                c = p["curves"]
                ok = p["median_speedup"] >= 2 and p["median_rss_ratio"] <= 0.6 and c["agree"]
                rows.append(f"| {name} prompt-masked: >= 2x TRL's speed at <= 0.6x its peak RSS, loss curves "
                            f"agree | {p['median_speedup']:.2f}x, RSS {p['median_rss_ratio']:.2f}x, curves "
                            f"{'agree' if c['agree'] else 'differ'} (max {c['max_rel_diff']:.1e}) | "
                            f"{'yes' if ok else '**no** (see the notes: RSS)'} |")
            p = _pair(r, name, "prompt_masked", "ours_lean / trl")
            if p:
                rows.append(f"| {name} prompt-masked, memory-lean (one row per forward + activation checkpointing): "
                            f"reported | {p['median_speedup']:.2f}x, RSS {p['median_rss_ratio']:.2f}x | reported |")
            for regime in ("full", "prompt_weight"):
                p = _pair(r, name, regime)
                if p:
                    rows.append(f"| {name} {regime}: ratio reported | {p['median_speedup']:.2f}x, RSS "
                                f"{p['median_rss_ratio']:.2f}x | reported |")
    if dp:
        s = min(dp["speedup"]["padded"], dp["speedup"]["packed"])
        rows.append(f"| data preparation >= 2x TRL's | {dp['speedup']['padded']:.2f}x (packed "
                    f"{dp['speedup']['packed']:.2f}x) | {'yes' if s >= 2 else '**no**'} |")
    for o in oh:
        if "smoke" in o.get("experiment", "smoke"):
            continue
        rows.append(f"| launcher overhead < 3% of the demo grid's wall time ({Path(o['experiment']).name}) | "
                    f"{o['overhead']:.1%} of {o['wall_s'] / 60:.1f} min ({o.get('launcher', 'local')} launcher) | "
                    f"{'yes' if o['overhead'] < 0.03 else '**no**'} |")
    if oh:
        o = oh[0]
        floor = (f"; {o['overhead_beyond_import_floor']:.1%} beyond the {o['import_floor_s']:.1f} s import floor"
                 if "import_floor_s" in o else "")
        rows.append(f"| harness overhead on the 30-second smoke grid (reported, not a target: a worker's import is a "
                    f"fixed cost) | {o['overhead']:.1%} ({o.get('launcher', 'local')} launcher{floor}) | reported |")
    if mfu:
        for name, e in mfu["models"].items():
            rows.append(f"| CPU-MFU reported, {name} ({mfu['args']['threads']} thread"
                        f"{'s' if mfu['args']['threads'] > 1 else ''}) | {e['median']['mfu']:.1%} | yes"
                        f"{' (below 30%: see the profile and notes)' if e['median']['mfu'] < 0.3 else ''} |")
    return rows + [""]


def gpu_section(gpu: dict | None, dry: dict | None) -> list[str]:
    lines = ["## 5. GPU (`bash benchmarks/gpu_suite.sh`)", ""]
    if gpu is None:
        lines.append("Not run on a GPU yet: no NVIDIA GPU has been lent to a session since the suite was written. "
                     "It waits, ready (how to run it: the header of benchmarks/gpu_suite.sh)."
                     + (f" Its CPU dry run (`--dry-run`, tiny model, same code paths) last passed on "
                        f"{dry.get('machine', {}).get('date', '?')}: benchmarks/out/gpu_dryrun.json." if dry else ""))
        return lines + [""]
    lines.append("```json")
    lines.append(json.dumps(gpu.get("acceptance", gpu), indent=1)[:4000])
    return lines + ["```", ""]


def coverage_section(cov: dict | None) -> list[str]:
    """The findings' intervals on simulated studies (benchmarks/coverage.py)."""
    if cov is None:
        return []
    t = cov["targets"]
    lines = ["## 6. Coverage of the findings' 95% intervals (`python benchmarks/coverage.py`)", "",
             f"Simulated studies in the results schema ({cov['groups']} groups of {cov['items_per_group']} items, two "
             f"regimes, Bernoulli outcomes, a seed effect per run), {cov['repeats']} per cell, judged by "
             "analysis/findings.py's judge_all as `harness report` judges (seconds: "
             f"{cov['seconds']}). Targets: coverage >= {t['coverage_min']}, false yes/no under no effect <= "
             f"{t['false_decisions_max']}: **{'met in every cell' if cov['pass'] else 'NOT met'}**.", "",
             "| seed SD (pts) | seeds | true effect (pts) | coverage | yes | no | false yes/no | mean half-width (pts) |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cov["cells"]:
        fd = "" if c["false_decisions"] is None else f"{c['false_decisions']:.3f}"
        lines.append(f"| {c['seed_sd_pts']} | {c['seeds']} | {c['true_effect_pts']:+.2f} | {c['coverage']:.3f} | "
                     f"{c['yes']:.3f} | {c['no']:.3f} | {fd} | {c['mean_half_width_pts']:.1f} |")
    focus = _load("coverage_seed_dominated")
    if focus:
        lines += ["", f"Focused rerun of the seed-dominated cells, {focus['repeats']} studies each "
                  "(`--seed-sds 6,12 --seeds 5 --effects 0 --rng 1`): " + "; ".join(
                      f"seed SD {c['seed_sd_pts']} pts, {c['seeds']} seeds: coverage {c['coverage']:.3f}, false yes/no "
                      f"{c['false_decisions']:.3f}" for c in focus["cells"])
                  + " (an exact 95% interval: 0.950 and 0.050 in expectation; see the notes)."]
    return lines + [""]


def demo_time_section(r: dict | None) -> list[str]:
    """`make demo` by stage from fresh clones, and the pretraining loop against a plain one (demo_time.py)."""
    if r is None:
        return []
    m, p = r["machine"], r.get("pretrain")
    lines = ["## 7. `make demo` by stage, fresh clones (`python benchmarks/demo_time.py --rev OLD --rev NEW`)", "",
             f"{m.get('cpu', '?')}, fp32 GEMM {r['gemm_fp32_gflops']['1']} GFLOP/s on 1 thread, "
             f"{r['gemm_fp32_gflops']['2']} on 2; {r['load_before']} before, {r['load_after']} after.", "",
             "| revision | wall (s) | venv | world | audit | grid | report | grid: training / evaluation (worker-s) |",
             "|---|---|---|---|---|---|---|---|"]
    for d in r.get("demos", []):
        st, g = d["stages_s"], d["grid"]
        cells = " | ".join(f"{st[k]} ({100 * d['shares'][k]:.0f}%)" for k in ("venv", "world", "audit", "grid", "report"))
        lines.append(f"| {d['commit']} | {d['wall_s']} | {cells} | {g['train_worker_s']} / {g['eval_worker_s']} |")
    if "ratio_new_over_old" in r:
        lines += ["", f"new / old = **{r['ratio_new_over_old']}** (mean wall per commit: {r.get('wall_s_by_commit')}); "
                  f"the same verdicts: **{r['same_verdicts']}**."]
    if p:
        lines += ["", f"World pretraining ({p['shape']}, batch {p['batch']}, {p['threads']} threads, best of "
                  f"{p['rounds']} rounds of {p['steps']} steps): harness `pretrain()` {p['harness_tok_s']:,} tok/s, "
                  f"a plain 20-line torch loop {p['plain_tok_s']:,} tok/s: ratio **{p['ratio']}**."]
    return lines + [""]


def pretrain_floor_section(r: dict | None) -> list[str]:
    """The world pretraining step against its own matrix products replayed alone (pretrain_floor.py)."""
    if r is None:
        return []
    m = r["machine"]
    return ["## 8. World pretraining step against its matrix-product floor (`python benchmarks/pretrain_floor.py`)",
            "", f"{m.get('cpu', '?')} ({m.get('date', '?')}), fp32 GEMM {r['gemm_2048_gflops']['1_threads']} GFLOP/s "
            f"on 1 thread, {r['gemm_2048_gflops']['2_threads']} on 2; model {r['shape']}, batch {r['batch']}, "
            f"{r['threads']} threads; best of {len(r['all_step_ms'])} interleaved rounds.", "",
            "| | ms per step | largest speed-up of a loop computing the same fp32 products |", "|---|---|---|",
            f"| the whole step (harness `pretrain()`, {r['tok_s']:,} tok/s) | {r['step_ms']} | |",
            f"| its {r['calls'].get('mm', 0)} GEMMs alone, same shapes ({r['gemm_gflop_per_step']} GFLOP, "
            f"{r['gemm_gflops_in_step_shapes']} GFLOP/s) | {r['gemm_ms']} | {r['max_speedup_same_gemms']}x |",
            f"| GEMMs + the attention kernels alone | {r['gemm_and_attention_ms']} | "
            f"{r['max_speedup_same_products']}x |",
            f"| ideal: every product ({r['gemm_gflop_per_step']} + {r['attention_gflop_per_step_causal_min']} GFLOP) "
            f"at the 2048^3 peak, nothing else | {r['ideal_ms_all_products_at_2048_peak']} | "
            f"{r['max_speedup_ideal']}x |", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    vs, dp, mfu = _load("vs_trl"), _load("data_prep"), _load("mfu")
    if vs is not None and "regimes" not in next(iter(vs["models"].values()), {"regimes": 0}):
        vs = None  # written by the old driver (unequal work per step): not restated as a result
    gemma = [(n, _load(n)) for n in ("vs_trl_gemma", "vs_trl_gemma_regimes", "vs_trl_gemma_lean") if _load(n)]
    gpu, gpu_dry = _load("gpu"), _load("gpu_dryrun")
    oh = [x for x in (_load("overhead"), _load("overhead_debug"), _load("overhead_demo")) if x]
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
            " (2 cores: about 2 is the benchmark's own two threads; higher means another job shared the cores, "
            "see the notes).")
        lines.append("")
    lines += acceptance(vs, gemma, dp, mfu, oh)
    for n, r in gemma:
        lines += vs_trl_section(r, f"## 1{'' if n == gemma[0][0] else ' (cont.)'}. Real model vs TRL "
                                   f"`SFTTrainer` ({n}.json)")
    if vs:
        lines += vs_trl_section(vs, "## 1b. Tiny random-init Llamas vs TRL `SFTTrainer` (vs_trl.json)")
    if mfu:
        lines += mfu_section(mfu)
    if dp:
        lines += data_prep_section(dp)
    if oh:
        lines += overhead_section(oh)
    lines += gpu_section(gpu, gpu_dry)
    lines += coverage_section(_load("coverage"))
    lines += demo_time_section(_load("demo_time"))
    lines += pretrain_floor_section(_load("pretrain_floor"))
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
