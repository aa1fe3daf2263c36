"""Training throughput of two checkouts side by side in one run: is a change as fast as what it replaces?

    git worktree add /tmp/before main            # the code before the change
    python benchmarks/ab.py /tmp/before . [--models lab bn resnet] [--runners jax_defaults jax_best jax_bf16] \\
        [--batch 128] [--rounds 15] [--window 1.0] [--json out.json] [--smoke]

Each checkout gets one worker process (``python <checkout>/benchmarks/peers.py``'s runners, its own ``cnn_jax`` on
``PYTHONPATH``), kept alive, its networks compiled once. The parent then alternates timed windows: in each round
every row runs once in each checkout, back to back, the order flipped every round; one process computes at a time.
Per row it prints both checkouts' median images/s and the median over rounds of the paired ratio after/before
(adjacent windows, so the machine's drift, large on shared 2-core machines, cancels), with its range. A runner
whose code is the same in both checkouts (``flax_example``: Flax's own layers) is the control: its ratio is the
method's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import gemm_peak_gflops, machine  # benchmarks/ (the script's folder)

from cnn_jax.files import write_json

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import peers
runners = {}
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "setup":  # build, compile and size a runner: steps filling the window
        try:
            run = runners[cmd["key"]] = peers.RUNNERS[cmd["runner"]](cmd["model"], cmd["batch"])
        except NotImplementedError:  # e.g. flax_example for a network other than LabCNN
            print(json.dumps({"skip": True}), flush=True)
            continue
        print(json.dumps({"steps": peers._steps_for(run, cmd["window"])}), flush=True)
    else:
        t = time.perf_counter()
        runners[cmd["key"]](cmd["steps"])
        print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)
"""


class Worker:
    """A Python process running ``checkout``'s runners on request (JSON lines over its stdin and stdout)."""

    def __init__(self, checkout: Path):
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(checkout)], cwd=checkout, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker for {cmd} ended (exit code {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def compare(before: Path, after: Path, models: list[str], runners: list[str], batch: int, rounds: int,
            window: float) -> list[dict]:
    """One record per (model, runner): images/s medians of both checkouts and the paired ratios after/before."""
    workers = {"before": Worker(before), "after": Worker(after)}
    rows, steps = [], {}
    try:
        for m, r in ((m, r) for m in models for r in runners):  # one step count for both: the before side's
            key = f"{m}/{r}"
            steps[key] = workers["before"].ask(op="setup", key=key, runner=r, model=m, batch=batch, window=window)
            workers["after"].ask(op="setup", key=key, runner=r, model=m, batch=batch, window=window)
            if "skip" not in steps[key]:
                rows.append((m, r))
        rates: dict[str, dict[str, list[float]]] = {f"{m}/{r}": {"before": [], "after": []} for m, r in rows}
        print(f"{len(rows)} rows compiled; timing", flush=True)
        for i in range(rounds):
            for key in rates:
                for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                    n = steps[key]["steps"]
                    rates[key][side].append(batch * n / workers[side].ask(op="run", key=key, steps=n)["seconds"])
    finally:
        for w in workers.values():
            w.close()
    out = []
    for (m, r), key in zip(rows, rates, strict=True):
        b, a = rates[key]["before"], rates[key]["after"]
        ratios = [y / x for x, y in zip(b, a, strict=True)]
        out.append({"model": m, "runner": r, "batch": batch, "before_images_per_s": statistics.median(b),
                    "after_images_per_s": statistics.median(a), "ratio_median": statistics.median(ratios),
                    "ratio_low": min(ratios), "ratio_high": max(ratios), "ratios": ratios, "before": b, "after": a})
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path, help="checkout with the code before the change")
    p.add_argument("after", type=Path, help="checkout with the change")
    p.add_argument("--models", nargs="+", default=["lab", "bn", "resnet"], choices=["lab", "bn", "resnet"])
    p.add_argument("--runners", nargs="+", default=["jax_defaults", "jax_best", "jax_bf16"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=15, help="paired windows per row")
    p.add_argument("--window", type=float, default=1.0, help="seconds per timed window (at least)")
    p.add_argument("--json", type=Path)
    p.add_argument("--smoke", action="store_true", help="batch 16, 2 short rounds: checks the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.rounds, args.window = 16, 2, 0.05
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **machine()}
    peaks = [gemm_peak_gflops(512 if args.smoke else 2048)]
    print(f"{info['date']}  {info['cpu']} ({info['cpu_flags']}), {info['cpu_count']} cpus; "
          f"before {args.before.resolve()}, after {args.after.resolve()}; {args.rounds} paired rounds")
    rows = compare(args.before.resolve(), args.after.resolve(), args.models, args.runners, args.batch, args.rounds,
                   args.window)
    peaks.append(gemm_peak_gflops(512 if args.smoke else 2048))
    info["gemm_peak_gflops"] = {"before_rounds": peaks[0], "after_rounds": peaks[1]}
    print(f"GEMM peak f32 (2048^3 under jit) {peaks[0]:.0f} GFLOP/s before the rounds, {peaks[1]:.0f} after")
    print(f"{'model':7} {'runner':13} {'before img/s':>12} {'after img/s':>12} {'after/before':>12}  range")
    for r in rows:
        print(f"{r['model']:7} {r['runner']:13} {r['before_images_per_s']:12,.0f} {r['after_images_per_s']:12,.0f} "
              f"{r['ratio_median']:12.3f}  {r['ratio_low']:.3f}-{r['ratio_high']:.3f}")
    if args.json:
        write_json(args.json, {**info, "before": str(args.before.resolve()), "after": str(args.after.resolve()),
                               "rounds": args.rounds, "window_s": args.window, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
