"""Note 6: FlashAttention, exact attention by tiles with an online softmax.

The claim has three parts, each a pure function below returning its metrics,
checks and tables; ``FlashAttention.measure`` composes them:

* ``exactness``: output and gradients vs a float64 reference within flash-attn's
  rule, error <= 2x (output) / 3x (gradients) the error of the same naive math
  in the working dtype, + 1e-5; the worst ratio err / bound over a set of
  (Sq, Sk, head dim, GQA, causal, dtype) cases must be <= 1.
  ``tile_invariance``: the online softmax is exact for any tiling, so outputs at
  different tile sizes agree to float32 rounding (1e-5).
* ``memory_scaling``: peak extra resident memory of one forward vs N, each
  reading taken in a fresh process (``deepnotes.measure.peak_memory``, inputs
  and warm-up from ``forward_inputs``) so that no earlier call's
  freed-but-resident heap hides a later call's peak; the two largest N take the
  median of a few readings. The log-log slope over the last octave of N,

      slope = log(peak(N) / peak(N/2)) / log 2,

  must be <= 1.2 for ours (at most linear) and >= 1.8 for naive attention
  (quadratic), and ours <= 5% of naive's at the largest N.
* ``speed``: ours, torch SDPA and naive at the same inputs, timed interleaved;
  reported as ratios, never thresholded: the note claims a measurement, not a bound.
"""
from __future__ import annotations

import ctypes
import gc
import statistics

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import attention_reference, blockwise_attention, flash_attention
from ..attention.tolerance import GRAD_FACTOR, OUTPUT_FACTOR, flash_rule
from ..measure import interleaved_times, peak_memory
from .base import Check, Context, NoteExperiment, Result, Table

__all__ = ["FlashAttention", "exactness", "tile_invariance", "memory_scaling", "memory_slope", "speed",
           "forward_inputs", "peak_forward_bytes", "ours_forward", "naive_forward", "sdpa_forward", "FORWARDS"]

# (Sq, Sk, head dim, Hkv, causal, dtype), B = 2, H = 6.
TINY_CASES = [(17, 33, 16, 2, True, torch.float32), (9, 20, 8, 1, False, torch.bfloat16)]
QUICK_CASES = [(113, 203, 59, 2, True, torch.float32), (203, 113, 64, 1, True, torch.float32),
               (127, 513, 128, 6, False, torch.float32), (1, 239, 32, 2, True, torch.float32),
               (128, 217, 111, 2, False, torch.bfloat16), (113, 203, 64, 6, True, torch.float16)]
FULL_CASES = QUICK_CASES + [(1023, 1024, 64, 2, True, torch.float32), (1024, 1023, 64, 6, False, torch.float32),
                            (3, 799, 128, 1, True, torch.float32), (512, 512, 64, 2, True, torch.bfloat16)]
TILE_SIZES = [(64, 128), (128, 256), (256, 256), (256, 512), (512, 1024)]
WARMUP_N = 1024  # the smallest N whose forward takes the parallel path (creates the worker pool)


# --- exactness --------------------------------------------------------------------------------------------

def exactness(cases, generator: torch.Generator):
    """Worst err / bound under flash-attn's rule over `cases` -> (metrics, checks, table)."""
    rows, worst_out, worst_grad = [], 0.0, 0.0
    for Sq, Sk, D, Hkv, causal, dtype in cases:
        q = torch.randn(2, 6, Sq, D, generator=generator).to(dtype).requires_grad_()
        k = torch.randn(2, Hkv, Sk, D, generator=generator).to(dtype).requires_grad_()
        v = torch.randn(2, Hkv, Sk, D, generator=generator).to(dtype).requires_grad_()
        do = torch.randn(2, 6, Sq, D, generator=generator).to(dtype)
        res = {}
        for name, fn, ins in (("ours", flash_attention, (q, k, v)), ("naive", attention_reference, (q, k, v)),
                              ("ref", attention_reference, [x.detach().double().requires_grad_() for x in (q, k, v)])):
            o = fn(*ins, causal=causal)
            res[name] = (o, torch.autograd.grad(o, list(ins), do.to(o.dtype)))
        out_rule = flash_rule(res["ours"][0], res["naive"][0], res["ref"][0], OUTPUT_FACTOR)
        grad_rules = [flash_rule(a, b, r, GRAD_FACTOR) for a, b, r in zip(res["ours"][1], res["naive"][1],
                                                                          res["ref"][1])]
        worst_out = max(worst_out, out_rule.err / out_rule.bound)
        worst_grad = max(worst_grad, max(r.err / r.bound for r in grad_rules))
        rows.append([f"{Sq}x{Sk}", D, f"6/{Hkv}", causal, str(dtype).replace("torch.", ""),
                     f"{out_rule.err:.2e}", f"{out_rule.baseline_err:.2e}",
                     f"{max(r.err for r in grad_rules):.2e}", f"{max(r.baseline_err for r in grad_rules):.2e}"])
    metrics = {"worst_output_error_over_bound": worst_out, "worst_gradient_error_over_bound": worst_grad}
    checks = [
        Check("output error <= 2x naive error + 1e-5 (worst err/bound over cases)", worst_out, "<=", 1.0,
              label="output error / bound"),
        Check("gradient error <= 3x naive error + 1e-5 (worst err/bound over cases)", worst_grad, "<=", 1.0,
              label="gradient error / bound"),
    ]
    table = Table("Exactness vs float64 (B=2, H=6): max |error|, ours and the naive baseline in the same dtype",
                  ["Sq x Sk", "D", "H/Hkv", "causal", "dtype", "out ours", "out naive", "grad ours", "grad naive"],
                  rows)
    return metrics, checks, table


