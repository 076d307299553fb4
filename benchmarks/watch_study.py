"""Run a command (a whole study: `make real`) and measure what it needs: wall time, the peak disk of a results
directory, and the peak memory of each process it starts (a worker's VmHWM: the most it ever held resident).

    python benchmarks/watch_study.py --disk results --out benchmarks/out/gemma_lima_study.json -- make real

Samples every --every seconds (disk: a walk of the directory, hard links counted once). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def tree_bytes(root: Path) -> int:
    seen, total = set(), 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_blocks * 512
        except OSError:
            continue
    return total


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(p.name))
    out, stack = [], [pid]
    while stack:
        for c in kids.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def mem_kb(pid: int) -> tuple[int, int, str]:
    """(VmRSS, VmHWM, command) in kB; zeros for a process that is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return 0, 0, ""
    vals = {ln.split(":")[0]: ln.split()[1] for ln in status.splitlines() if ln.startswith(("VmRSS", "VmHWM"))}
    return int(vals.get("VmRSS", 0)), int(vals.get("VmHWM", 0)), cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--disk", default="results", help="directory whose peak size is measured")
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    disk = Path(a.disk)
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    peak_disk, start_disk = 0, tree_bytes(disk) if disk.exists() else 0
    peak_total_rss, hwm = 0, {}
    while proc.poll() is None:
        total = 0
        for pid in descendants(proc.pid):
            rss, peak, c = mem_kb(pid)
            total += rss
            if peak and ("python" in c or "harness" in c):
                hwm[pid] = (max(peak, hwm.get(pid, (0, ""))[0]), c[:200])
        peak_total_rss = max(peak_total_rss, total)
        if disk.exists():
            peak_disk = max(peak_disk, tree_bytes(disk))
        time.sleep(a.every)
    wall = time.time() - t0
    end_disk = tree_bytes(disk) if disk.exists() else 0
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    workers = sorted(((k, v) for k, v in hwm.items() if "submitit" in v[1]), key=lambda kv: -kv[1][0])
    res = {"command": cmd, "returncode": proc.returncode, "wall_s": round(wall, 1), "cpu": cpu,
           "cores": len(os.sched_getaffinity(0)), "disk_dir": str(disk),
           "disk_start_gb": round(start_disk / 1e9, 2), "disk_peak_gb": round(peak_disk / 1e9, 2),
           "disk_end_gb": round(end_disk / 1e9, 2), "peak_total_rss_gb": round(peak_total_rss / 2**20, 2),
           "worker_peak_rss_gb": [round(v[0] / 2**20, 2) for _, v in workers],
           "process_peak_rss_gb": {str(k): [round(v[0] / 2**20, 2), v[1]] for k, v in
                                   sorted(hwm.items(), key=lambda kv: -kv[1][0])[:12]}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "process_peak_rss_gb"}), file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
