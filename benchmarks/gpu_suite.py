"""The prepared GPU suite (issue #19): attention correctness, throughput / MFU, and ours vs TRL, in one call.

    bash benchmarks/gpu_suite.sh                         # GPU machine -> benchmarks/out/gpu.json (how: the .sh)
    .venv/bin/python benchmarks/gpu_suite.py --dry-run   # CPU, tiny model, same code paths -> gpu_dryrun.json

Each part runs in worker processes (a CUDA fault or hang cannot take the others down); a failure is recorded in
the JSON and the suite goes on; parts are skipped once the time budget is spent.

* correctness: for every ATTN_IMPLEMENTATIONS kernel that can run here (else a skip with
  harness.attention.kernel_unavailable's reason), the micro-batches train() lays out for it (Setup.batches:
  packed rows, per-example position ids, no mask, one row each where harness.attention.needs_one_row) give the
  final hidden states of each example run alone (bf16: within 5% of the largest |value|); a control with an
  all-ones mask (isolation lost) shows the check sees a leak.
* throughput: Qwen2.5-0.5B-shaped random init, fp32 weights + bf16 autocast, packed 4096-token rows, fused AdamW,
  through Engine.step (gpu_smoke.run_engine); real tokens/s, MFU of 989 TFLOP/s dense bf16 and of a bf16 8192^3
  GEMM timed in the same process (mean of 10 after 3 warm-up). sdpa, then each other kernel that passed
  correctness (not eager: O(T^2) memory) while time is left; the headline is the fastest.
* trl: SFTTrainer on the same shape and the same synthetic examples (pre-tokenized input_ids + completion_mask,
  completion_only_loss: the same supervised tokens), packing=True, packing_strategy="bfd" (padding-free),
  flex_attention else sdpa (recorded), bf16, max_length 4096, the same rows per optimizer step,
  adamw_torch_fused, no gradient checkpointing; timed on_step_end to on_step_end (CUDA-synchronised) after the
  same warm-up. Acceptance (GPU): MFU >= 35% (goal 45%) of 989 TFLOP/s, ours / TRL tokens/s >= 1.5.
* fsdp (last; alone: --parts fsdp): harness.training.fsdp.smoke on min(2, GPUs) ranks (torchrun; dry: 2 gloo), the
  throughput shape and rows, bf16 params / fp32 reduce, gradient checkpointing; gathered state dict, DCP round trip.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE, ROOT = Path(__file__).resolve().parent, Path(__file__).resolve().parents[1]
for _k, _v in dict(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_DISABLED="1",
                   TRANSFORMERS_VERBOSITY="error", DISABLE_MLFLOW_INTEGRATION="TRUE").items():
    os.environ.setdefault(_k, _v)
sys.path[:0] = [str(ROOT), str(HERE)]

import torch  # noqa: E402

import gpu_smoke as G  # noqa: E402
from gpu_trl import w_trl  # noqa: E402
from harness.config.schema import ATTN_IMPLEMENTATIONS  # noqa: E402

MIN_MFU, GOAL_MFU, MIN_RATIO, PEAK_TFLOPS = 0.35, 0.45, 1.5, 989.0
CPU_DRY_KERNELS = ("sdpa", "eager")  # dry run: other kernels are CUDA-only or compile per shape on CPU (~20 s)


def settings(dry: bool) -> dict:
    if dry:
        return dict(device="cpu", shape=G.TINY, seq=256, rows=4, micro_rows=2, steps=2, warmup=1, gemm_n=512,
                    corr_shape=G.TINY, corr_seq=256, corr_short=100, corr_n_short=10, budget=150, threads=1,
                    caps={"correctness": 45, "throughput": 45, "trl": 60, "fsdp": 60}, trl_attn="sdpa", ranks=2)
    return dict(device="cuda", shape=G.QWEN2_05B, seq=4096, rows=8, micro_rows=4, steps=8, warmup=3, gemm_n=8192,
                corr_shape=dict(G.QWEN2_05B, num_hidden_layers=4, vocab_size=8192), corr_seq=2048, corr_short=256,
                corr_n_short=24, budget=420, threads=None, ranks=min(2, torch.cuda.device_count()),
                caps={"correctness": 150, "throughput": 110, "trl": 200, "extra": 80, "fsdp": 150},
                trl_attn="flex_attention,sdpa")


def kernels() -> tuple:
    return tuple(ATTN_IMPLEMENTATIONS)


def err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


# ------------------------------------------------------------------------------------------ workers


def w_correctness(job: dict, save) -> None:
    from harness.config import TrainConfig
    from harness.masking import apply_all
    from harness.training.packing import pack_rows

    dev, dtype, seq = torch.device(job["device"]), getattr(torch, job["dtype"]), job["seq"]
    shape = dict(job["shape"], max_position_embeddings=max(job["shape"]["max_position_embeddings"], seq))
    V = shape["vocab_size"]
    ex = G.synthetic_examples(3, seq, V, seed=1) + G.synthetic_examples(job["n_short"], job["short"], V, seed=2)
    data = apply_all(ex, "prompt_masked", {})
    rows = pack_rows([len(t) for t in ex], seq, list(range(len(ex))))
    tc = TrainConfig(batch_tokens=len(rows) * seq, micro_batch_tokens=2 * seq)
    res: dict = {}
    for name in job["kernels"]:
        t0 = time.perf_counter()
        try:
            model = G.build_model(shape, name, dev, dtype).eval()
            r = G.packed_vs_alone(model, G.harness_batches(rows, data, name, seq, tc, dev))
            del model
            tol = (0.05 if dtype in (torch.bfloat16, torch.float16) else 1e-4) * r["max_abs_value"]
            ok = r["max_abs_diff"] <= tol and r["examples"] == len(ex) and r["max_examples_per_row"] > 1
            leak = r["control_max_abs_diff_with_mask"]
            res[name] = {"status": "pass" if ok else "fail", "tol": tol, "dtype": job["dtype"], **r,
                         "control_detects_leak": None if leak is None else leak > 10 * tol}
        except Exception as exc:  # noqa: BLE001 - recorded, the next kernel runs
            res[name] = {"status": "error", "reason": err(exc)}
        res[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"correctness {name}: {res[name]}", flush=True)
        save(res)
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def w_throughput(job: dict, save) -> None:
    dev = torch.device(job["device"])
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (norms' grads, optimizer) on tensor cores
    r = G.run_engine(job["shape"], device=dev, seq=job["seq"], rows=job["rows"], micro_rows=job["micro_rows"],
                     steps=job["steps"], warmup=job["warmup"], attn=job["attn"], log=lambda s: print(s, flush=True))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # (CPUs without bf16 units: fp32)
    r["gemm_flops"] = G.gemm_flops(dev, job["gemm_n"], dtype)  # same process, after the run (clocks up)
    save(dict(r, status="ok", gemm=f"{dtype} {job['gemm_n']}^3, mean of 10 after 3 warm-up"))


def w_fsdp(job: dict, save) -> None:  # every rank (torchrun's env); rank 0 saves
    from harness.config import TrainConfig
    from harness.training.distributed import Dist
    from harness.training.engine import Engine
    from harness.training.fsdp import smoke

    dist, seq, rows, n = Dist.from_env(), job["seq"], job["rows"], job["warmup"] + job["steps"]
    dev, shape = dist.device, dict(job["shape"], max_position_embeddings=max(job["shape"]["max_position_embeddings"],
                                                                             seq))
    tc = TrainConfig(lr=1e-5, batch_tokens=rows * seq, micro_batch_tokens=job["micro_rows"] * seq, warmup_ratio=0.0,
                     precision="auto" if dev.type == "cuda" else "bf16", parallel="fsdp", gradient_checkpointing=True)
    data, plan = G.engine_plan(n, rows, seq, shape["vocab_size"])
    eng = Engine(G.build_model(shape, "sdpa", dev), tc, n, dist,  # fp32 master weights, the same seeded init per rank
                 sample_ids=torch.as_tensor(data.examples[0].input_ids[:32], device=dev)[None])
    r = smoke(eng, lambda i: G.harness_batches(plan[i][dist.rank::dist.world], data, "sdpa", seq, tc, dev), n,
              job["warmup"], Path(job["result"]).with_suffix(".dcp"), sync=lambda: G.sync(dev), say=print)
    if r is not None:
        save(r)
    dist.close()


WORKERS = {"correctness": w_correctness, "throughput": w_throughput, "trl": w_trl, "fsdp": w_fsdp}  # w_trl: gpu_trl.py


def worker_main(kind: str, job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    out = Path(job["result"])

    def save(obj) -> None:
        out.with_suffix(".tmp").write_text(json.dumps(obj, default=str))
        out.with_suffix(".tmp").replace(out)

    try:
        WORKERS[kind](job, save)
    except Exception as exc:  # noqa: BLE001 - the parent records it
        traceback.print_exc()
        save({"status": "error", "reason": err(exc), "traceback": traceback.format_exc()[-3000:]})
        sys.exit(1)


# ------------------------------------------------------------------------------------------ the driver


class Suite:
    def __init__(self, args: argparse.Namespace):
        self.dry, self.S = args.dry_run, settings(args.dry_run)
        self.device = torch.device(self.S["device"])
        self.t0 = time.monotonic()
        self.deadline = self.t0 + (args.budget_s or self.S["budget"])
        self.out = Path(args.out or ROOT / "benchmarks" / "out" / ("gpu_dryrun.json" if self.dry else "gpu.json"))
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_suite-"))
        self.attn_filter = args.attn.split(",") if args.attn else None
        self.trl_attn = (args.trl_attn or self.S["trl_attn"]).split(",")
        self.parts = args.parts.split(",") if args.parts else None
        self.report = {"suite": "benchmarks/gpu_suite.py", "dry_run": self.dry, "machine": G.machine(self.device),
                       "settings": self.S, "parts": {}, "skips": [], "acceptance": None}

    def save(self) -> None:
        self.report.update(acceptance=self.acceptance(), elapsed_s=round(time.monotonic() - self.t0, 1))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.report, indent=1, default=str))

    def skip(self, what: str, reason: str) -> dict:
        self.report["skips"].append({"what": what, "reason": reason})
        print(f"skip {what}: {reason}", flush=True)
        return {"status": "skip", "reason": reason}

    def worker(self, kind: str, job: dict, cap: float, tag: str, ranks: int = 1) -> dict:
        """Run one worker process (ranks > 1: torchrun) under min(cap, budget left); its result (or why none)."""
        left = self.deadline - time.monotonic()
        if left < 20:
            return self.skip(tag, f"time budget spent ({left:.0f}s left)")
        rp, jp = self.tmp / f"{tag}.json", self.tmp / f"{tag}.job.json"
        jp.write_text(json.dumps(dict(job, device=str(self.device), threads=self.S["threads"], result=str(rp))))
        timeout, t0, timed_out = min(cap, left), time.monotonic(), False
        print(f"== {tag} (limit {timeout:.0f}s, {left:.0f}s of budget left)", flush=True)
        run = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] if ranks > 1 else []
        p = subprocess.Popen([sys.executable, *run, __file__, "--worker", kind, "--job", str(jp)], cwd=ROOT,
                             start_new_session=True)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(p.pid, signal.SIGKILL)  # the worker and whatever it started (compile workers)
            p.wait()
        res = json.loads(rp.read_text()) if rp.exists() else {}
        info = {"rc": p.returncode, "timed_out": timed_out, "seconds": round(time.monotonic() - t0, 1)}
        why = f"timed out after {timeout:.0f}s" if timed_out else f"worker exited {p.returncode}"
        if kind == "correctness":  # partial results survive a kill: the kernels done so far
            return {"kernels": {}, "error": res["reason"], "worker": info} if "status" in res else \
                {"kernels": res, "worker": info, "error": why}
        if timed_out or not res:
            res = {"status": "error", "reason": f"{why}, no result (see the log)"}
        return dict(res, worker=info)

    def run(self) -> None:
        self.save()
        for name in ("correctness", "throughput", "trl", "extra", "fsdp"):
            if self.parts is not None and name not in self.parts:
                continue
            try:
                getattr(self, f"part_{name}")()
            except Exception as exc:  # noqa: BLE001 - recorded, the next part runs
                traceback.print_exc()
                self.report["parts"].setdefault(name, {})["error"] = err(exc)
                self.report["parts"][name].setdefault("status", "error")
            self.save()
        print(f"wrote {self.out}\n{json.dumps(self.report['acceptance'], indent=1)}", flush=True)

    def part_correctness(self) -> None:
        runnable, kern = [], {}
        for name in kernels():
            try:
                why = G.kernel_unavailable(name, self.device)
            except Exception as exc:  # noqa: BLE001
                kern[name] = {"status": "error", "reason": f"kernel_unavailable: {err(exc)}"}
                continue
            if why is None and self.attn_filter is not None and name not in self.attn_filter:
                why = f"not selected (--attn {','.join(self.attn_filter)})"
            elif why is None and self.dry and self.attn_filter is None and name not in CPU_DRY_KERNELS:
                why = "dry run on CPU: sdpa and eager only (flex_attention compiles per shape on CPU, ~20 s each)"
            if why:
                kern[name] = self.skip(f"correctness/{name}", why)
            else:
                runnable.append(name)
        runnable.sort(key=lambda n: n == "flex_attention")  # the slow one (compiles) last: a kill spares the rest
        res: dict = {"kernels": {}}
        if runnable:
            S = self.S
            res = self.worker("correctness", {"kernels": runnable, "shape": S["corr_shape"], "seq": S["corr_seq"],
                                              "dtype": "bfloat16", "short": S["corr_short"],
                                              "n_short": S["corr_n_short"]}, S["caps"]["correctness"], "correctness")
            if res.get("status") == "skip":
                res = {"kernels": {n: res for n in runnable}}
        for name in runnable:  # not finished: the worker was killed or died
            kern[name] = res["kernels"].get(name) or {"status": "error", "reason": f"not finished: {res.get('error')}"}
        passed = [n for n in kernels() if kern[n].get("status") == "pass"]
        bad = [n for n in kernels() if kern[n].get("status") in ("fail", "error")]
        self.report["parts"]["correctness"] = {"status": "ok" if passed and not bad else "fail", "passed": passed,
                                               "failed": bad, "kernels": {n: kern[n] for n in kernels()},
                                               "worker": res.get("worker")}

    def throughput(self, attn: str, cap: float) -> dict:
        job = {k: self.S[k] for k in ("shape", "seq", "rows", "micro_rows", "steps", "warmup", "gemm_n")}
        r = self.worker("throughput", dict(job, attn=attn), cap, f"throughput-{attn}")
        if r.get("status") == "ok":
            peak = PEAK_TFLOPS * 1e12 if self.device.type == "cuda" else None
            fps, efps = r["model_flops"] / r["seconds"], r["executed_flops"] / r["seconds"]
            r.update(model_tflops_per_s=fps / 1e12, gemm_tflops_per_s=r["gemm_flops"] / 1e12,
                     mfu_vs_989=fps / peak if peak else None, mfu_vs_gemm=fps / r["gemm_flops"],
                     executed_mfu_vs_989=efps / peak if peak else None, executed_mfu_vs_gemm=efps / r["gemm_flops"])
        return r

    def part_throughput(self, compiled: bool = False) -> None:
        """sdpa, then the kernels that passed correctness (not eager); flex_attention (compiles) after TRL."""
        runs = self.report["parts"].setdefault("throughput", {"status": "error", "runs": {}})["runs"]
        passed = self.report["parts"].get("correctness", {}).get("passed", [])
        for name in kernels():
            if name == "eager" or (name == "flex_attention") != compiled:
                continue
            if name == "sdpa":
                runs[name] = self.throughput(name, self.S["caps"]["throughput"])
                self.report["parts"]["throughput"]["status"] = runs[name]["status"]
            elif self.dry:
                runs[name] = self.skip(f"throughput/{name}", "dry run: sdpa only")
            elif name not in passed:
                runs[name] = self.skip(f"throughput/{name}", "did not pass correctness (or was skipped)")
            else:
                runs[name] = self.throughput(name, self.S["caps"]["extra"])
            self.save()

    def part_extra(self) -> None:  # ours with flex_attention: after the TRL part, while time is left
        self.part_throughput(compiled=True)

    def part_trl(self) -> None:
        part = self.report["parts"]["trl"] = {"status": "fail", "attn_used": None, "attempts": []}
        if importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
            part.update(self.skip("trl", "trl/datasets not importable (GPU: bash benchmarks/gpu_suite.sh "
                                  "--fetch-wheels here, then carry .whl; CPU: .venv/bin/pip install -e '.[bench]')"))
            return
        S = self.S
        for attn in self.trl_attn:
            why = G.kernel_unavailable(attn, self.device) if attn in kernels() else None
            if why:
                part["attempts"].append(dict(self.skip(f"trl/{attn}", why), attn=attn))
                continue
            # flex: micro-batches of micro_rows rows flattened into one (its block mask skips cross-example
            # blocks); sdpa: one row per micro-batch (a flattened longer row would be dense attention over it)
            batch, accum = (1, S["rows"]) if attn == "sdpa" else (S["micro_rows"], S["rows"] // S["micro_rows"])
            job = {k: S[k] for k in ("shape", "seq", "rows", "steps", "warmup")}
            r = self.worker("trl", dict(job, attn=attn, batch=batch, accum=accum), S["caps"]["trl"], f"trl-{attn}")
            if r.get("status") == "ok":
                r["mfu_vs_989"] = None if self.dry else r["model_flops"] / r["seconds"] / (PEAK_TFLOPS * 1e12)
                part.update(status="ok", attn_used=attn, result=r)
                return
            part["attempts"].append(dict(r, attn=attn))

    def part_fsdp(self) -> None:
        job = {k: self.S[k] for k in ("shape", "seq", "rows", "micro_rows", "steps", "warmup")}
        self.report["parts"]["fsdp"] = self.worker("fsdp", job, self.S["caps"]["fsdp"], "fsdp", self.S["ranks"])

    def acceptance(self) -> dict:
        parts = self.report["parts"]
        runs = {k: r for k, r in parts.get("throughput", {}).get("runs", {}).items() if r.get("status") == "ok"}
        best = max(runs, key=lambda k: runs[k]["tokens_per_s"]) if runs else None
        ours, trl = runs.get(best, {}), parts.get("trl", {}).get("result") or {}
        mfu = ours.get("mfu_vs_989")
        ratio = ours["tokens_per_s"] / trl["tokens_per_s"] if ours and trl else None
        corr = parts.get("correctness", {})
        return {"meaningful": not self.dry, "best_kernel": best, "ours_tokens_per_s": ours.get("tokens_per_s"),
                "trl_tokens_per_s": trl.get("tokens_per_s"), "trl_attn": parts.get("trl", {}).get("attn_used"),
                "mfu_vs_989": mfu, "mfu_vs_gemm": ours.get("mfu_vs_gemm"), "mfu_min": MIN_MFU, "mfu_goal": GOAL_MFU,
                "mfu_ok": None if mfu is None else mfu >= MIN_MFU,
                "mfu_goal_met": None if mfu is None else mfu >= GOAL_MFU,
                "ours_over_trl": ratio, "ratio_min": MIN_RATIO, "ratio_ok": None if ratio is None else ratio >= MIN_RATIO,
                "sdpa_over_trl": runs["sdpa"]["tokens_per_s"] / trl["tokens_per_s"] if "sdpa" in runs and trl else None,
                "correctness_ok": corr.get("status") == "ok" if corr else None,
                "correctness_passed": corr.get("passed"), "correctness_failed": corr.get("failed"),
                "fsdp_ok": parts["fsdp"].get("status") == "ok" if "fsdp" in parts else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, few steps (checks the suite)")
    ap.add_argument("--out", help="JSON path (default benchmarks/out/gpu.json; gpu_dryrun.json with --dry-run)")
    ap.add_argument("--budget-s", type=float, help="time budget of all parts (default 420; 100 with --dry-run)")
    ap.add_argument("--attn", help="comma list: check only these kernels (the rest are recorded as skips)")
    ap.add_argument("--trl-attn", help="TRL kernels to try in order (default flex_attention,sdpa; dry: sdpa)")
    ap.add_argument("--parts", help="comma list: run only these parts (correctness,throughput,trl,extra,fsdp)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    if (args := ap.parse_args()).worker:
        return worker_main(args.worker, args.job)
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run to check the suite on CPU")
    Suite(args).run()


if __name__ == "__main__":
    main()
