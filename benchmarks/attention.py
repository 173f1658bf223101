"""deepnotes flash_attention vs torch SDPA (and the naive path) on this CPU.

Both sides run in one process, interleaved run by run (ours, SDPA, naive, ours,
...), so that machine load hits them alike; each figure is the median of the
runs. FLOPs are the nominal 4*B*H*N^2*D of a forward (x3.5 for forward +
backward, halved for causal), the same for every method, so GFLOP/s ratios
are time ratios.

1. dense fp32, B=1, H=8, D=64, N in {1024, 2048, 4096, 8192}, causal and not,
   forward and forward+backward. Targets: forward >= 0.8x SDPA at N=4096,
   forward+backward >= 0.6x SDPA.
2. sparse bool masks with ~90% of tiles empty (N=4096): ours vs SDPA given the
   same mask (SDPA adds a mask to every tile; ours skips empty ones).
   Target: >= 2x faster than SDPA.
3. peak extra memory vs N up to 16384 (B=1, H=1, D=64, forward), each reading
   in a fresh process (deepnotes.measure.peak_memory, as the experiment does).
   Target: ours <= 5% of naive's extra at N = 16384.
4. bf16 inputs; a decode shape (Sq=1, Sk=16384).
"""
from __future__ import annotations

import argparse
import re

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from deepnotes.attention import attention_reference, flash_attention
from deepnotes.attention.blockwise import plan_tiles
from deepnotes.attention.inputs import check_inputs
from deepnotes.bench import write_result
from deepnotes.experiments.flash_attention import peak_forward_bytes
from deepnotes.measure import interleaved_times

console = Console()


def _qkv(B, H, N, D, dtype=torch.float32, grad=False, Sq=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq or N, D, generator=g).to(dtype)
    k = torch.randn(B, H, N, D, generator=g).to(dtype)
    v = torch.randn(B, H, N, D, generator=g).to(dtype)
    return [x.requires_grad_(grad) for x in (q, k, v)]


def _methods(q, k, v, causal, backward, mask=None, naive=True):
    do = torch.randn(q.shape, dtype=q.dtype)

    def wrap(f):
        if not backward:
            return lambda: f()
        return lambda: f().backward(do)

    out = {
        "ours": wrap(lambda: flash_attention(q, k, v, causal=causal, mask=mask)),
        "sdpa": wrap(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, attn_mask=mask)),
    }
    if naive:
        out["naive"] = wrap(lambda: attention_reference(q, k, v, causal=causal, mask=mask))
    return out


def _available_bytes() -> int:
    text = open("/proc/meminfo").read()
    return int(re.search(r"MemAvailable:\s+(\d+)", text).group(1)) * 1024


def dense(quick: bool) -> list[dict]:
    Ns = [512, 1024] if quick else [1024, 2048, 4096, 8192]
    repeats = {512: 5, 1024: 5, 2048: 5, 4096: 3, 8192: 2}
    B, H, D = 1, 8, 64
    rows = []
    for N in Ns:
        for causal in (False, True):
            for backward in (False, True):
                q, k, v = _qkv(B, H, N, D, grad=backward)
                # naive holds ~3 (forward) or ~6 (with autograd) N^2 fp32 score tensors per head, and
                # at N = 8192 it would take ~1 min per configuration: it is timed up to N = 4096.
                need = (6 if backward else 3) * B * H * N * N * 4
                naive = need < 0.4 * _available_bytes() and N <= 4096
                t = interleaved_times(_methods(q, k, v, causal, backward, naive=naive), repeats[N],
                                warmup=0 if N >= 8192 else 1)
                flops = 4 * B * H * N * N * D * (3.5 if backward else 1.0) * (0.5 if causal else 1.0)
                rows.append(dict(N=N, causal=causal, pass_="fwd+bwd" if backward else "fwd",
                                 seconds=t, gflops={m: flops / s / 1e9 for m, s in t.items()},
                                 ratio_vs_sdpa=t["sdpa"] / t["ours"],
                                 naive_skipped=None if naive else f"not timed (~{need / 2**30:.0f} GiB, N > 4096)"))
                console.print(f"  dense N={N} causal={causal} {'fwd+bwd' if backward else 'fwd'}: "
                              f"ours/SDPA speed {t['sdpa'] / t['ours']:.2f}")
    return rows


