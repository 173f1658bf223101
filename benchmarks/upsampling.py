"""deepnotes upsampling vs torch's native kernels: interpolate x2 (bilinear, bicubic, nearest) and pixel_shuffle.

Input (8, 64, 128, 128) float32 (--quick: (2, 16, 64, 64)), scale factor 2, forward
alone and forward + backward. deepnotes' interpolate runs one GEMM per spatial
dimension against the (n_out, n_in) interpolation matrix (nearest by an
integer factor: one broadcast copy); torch runs hand-written, vectorised
ATen kernels. The target is a time ratio ours / torch <= 2. Both sides run
alternately in one process, round after round, so load from other processes
hits them alike; the median of the rounds is reported.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from deepnotes.bench import median_time, write_result
from deepnotes.nn import upsampling as U

TARGET = 2.0


def cases():
    return {
        "interpolate bilinear": (lambda x: U.interpolate(x, scale_factor=2, mode="bilinear"),
                                 lambda x: F.interpolate(x, scale_factor=2, mode="bilinear")),
        "interpolate bicubic": (lambda x: U.interpolate(x, scale_factor=2, mode="bicubic"),
                                lambda x: F.interpolate(x, scale_factor=2, mode="bicubic")),
        "interpolate nearest": (lambda x: U.interpolate(x, scale_factor=2, mode="nearest"),
                                lambda x: F.interpolate(x, scale_factor=2, mode="nearest")),
        "pixel_shuffle": (lambda x: U.pixel_shuffle(x, 2), lambda x: F.pixel_shuffle(x, 2)),
    }


def forward_backward(fn, x, grad):
    def run():
        x.grad = None
        fn(x).backward(grad)
    return run


def alternate(fn_a, fn_b, rounds: int, inner: int) -> tuple[float, float]:
    """Median seconds per call of each over `rounds` alternating rounds of `inner` calls (after a warm-up).

    `inner` > 1 keeps a round well above the clock's resolution (4 ms on some VMs) for small inputs.
    """
    def repeat(fn):
        def run():
            for _ in range(inner):
                fn()
        return run

    fn_a(), fn_b()
    a, b = [], []
    for _ in range(rounds):
        a.append(median_time(repeat(fn_a), repeats=1, warmup=0) / inner)
        b.append(median_time(repeat(fn_b), repeats=1, warmup=0) / inner)
    return sorted(a)[len(a) // 2], sorted(b)[len(b) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()

    shape = (2, 16, 64, 64) if args.quick else (8, 64, 128, 128)
    rounds = args.rounds or (5 if args.quick else 7)
    inner = 20 if args.quick else 1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    xg = x.clone().requires_grad_()
    results = {}
    table = Table(title=f"upsampling x2 of {tuple(shape)} float32, {torch.get_num_threads()} threads, "
                        f"median of {rounds} alternating rounds")
    for col in ("operator", "pass", "deepnotes s", "torch s", "ratio ours/torch", f"<= {TARGET:g}x", "max |diff|"):
        table.add_column(col)
    for name, (ours, theirs) in cases().items():
        with torch.no_grad():
            y_ours, y_torch = ours(x), theirs(x)
        diff = float((y_ours - y_torch).abs().max())
        grad = torch.randn(y_torch.shape, generator=gen)
        t_fwd = alternate(lambda: ours(x), lambda: theirs(x), rounds, inner)
        t_bwd = alternate(forward_backward(ours, xg, grad), forward_backward(theirs, xg, grad), rounds, inner)
        results[name] = {}
        for label, (t_o, t_t) in (("forward", t_fwd), ("forward+backward", t_bwd)):
            ratio = t_o / t_t
            results[name][label] = {"deepnotes_s": t_o, "torch_s": t_t, "ratio_ours_over_torch": ratio,
                                    "within_target": ratio <= TARGET}
            table.add_row(name, label, f"{t_o:.4f}", f"{t_t:.4f}", f"{ratio:.2f}", "yes" if ratio <= TARGET else "NO",
                          f"{diff:.1e}")
        results[name]["max_abs_diff_forward"] = diff
    Console().print(table)
    worst = max(v[p]["ratio_ours_over_torch"] for v in results.values() for p in ("forward", "forward+backward"))
    print(f"worst ratio ours/torch: {worst:.2f} (target <= {TARGET:g})")
    path = write_result("upsampling", {"shape": list(shape), "dtype": "float32", "scale_factor": 2, "rounds": rounds,
                                       "target_ratio": TARGET, "results": results, "worst_ratio": worst}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
