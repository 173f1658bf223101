"""Training-step time, fp32 vs bf16 autocast, for a small transformer LM on this CPU.

Both precisions train the same model from the same weights: the project's
GPT-style ``deepnotes.lm.tiny.TinyLM`` (pre-norm blocks, causal SDPA, GELU
feed-forward of width 4d, tied embeddings), cross-entropy on random tokens,
our AdamW. bf16 runs the forward under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (linear/matmul/SDPA in bf16,
losses and norms in fp32) with fp32 master weights, as the fit loop does; no
loss scaler is needed for bf16. Steps are interleaved fp32, bf16, fp32, ... so
that load from other processes hits both alike; each time is the median over
rounds.

Whether bf16 is faster depends on the CPU: with AVX-512 BF16 or AMX the
matmuls run natively; with AVX2 only, oneDNN converts to fp32 and the casts
cost extra. A bare matmul is timed too, to separate the kernel from the rest
of the step (casts, elementwise ops, optimizer).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from deepnotes.bench import median_time, write_result
from deepnotes.lm.tiny import TinyLM
from deepnotes.optim import AdamW


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    present = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            present |= set(line.split(":", 1)[1].split()) & set(wanted)
    return sorted(present)


def make_step(model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor, bf16: bool):
    opt = AdamW(model.parameters(), lr=1e-4)
    losses: list[float] = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        opt.step()
        losses.append(loss.item())

    return step, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        cfg = dict(vocab=512, d_model=128, n_heads=4, n_layers=2, batch=4, seq=64, rounds=3)
    else:
        cfg = dict(vocab=1024, d_model=256, n_heads=4, n_layers=4, batch=8, seq=128, rounds=5)

    model32 = TinyLM(cfg["vocab"], cfg["d_model"], cfg["n_layers"], cfg["n_heads"], block=cfg["seq"],
                     activation="gelu", generator=torch.Generator().manual_seed(0))
    model16 = copy.deepcopy(model32)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), generator=gen)
    targets = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), generator=gen)
    n_params = sum(p.numel() for p in model32.parameters())

    steps = {"fp32": make_step(model32, ids, targets, bf16=False),
             "bf16 autocast": make_step(model16, ids, targets, bf16=True)}
    for step, _ in steps.values():
        step()  # warm-up: optimizer state, oneDNN primitive caches
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(cfg["rounds"]):
        for name, (step, _) in steps.items():
            times[name].append(median_time(step, repeats=1, warmup=0))
    seconds = {name: statistics.median(ts) for name, ts in times.items()}

    # The kernel alone: one (B·S, D) x (D, 4D) matmul, the shape of the MLP's first layer.
    M, K, N = cfg["batch"] * cfg["seq"], cfg["d_model"], 4 * cfg["d_model"]
    a32, b32 = torch.randn(M, K, generator=gen), torch.randn(K, N, generator=gen)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    mm = {"fp32": median_time(lambda: a32 @ b32, repeats=5, warmup=1),
          "bf16": median_time(lambda: a16 @ b16, repeats=5, warmup=1)}

    final_loss = {name: losses[-1] for name, (_, losses) in steps.items()}
    ratio = seconds["fp32"] / seconds["bf16 autocast"]
    mm_ratio = mm["fp32"] / mm["bf16"]
    flags = cpu_flags()

    table = Table(title=f"training step, {cfg['n_layers']} blocks d={cfg['d_model']}, batch {cfg['batch']}x"
                        f"{cfg['seq']} tokens, {n_params / 1e6:.2f}M params, {torch.get_num_threads()} threads")
    for col in ("precision", "step median ms", f"matmul {M}x{K}x{N} ms", "loss after the run"):
        table.add_column(col)
    table.add_row("fp32", f"{seconds['fp32'] * 1e3:.1f}", f"{mm['fp32'] * 1e3:.3f}", f"{final_loss['fp32']:.4f}")
    table.add_row("bf16 autocast", f"{seconds['bf16 autocast'] * 1e3:.1f}", f"{mm['bf16'] * 1e3:.3f}",
                  f"{final_loss['bf16 autocast']:.4f}")
    Console().print(table)
    print(f"CPU flags: {', '.join(flags) or 'unknown'}; torch CPU capability: "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(f"speed ratio (fp32 time / bf16 time, >1 means bf16 faster): training step {ratio:.3f}, "
          f"matmul {mm_ratio:.3f}")
    path = write_result("amp", {
        "config": cfg, "params": n_params, "cpu_flags": flags,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "seconds": {"step": seconds, "matmul": mm},
        "final_loss": final_loss,
        "speed_ratio_fp32_over_bf16": ratio,
        "matmul_speed_ratio_fp32_over_bf16": mm_ratio,
        "bf16_faster": ratio > 1.0,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