def _block_sparse_mask(N, bq, bk, density, seed):
    """Block layout with `density` of its (bq, bk) blocks visible (and each query block sees one)."""
    g = torch.Generator().manual_seed(seed)
    nr, nc = N // bq, N // bk
    layout = torch.rand(nr, nc, generator=g) < density
    layout[torch.arange(nr), (torch.arange(nr) * nc) // nr] = True  # a diagonal, so no row is empty
    return layout.repeat_interleave(bq, 0).repeat_interleave(bk, 1), float(layout.float().mean())


def sparse(quick: bool) -> list[dict]:
    N = 1024 if quick else 4096
    B, H, D = 1, 8, 64
    rows = []
    for name, (bq, bk, density) in {"128x256 blocks": (128, 256, 0.035),
                                    "64x64 blocks": (64, 64, 0.08)}.items():
        mask, frac = _block_sparse_mask(N, bq, bk, density, seed=1)
        for backward in (False, True):
            q, k, v = _qkv(B, H, N, D, grad=backward)
            spec = check_inputs(q, k, v, mask=mask)
            t = interleaved_times(_methods(q, k, v, False, backward, mask=mask, naive=False), 3 if not quick else 2)
            tm = plan_tiles(spec)
            rows.append(dict(layout=name, N=N, pass_="fwd+bwd" if backward else "fwd", visible_blocks=frac,
                             computed_tiles=tm.visible_fraction, tiles=[tm.block_q, tm.block_k], seconds=t,
                             ratio_vs_sdpa=t["sdpa"] / t["ours"]))
            console.print(f"  sparse {name} {'fwd+bwd' if backward else 'fwd'}: visible {frac:.1%}, "
                          f"ours/SDPA speed {t['sdpa'] / t['ours']:.2f}")
    return rows


def memory(quick: bool) -> list[dict]:
    Ns = [1024, 2048, 4096] if quick else [1024, 2048, 4096, 8192, 16384]
    rows = []
    for N in Ns:
        row = {"N": N, "extra_bytes": {}}
        for method in ("ours", "sdpa", "naive"):
            if method != "naive" or 3 * N * N * 4 < 0.4 * _available_bytes():
                row["extra_bytes"][method] = peak_forward_bytes(method, N, readings=1 if quick else 3)
        n = row["extra_bytes"].get("naive")
        row["ours_over_naive"] = row["extra_bytes"]["ours"] / n if n else None
        rows.append(row)
        console.print(f"  memory N={N}: "
                      + ", ".join(f"{m} {b / 2**20:.1f} MiB" for m, b in row["extra_bytes"].items()))
    return rows


def bf16_and_decode(quick: bool) -> list[dict]:
    rows = []
    N = 1024 if quick else 2048
    for backward in (False, True):
        # naive bf16 on this CPU takes ~15 s (forward) and ~35 s (forward+backward) per run at N=4096
        q, k, v = _qkv(1, 8, N, 64, dtype=torch.bfloat16, grad=backward)
        t = interleaved_times(_methods(q, k, v, True, backward, naive=not backward), 2 if quick else 3)
        rows.append(dict(case=f"bf16 causal N={N}", pass_="fwd+bwd" if backward else "fwd", seconds=t,
                         ratio_vs_sdpa=t["sdpa"] / t["ours"]))
    Sk = 4096 if quick else 16384
    q, k, v = _qkv(1, 8, Sk, 64, Sq=1)
    t = interleaved_times(_methods(q, k, v, False, False), 5 if quick else 10)
    rows.append(dict(case=f"decode Sq=1 Sk={Sk} fp32", pass_="fwd", seconds=t, ratio_vs_sdpa=t["sdpa"] / t["ours"]))
    for r in rows:
        console.print(f"  {r['case']} {r['pass_']}: ours/SDPA speed {r['ratio_vs_sdpa']:.2f}")
    return rows


def _print(dense_rows, sparse_rows, mem_rows, other_rows):
    t = Table(title="dense fp32 attention, B=1 H=8 D=64: GFLOP/s (nominal FLOPs)")
    for c in ("N", "causal", "pass", "ours", "SDPA", "naive", "ours/SDPA speed"):
        t.add_column(c)
    for r in dense_rows:
        g = r["gflops"]
        t.add_row(str(r["N"]), str(r["causal"]), r["pass_"], f"{g['ours']:.1f}", f"{g['sdpa']:.1f}",
                  f"{g['naive']:.1f}" if "naive" in g else "skipped", f"{r['ratio_vs_sdpa']:.2f}")
    console.print(t)
    t = Table(title="sparse bool masks (same mask to both), seconds")
    for c in ("layout", "N", "pass", "visible blocks", "our tiles", "computed", "ours s", "SDPA s", "ours/SDPA"):
        t.add_column(c)
    for r in sparse_rows:
        t.add_row(r["layout"], str(r["N"]), r["pass_"], f"{r['visible_blocks']:.1%}", "x".join(map(str, r["tiles"])),
                  f"{r['computed_tiles']:.1%}",
                  f"{r['seconds']['ours']:.4f}", f"{r['seconds']['sdpa']:.4f}", f"{r['ratio_vs_sdpa']:.2f}")
    console.print(t)
    t = Table(title="peak extra memory, forward, B=1 H=1 D=64 fp32 (MiB)")
    for c in ("N", "ours", "SDPA", "naive", "ours / naive"):
        t.add_column(c)
    for r in mem_rows:
        e = r["extra_bytes"]
        t.add_row(str(r["N"]), f"{e['ours'] / 2**20:.1f}", f"{e['sdpa'] / 2**20:.1f}",
                  f"{e['naive'] / 2**20:.1f}" if "naive" in e else "skipped",
                  f"{r['ours_over_naive']:.2%}" if r["ours_over_naive"] is not None else "-")
    console.print(t)
    t = Table(title="bf16 and decode, seconds")
    for c in ("case", "pass", "ours", "SDPA", "naive", "ours/SDPA speed"):
        t.add_column(c)
    for r in other_rows:
        s = r["seconds"]
        t.add_row(r["case"], r["pass_"], f"{s['ours']:.4f}", f"{s['sdpa']:.4f}",
                  f"{s['naive']:.4f}" if "naive" in s else "-", f"{r['ratio_vs_sdpa']:.2f}")
    console.print(t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    dense_rows = dense(args.quick)
    sparse_rows = sparse(args.quick)
    mem_rows = memory(args.quick)
    other_rows = bf16_and_decode(args.quick)
    _print(dense_rows, sparse_rows, mem_rows, other_rows)

    def pick(N, causal, pass_):
        return next((r["ratio_vs_sdpa"] for r in dense_rows
                     if (r["N"], r["causal"], r["pass_"]) == (N, causal, pass_)), None)

    N_t = 1024 if args.quick else 4096
    big = mem_rows[-1]
    targets = {
        f"forward >= 0.8x SDPA at N={N_t} (non-causal)": (pick(N_t, False, "fwd"), 0.8),
        f"forward >= 0.8x SDPA at N={N_t} (causal)": (pick(N_t, True, "fwd"), 0.8),
        "forward+backward >= 0.6x SDPA (worst N, non-causal)":
            (min(r["ratio_vs_sdpa"] for r in dense_rows if r["pass_"] == "fwd+bwd" and not r["causal"]), 0.6),
        "forward+backward >= 0.6x SDPA (worst N, causal)":
            (min(r["ratio_vs_sdpa"] for r in dense_rows if r["pass_"] == "fwd+bwd" and r["causal"]), 0.6),
        "sparse (~90% of blocks empty) forward >= 2x SDPA (worst layout)":
            (min(r["ratio_vs_sdpa"] for r in sparse_rows if r["pass_"] == "fwd"), 2.0),
        f"memory: ours <= 5% of naive's extra at N={big['N']}":
            (big["ours_over_naive"], 0.05),
    }
    console.print("[bold]targets[/bold]")
    result = {}
    for name, (value, bound) in targets.items():
        ok = value is not None and (value <= bound if name.startswith("memory") else value >= bound)
        result[name] = {"value": value, "bound": bound, "met": ok}
        console.print(f"  {'MET ' if ok else 'MISS'} {name}: {value if value is None else round(value, 4)}")
    path = write_result("attention", {
        "quick": args.quick, "dense": dense_rows, "sparse": sparse_rows, "memory": mem_rows,
        "bf16_and_decode": other_rows, "targets": result,
        "flops": "4*B*H*N^2*D forward, x3.5 forward+backward, x0.5 causal (nominal, same for every method)",
    }, args.out)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
