"""AdamW step time: deepnotes (for-loop, foreach, fused) vs torch.optim.AdamW (default, foreach, fused).

~10M float32 parameters in 100 tensors of 100,000, gradients fixed, one
optimizer step timed. All variants start from the same weights and take the
same number of steps, interleaved round by round so that load from other
processes hits them alike; each variant's time is the median over rounds of
median_time(step, repeats=3). Threads: 2 by default (--threads).

On CPU, torch's default is the for-loop (foreach is chosen by default only on
accelerators); fused=True is one vectorised pass per element, torch's and
ours alike (ours: a C++/OpenMP kernel compiled on first use). Our foreach path
works in cache-sized blocks; "ours foreach, unblocked" turns the blocking off
to show what it buys.

Compile time is part of fused=True's cost: the JSON has the load time of this
run (a cache hit, or the build if the cache was empty) and, unless
--skip-cold-build, a build from an empty cache in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

import deepnotes.optim._foreach_adam as foreach_module
from deepnotes.bench import median_time, write_result
from deepnotes.optim import AdamW
from deepnotes.optim._fused_adam import build_info

N_TENSORS, NUMEL = 100, 100_000


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(NUMEL, generator=gen)) for _ in range(N_TENSORS)]
    for p in params:
        p.grad = torch.randn(NUMEL, generator=gen) * 1e-2
    return params


def unblocked(step: Callable[[], object]) -> Callable[[], object]:
    def run():
        saved = foreach_module._CPU_BLOCK_BYTES
        foreach_module._CPU_BLOCK_BYTES = 1 << 62
        try:
            return step()
        finally:
            foreach_module._CPU_BLOCK_BYTES = saved
    return run


def cold_build() -> dict:
    """build_info() of a fresh process whose kernel cache is empty: the first-use compile."""
    with tempfile.TemporaryDirectory() as cache:
        code = "import json; from deepnotes.optim._fused_adam import build_info; print(json.dumps(build_info()))"
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, XDG_CACHE_HOME=cache),
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both sides")
    parser.add_argument("--skip-cold-build", action="store_true", help="do not time a build from an empty cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds = 3 if args.quick else 9

    compile_info = {"cold": None if args.skip_cold_build else cold_build(), "this_run": build_info()}

    kw = dict(lr=1e-3, weight_decay=1e-2)
    variants: dict[str, torch.optim.Optimizer] = {
        "ours for-loop": AdamW(make_params(), foreach=False, **kw),
        "ours foreach": AdamW(make_params(), foreach=True, **kw),
        "ours foreach, unblocked": AdamW(make_params(), foreach=True, **kw),
        "ours fused": AdamW(make_params(), fused=True, **kw),
        "torch default (for-loop on CPU)": torch.optim.AdamW(make_params(), **kw),
        "torch foreach=True": torch.optim.AdamW(make_params(), foreach=True, **kw),
        "torch fused=True": torch.optim.AdamW(make_params(), fused=True, **kw),
    }
    steps = {name: (unblocked(opt.step) if "unblocked" in name else opt.step) for name, opt in variants.items()}
    for step in steps.values():  # first step allocates the state
        step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(median_time(step, repeats=3, warmup=0))
    seconds = {name: statistics.median(ts) for name, ts in times.items()}
    spread = {name: [min(ts), max(ts)] for name, ts in times.items()}

    # Same start, same number of steps: the weights should agree to float32 rounding.
    ref = variants["torch default (for-loop on CPU)"].param_groups[0]["params"]
    max_diff = {name: max(float((a - b).detach().abs().max()) for a, b in zip(opt.param_groups[0]["params"], ref))
                for name, opt in variants.items()}

    t_default = seconds["torch default (for-loop on CPU)"]
    table = Table(title=f"AdamW step, {N_TENSORS} x {NUMEL:,} float32 = {N_TENSORS * NUMEL / 1e6:.0f}M params, "
                        f"{torch.get_num_threads()} threads")
    for col in ("implementation", "median ms", "min-max ms", "speed vs torch default", "max |dθ| vs torch default"):
        table.add_column(col)
    for name, s in seconds.items():
        lo, hi = spread[name]
        table.add_row(name, f"{s * 1e3:.1f}", f"{lo * 1e3:.1f}-{hi * 1e3:.1f}", f"{t_default / s:.2f}x",
                      f"{max_diff[name]:.1e}")
    Console().print(table)

    ratios = {
        "ours_fused_over_torch_fused": seconds["torch fused=True"] / seconds["ours fused"],
        "ours_foreach_over_torch_default": t_default / seconds["ours foreach"],
        "ours_foreach_over_torch_foreach": seconds["torch foreach=True"] / seconds["ours foreach"],
        "ours_foreach_over_torch_fused": seconds["torch fused=True"] / seconds["ours foreach"],
        "ours_forloop_over_torch_default": t_default / seconds["ours for-loop"],
        "blocking_speedup": seconds["ours foreach, unblocked"] / seconds["ours foreach"],
    }
    targets = {"ours_fused_over_torch_fused": 0.8, "ours_foreach_over_torch_default": 1.0}
    goals = {"ours_fused_over_torch_fused": 1.0}
    for key, value in ratios.items():
        target = targets.get(key)
        verdict = "" if target is None else f"  (target >= {target}: {'met' if value >= target else 'NOT met'})"
        print(f"{key}: {value:.3f}{verdict}")
    for name, info in compile_info.items():
        if info is not None:
            print(f"fused kernel, {name}: backend {info['backend']}, {info['build_seconds'] or 0:.1f} s "
                  f"({'cache hit' if info['cached'] else 'compiled'})")
    path = write_result("optim", {
        "params": {"tensors": N_TENSORS, "numel_each": NUMEL, "dtype": "float32", "rounds": rounds,
                   "block_bytes": foreach_module._CPU_BLOCK_BYTES, **kw},
        "seconds": seconds,
        "seconds_min_max_over_rounds": spread,
        "max_abs_param_diff_vs_torch_default": max_diff,
        "speed_ratios": ratios,
        "targets": {k: {"target": v, "met": ratios[k] >= v, **({"goal": goals[k], "goal_met": ratios[k] >= goals[k]}
                                                               if k in goals else {})}
                    for k, v in targets.items()},
        "fused_kernel_compile": compile_info,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