def tile_invariance(N: int, sizes, repeats: int, generator: torch.Generator):
    """Outputs and interleaved median seconds at each tile size -> (metrics, checks, table, seconds)."""
    q, k, v = [torch.randn(1, 8, N, 64, generator=generator) for _ in range(3)]
    fns = {s: (lambda s=s: blockwise_attention(q, k, v, block_q=s[0], block_k=s[1])) for s in sizes}
    seconds = interleaved_times(fns, repeats=repeats)
    outs = [fns[s]() for s in sizes]
    spread = max(float((o - outs[0]).abs().max()) for o in outs)
    fastest = min(seconds.values())
    check = Check(f"same output for every tile size (max |diff|, N={N}, fp32)", spread, "<=", 1e-5,
                  label="tile-size output spread")
    table = Table(f"Tile sizes, N={N} non-causal forward (B=1, H=8): median seconds, interleaved",
                  ["block_q x block_k", "seconds", "time / fastest"],
                  [[f"{a}x{b}", f"{seconds[(a, b)]:.4f}", f"{seconds[(a, b)] / fastest:.2f}"] for a, b in sizes])
    return {"tile_size_max_output_spread": spread}, [check], table, seconds


# --- memory -----------------------------------------------------------------------------------------------

def ours_forward(q, k, v):
    with torch.no_grad():
        return flash_attention(q, k, v)


def naive_forward(q, k, v):
    with torch.no_grad():
        return attention_reference(q, k, v)


def sdpa_forward(q, k, v):
    with torch.no_grad():
        return F.scaled_dot_product_attention(q, k, v)


# The forwards whose memory is read in fresh processes (here and in benchmarks/attention.py).
FORWARDS = {"ours": ours_forward, "naive": naive_forward, "sdpa": sdpa_forward}


def _settle_allocator(fix_threshold: bool) -> None:
    """glibc malloc: optionally pin the mmap threshold at its default 128 KiB, then trim the heap.

    glibc raises the threshold to the size of each mmapped block freed (up to 32 MiB), after which
    blocks of that size come from the heap, where freed pages stay resident and are reused unseen.
    Pinned, every buffer of 128 KiB or more is mapped fresh and counted whatever ran before; the
    trim hands freed heap pages back, so that reusing them is counted too.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        if fix_threshold:
            libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD; setting it turns the dynamic threshold off
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: a reading may then miss memory the warm-up left resident


def forward_inputs(method: str, N: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (1, 1, N, 64) fp32, after one warm-up call of `method` at min(N, WARMUP_N).

    peak_memory's make_inputs: it runs in the fresh measuring process before the reading (it
    changes that process's allocator settings, so call it nowhere else). The warm-up pays the one-off
    costs (worker threads, kernel set-up), and the allocator is settled (see
    _settle_allocator) so that the reading counts everything the measured call touches.
    """
    _settle_allocator(fix_threshold=True)
    g = torch.Generator().manual_seed(seed)
    warm = [torch.randn(1, 1, min(N, WARMUP_N), 64, generator=g) for _ in range(3)]
    FORWARDS[method](*warm)
    del warm
    gc.collect()  # now, so that peak_memory's own collection frees nothing the trim has not seen
    _settle_allocator(fix_threshold=False)
    return tuple(torch.randn(1, 1, N, 64, generator=g) for _ in range(3))


