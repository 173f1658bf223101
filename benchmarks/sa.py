"""Incremental mean vs what a user would write instead: cumsum / n.

Both compute the mean of every prefix of (n, batch) float32 sequences, with
an offset of 1000 so that rounding shows. The incremental recursion
m_n = m_{n-1} + (x_n - m_{n-1})/n is a Python loop over n and rounds to
float32 at every step; torch's CPU cumsum accumulates float32 in double. What
the recursion offers is that it is online: O(1) memory per stream, no stored
history. Errors are measured against a float64 cumsum.
"""
from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from deepnotes.bench import median_time, write_result
from deepnotes.optim.sa import running_mean


def cumsum_mean(x: torch.Tensor) -> torch.Tensor:
    n = torch.arange(1, x.shape[0] + 1, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return x.cumsum(0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    n, batch = (2_000, 256) if args.quick else (20_000, 1024)
    gen = torch.Generator().manual_seed(0)
    x = (1000.0 + torch.randn(n, batch, generator=gen)).float()
    truth = cumsum_mean(x.double())

    t_ours = median_time(lambda: running_mean(x), repeats=3)
    t_peer = median_time(lambda: cumsum_mean(x), repeats=5)
    err_ours = float((running_mean(x).double() - truth).abs().max())
    err_peer = float((cumsum_mean(x).double() - truth).abs().max())

    table = Table(title=f"prefix means of ({n}, {batch}) float32, offset 1000")
    for col in ("method", "median s", "max abs error vs float64"):
        table.add_column(col)
    table.add_row("deepnotes running_mean (incremental)", f"{t_ours:.4f}", f"{err_ours:.3e}")
    table.add_row("torch cumsum / n", f"{t_peer:.4f}", f"{err_peer:.3e}")
    Console().print(table)
    ratio = t_peer / t_ours
    print(f"speed ratio (ours / cumsum, >1 means ours faster): {ratio:.3f}")
    print(f"error ratio (cumsum error / ours): {err_peer / max(err_ours, 1e-30):.2f}")
    path = write_result("sa", {
        "shape": [n, batch],
        "seconds": {"running_mean": t_ours, "cumsum_mean": t_peer},
        "max_abs_error": {"running_mean": err_ours, "cumsum_mean": err_peer},
        "speed_ratio_ours_over_peer": ratio,
        "error_ratio_peer_over_ours": err_peer / max(err_ours, 1e-30),
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