def memory_slope(ns, ys) -> float:
    """Least-squares slope of log y against log N: the exponent p of y = c N^p."""
    return float(np.polyfit(np.log(np.asarray(ns, dtype=float)), np.log(np.asarray(ys, dtype=float)), 1)[0])


def peak_forward_bytes(method: str, N: int, readings: int) -> float:
    """Median over `readings` fresh processes of the peak extra bytes of one forward."""
    return statistics.median(peak_memory(FORWARDS[method], forward_inputs, method, N) for _ in range(readings))


def memory_scaling(Ns, readings: int, progress=lambda fraction, message="": None):
    """Peak extra memory of ours and naive vs N -> (metrics, checks, table, (ours, naive) bytes).

    The two largest N, which the checks use, take the median of `readings` fresh processes; the
    others, shown in the table and figure only, one each.
    """
    ours, naive = [], []
    for t, N in enumerate(Ns):
        r = readings if t >= len(Ns) - 2 else 1
        ours.append(peak_forward_bytes("ours", N, r))
        naive.append(peak_forward_bytes("naive", N, r))
        progress((t + 1) / len(Ns), f"memory N={N}")
    # Growth over the last octave (N/2 -> N), where ours' fixed costs (tiles, buffers) weigh least.
    s_ours, s_naive = memory_slope(Ns[-2:], ours[-2:]), memory_slope(Ns[-2:], naive[-2:])
    ratio = ours[-1] / naive[-1]
    metrics = {"memory_slope_ours": s_ours, "memory_slope_naive": s_naive,
               "memory_ours_over_naive_at_max_n": ratio, "memory_ours_mib_at_max_n": ours[-1] / 2**20,
               "memory_naive_mib_at_max_n": naive[-1] / 2**20}
    octave = f"N={Ns[-2]}..{Ns[-1]}"
    checks = [
        Check(f"ours: log-log slope of peak memory vs N ({octave})", s_ours, "<=", 1.2, label="ours memory slope"),
        Check(f"naive: log-log slope of peak memory vs N ({octave})", s_naive, ">=", 1.8,
              label="naive memory slope"),
        Check(f"ours / naive peak extra memory at N={Ns[-1]}", ratio, "<=", 0.05, label="ours / naive memory"),
    ]
    table = Table(f"Peak extra memory of one forward (MiB), B=1 H=1 D=64 fp32, one fresh process per reading "
                  f"(the two largest N: median of {readings})", ["N", "ours", "naive", "ours/naive"],
                  [[n, f"{a / 2**20:.2f}", f"{b / 2**20:.1f}", f"{a / b:.2%}"] for n, a, b in zip(Ns, ours, naive)])
    return metrics, checks, table, (ours, naive)


# --- speed ------------------------------------------------------------------------------------------------

def _causal_forwards(q, k, v) -> dict:
    return {"ours": lambda: flash_attention(q, k, v, causal=True),
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "naive": lambda: attention_reference(q, k, v, causal=True)}


def speed(Ns, repeats: int, generator: torch.Generator):
    """Causal forward seconds of ours, SDPA and naive, interleaved -> (metrics, table, seconds per N)."""
    seconds = {}
    for N in Ns:
        q, k, v = [torch.randn(1, 8, N, 64, generator=generator) for _ in range(3)]
        seconds[N] = interleaved_times(_causal_forwards(q, k, v), repeats=repeats)
    metrics = {}
    for N, t in seconds.items():
        metrics[f"causal_fwd_ours_over_sdpa_speed_N{N}"] = t["sdpa"] / t["ours"]
        metrics[f"causal_fwd_ours_over_naive_speed_N{N}"] = t["naive"] / t["ours"]
    table = Table("Causal forward, B=1 H=8 D=64 fp32: median seconds (interleaved); speed = their time / ours",
                  ["N", "ours", "torch SDPA", "naive", "speed vs SDPA", "speed vs naive"],
                  [[n, f"{t['ours']:.4f}", f"{t['sdpa']:.4f}", f"{t['naive']:.4f}", f"{t['sdpa'] / t['ours']:.2f}",
                    f"{t['naive'] / t['ours']:.2f}"] for n, t in seconds.items()])
    return metrics, table, seconds


# --- figures ----------------------------------------------------------------------------------------------

def plot_memory(ctx: Context, Ns, ours, naive) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    n = np.array(Ns, dtype=float)
    ax.loglog(n, np.array(naive) / 2**20, "o-", label="naive (materialises N x N)")
    ax.loglog(n, np.array(ours) / 2**20, "s-", label="deepnotes flash_attention")
    ax.loglog(n, naive[-1] / 2**20 * (n / n[-1]) ** 2, "k:", lw=0.8, label="slope 2")
    ax.loglog(n, ours[-1] / 2**20 * (n / n[-1]), "k--", lw=0.8, label="slope 1")
    ax.set(xlabel="N (B=1, H=1, D=64, fp32 forward)", ylabel="peak extra memory (MiB)",
           title="Memory vs sequence length")
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "memory", "Peak extra resident memory of one forward, each reading in a fresh process.")


def plot_speed(ctx: Context, seconds) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name in ("ours", "sdpa", "naive"):
        ax.loglog(list(seconds), [t[name] for t in seconds.values()], "o-", label=name)
    ax.set(xlabel="N (B=1, H=8, D=64, causal fp32 forward)", ylabel="median seconds", title="Speed on this CPU")
    ax.legend()
    ctx.save_figure(fig, "speed", "Causal forward time: deepnotes, torch SDPA, naive (interleaved medians).")


def plot_tiles(ctx: Context, N: int, seconds) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.bar([f"{a}x{b}" for a, b in seconds], list(seconds.values()))
    ax.set(xlabel="block_q x block_k", ylabel="median seconds", title=f"Tile size sweep, N={N}, H=8")
    ctx.save_figure(fig, "blocks", "Forward time against tile size (same output at every size).")


class FlashAttention(NoteExperiment):
    slug = "flash-attention"

    def measure(self, ctx: Context) -> Result:
        metrics, checks = {}, []
        m, c, exact_table = exactness(ctx.pick(QUICK_CASES, FULL_CASES, tiny=TINY_CASES), ctx.generator(1))
        metrics.update(m)
        checks += c
        ctx.progress(0.3, "exactness")

        N_tiles, sizes = ctx.pick(1024, 4096, tiny=256), ctx.pick(TILE_SIZES, TILE_SIZES, tiny=TILE_SIZES[:2])
        m, c, tile_table, tile_seconds = tile_invariance(N_tiles, sizes, ctx.pick(3, 3, tiny=1), ctx.generator(2))
        metrics.update(m)
        checks += c
        ctx.progress(0.35, "tile sizes")

        Ns = ctx.pick([1024, 2048, 4096, 8192], [1024, 2048, 4096, 8192, 16384], tiny=[256, 512])
        m, c, mem_table, (ours, naive) = memory_scaling(Ns, ctx.pick(3, 3, tiny=1),
                                                        lambda f, msg: ctx.progress(0.35 + 0.4 * f, msg))
        metrics.update(m)
        checks += c

        m, speed_table, seconds = speed(ctx.pick([512, 1024, 2048], [1024, 2048, 4096, 8192], tiny=[128, 256]),
                                        ctx.pick(3, 2, tiny=1), ctx.generator(3))
        metrics.update(m)
        tables = [exact_table, mem_table, speed_table, tile_table]
        ctx.progress(0.95, "speed")

        plot_memory(ctx, Ns, ours, naive)
        plot_speed(ctx, seconds)
        plot_tiles(ctx, N_tiles, tile_seconds)
        ctx.progress(1.0, "done")
        n_last = list(seconds)[-1]
        return Result(
            metrics=metrics, checks=checks, tables=tables,
            summary=(f"Worst error/bound {metrics['worst_output_error_over_bound']:.2f} (output) and "
                     f"{metrics['worst_gradient_error_over_bound']:.2f} (gradients) under flash-attn's rule; "
                     f"peak memory slope {metrics['memory_slope_ours']:.2f} (ours) vs "
                     f"{metrics['memory_slope_naive']:.2f} (naive), ours "
                     f"{metrics['memory_ours_over_naive_at_max_n']:.1%} of naive at N={Ns[-1]}, each reading in a "
                     f"fresh process; causal forward at N={n_last} runs at "
                     f"{metrics[f'causal_fwd_ours_over_sdpa_speed_N{n_last}']:.2f}x torch SDPA's speed on this CPU."),
        )
