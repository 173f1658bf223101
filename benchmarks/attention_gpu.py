"""One-command GPU check of the Triton kernel: correctness, then TFLOP/s against torch SDPA.

    python benchmarks/attention_gpu.py [--quick] [--out PATH]

Needs a CUDA device; without one it says so and exits 0. It was written on a
machine without a GPU and has not been run there: the kernel itself is tested
on the CPU by Triton's interpreter (tests/attention/test_flash_triton_interpret.py).

1. correctness: flash_attention on CUDA tensors (which dispatches to Triton)
   vs a float64 reference with flash-attn's rule (output <= 2x, gradients <= 3x
   the naive error in the same dtype, + 1e-5), fp16 and bf16, causal/non-causal,
   Sq != Sk, GQA, odd head dims, ALiBi slopes, and flash_attention_varlen on
   packed sequences; also a check that the dispatch took Triton.
2. launch settings: a small sweep of (block_m, block_n, num_warps) at one shape.
3. speed: B=4, H=32, D in {64, 128}, N from 1k to 16k, causal or not, forward and
   forward+backward; TFLOP/s = 4*B*H*N^2*D (x3.5 with backward, /2 causal) for
   ours and SDPA (which picks flash/cuDNN/efficient kernels itself), medians by
   triton.testing.do_bench.
4. peak memory of ours, SDPA and naive at N up to 16k (torch.cuda.max_memory_allocated).
"""
from __future__ import annotations

import argparse
import sys
import traceback

import torch
import torch.nn.functional as F


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("attention_gpu: no CUDA device here; this check needs an NVIDIA GPU (nothing was run).")
        return 0

    import triton.testing

    from deepnotes.attention import (attention_reference, attention_reference_varlen, flash_attention,
                                     flash_attention_varlen, uses_triton)
    from deepnotes.attention.tolerance import flash_rule
    from deepnotes.attention.triton_kernel import triton_attention
    from deepnotes.bench import write_result

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton {triton.__version__}")
    payload: dict = {"device": torch.cuda.get_device_name(dev), "correctness": [], "sweep": [], "speed": [],
                     "memory": []}
    ok_all = True

    # ---- 1. correctness -------------------------------------------------------------------------
    cases = [
        dict(dtype=torch.float16, B=2, H=8, Hkv=8, Sq=1024, Sk=1024, D=64, causal=True),
        dict(dtype=torch.bfloat16, B=2, H=8, Hkv=2, Sq=1023, Sk=1024, D=128, causal=True),
        dict(dtype=torch.float16, B=2, H=6, Hkv=1, Sq=113, Sk=203, D=59, causal=False),
        dict(dtype=torch.bfloat16, B=2, H=6, Hkv=2, Sq=799, Sk=3, D=32, causal=True),
        dict(dtype=torch.float16, B=1, H=4, Hkv=2, Sq=1, Sk=20000, D=128, causal=True),
        dict(dtype=torch.float16, B=2, H=4, Hkv=4, Sq=512, Sk=512, D=96, causal=False, window=(64, 16)),
        dict(dtype=torch.bfloat16, B=2, H=4, Hkv=2, Sq=300, Sk=500, D=64, causal=True, softcap=30.0),
        dict(dtype=torch.float32, B=1, H=4, Hkv=4, Sq=257, Sk=129, D=64, causal=True),
        # ALiBi (flash-attn's draw: rand * 0.3), per head and per (batch, head)
        dict(dtype=torch.float16, B=2, H=8, Hkv=2, Sq=1023, Sk=1024, D=128, causal=True, alibi="bh"),
        dict(dtype=torch.float32, B=2, H=6, Hkv=1, Sq=799, Sk=3, D=59, causal=False, alibi="h"),
        dict(dtype=torch.bfloat16, B=2, H=4, Hkv=4, Sq=512, Sk=700, D=64, window=(100, 20), softcap=30.0, alibi="h"),
        # packed variable-length sequences (flash_attention_varlen), lens = (query lengths, key lengths)
        dict(dtype=torch.float16, B=4, H=8, Hkv=2, Sq=0, Sk=0, D=128, causal=True, alibi="bh",
             lens=([1000, 1, 333, 0], [1000, 517, 200, 64])),
        dict(dtype=torch.float32, B=3, H=4, Hkv=4, Sq=0, Sk=0, D=64, window=(64, 0),
             lens=([257, 129, 64], [129, 257, 0])),
    ]
    for c in cases:
        c = dict(c)
        dtype, B, H, Hkv, Sq, Sk, D = (c.pop(x) for x in ("dtype", "B", "H", "Hkv", "Sq", "Sk", "D"))
        lens, alibi = c.pop("lens", None), c.pop("alibi", None)
        name = f"{dtype} B{B} H{H}/{Hkv} {f'varlen {lens}' if lens else f'{Sq}x{Sk}'} d{D} alibi={alibi} {c}"
        g = torch.Generator(device=dev).manual_seed(0)
        if alibi is not None:
            c["alibi_slopes"] = torch.rand((H,) if alibi == "h" else (B, H), device=dev, generator=g) * 0.3
        if lens is not None:  # packed (T, H, D) tensors and their cu_seqlens
            cu = [torch.tensor([0] + torch.tensor(x).cumsum(0).tolist(), dtype=torch.int32, device=dev)
                  for x in lens]
            shapes = [(sum(lens[0]), H, D), (sum(lens[1]), Hkv, D), (sum(lens[1]), Hkv, D), (sum(lens[0]), H, D)]
            extra = (cu[0], cu[1], max(lens[0]), max(lens[1]))
            fast = lambda *a, **kw: flash_attention_varlen(*a, *extra, **kw)  # noqa: E731
            naive = lambda *a, **kw: attention_reference_varlen(*a, *extra, **kw)  # noqa: E731
        else:
            shapes = [(B, H, Sq, D), (B, Hkv, Sk, D), (B, Hkv, Sk, D), (B, H, Sq, D)]
            fast, naive = flash_attention, attention_reference
        q, k, v, do = [torch.randn(s_, device=dev, generator=g).to(dtype) for s_ in shapes]
        q, k, v = [x.requires_grad_() for x in (q, k, v)]
        try:
            if lens is None:
                assert uses_triton(q, k, v), "dispatch did not choose the Triton kernel"
            o = fast(q, k, v, **c)
            grads = torch.autograd.grad(o, [q, k, v], do)
            ob = naive(q, k, v, **c)
            gb = torch.autograd.grad(ob, [q, k, v], do)
            q6, k6, v6 = [x.detach().double().requires_grad_() for x in (q, k, v)]
            o6 = naive(q6, k6, v6, **c)
            g6 = torch.autograd.grad(o6, [q6, k6, v6], do.double())
            rules = [flash_rule(o, ob, o6)] + [flash_rule(a, b, r, factor=3.0) for a, b, r in zip(grads, gb, g6)]
            passed = all(r.passed for r in rules) and bool(torch.isfinite(o).all())
            detail = [str(r) for r in rules]
        except Exception as e:  # noqa: BLE001 - one bad case must not hide the others
            passed, detail = False, [f"{type(e).__name__}: {e}", traceback.format_exc(limit=3)]
        ok_all &= passed
        payload["correctness"].append({"case": name, "passed": passed, "detail": detail})
        print(f"  {'PASS' if passed else 'FAIL'} {name}: {detail[0]}")

    # ---- 2. launch-setting sweep ----------------------------------------------------------------
    B, H, N = 4, 32, 4096
    for D in (64, 128):
        q, k, v = [torch.randn(B, H, N, D, device=dev, dtype=torch.float16) for _ in range(3)]
        for bm, bn, nw in [(64, 64, 4), (128, 64, 4), (128, 64, 8), (128, 128, 8)]:
            try:
                ms = triton.testing.do_bench(lambda: triton_attention(q, k, v, causal=True, block_m=bm, block_n=bn,
                                                                      num_warps=nw))
                tf = 2 * B * H * N * N * D / (ms * 1e-3) / 1e12
            except Exception as e:  # noqa: BLE001 - e.g. shared memory exhausted for a setting
                ms, tf = float("nan"), float("nan")
                print(f"  sweep d{D} {bm}x{bn} w{nw}: {type(e).__name__}")
            payload["sweep"].append({"D": D, "block_m": bm, "block_n": bn, "num_warps": nw, "ms": ms, "tflops": tf})
            print(f"  sweep fwd causal N={N} d{D} block {bm}x{bn} warps {nw}: {tf:.1f} TFLOP/s")
        del q, k, v

    # ---- 3. speed vs SDPA -----------------------------------------------------------------------
    Ns = [1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384]
    for dtype in (torch.float16, torch.bfloat16):
        for D in (64, 128):
            for N in Ns:
                for causal in (False, True):
                    for backward in (False, True):
                        q, k, v = [torch.randn(B, H, N, D, device=dev, dtype=dtype, requires_grad=backward)
                                   for _ in range(3)]
                        do = torch.randn_like(q)

                        def run(f):
                            return (lambda: f().backward(do)) if backward else f

                        fl = 4 * B * H * N * N * D * (3.5 if backward else 1.0) * (0.5 if causal else 1.0)
                        row = {"dtype": str(dtype), "D": D, "N": N, "causal": causal,
                               "pass": "fwd+bwd" if backward else "fwd"}
                        for name, f in (("ours", lambda: flash_attention(q, k, v, causal=causal)),
                                        ("sdpa", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))):
                            try:
                                ms = triton.testing.do_bench(run(f), warmup=10, rep=50)
                                row[name] = fl / (ms * 1e-3) / 1e12
                            except Exception as e:  # noqa: BLE001
                                row[name] = float("nan")
                                row[name + "_error"] = f"{type(e).__name__}: {e}"
                        row["ratio_vs_sdpa"] = row["ours"] / row["sdpa"]
                        payload["speed"].append(row)
                        print(f"  {dtype} d{D} N={N} causal={causal} {row['pass']}: ours {row['ours']:.1f} "
                              f"TFLOP/s, SDPA {row['sdpa']:.1f} (ratio {row['ratio_vs_sdpa']:.2f})")
                        del q, k, v, do

    # ---- 4. memory ------------------------------------------------------------------------------
    for N in ([4096] if args.quick else [2048, 4096, 8192, 16384]):
        q, k, v = [torch.randn(1, 8, N, 64, device=dev, dtype=torch.float16) for _ in range(3)]
        row = {"N": N}
        for name, f in (("ours", lambda: flash_attention(q, k, v)),
                        ("sdpa", lambda: F.scaled_dot_product_attention(q, k, v)),
                        ("naive", lambda: attention_reference(q, k, v))):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            try:
                out = f()
                torch.cuda.synchronize()
                row[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
                del out
            except torch.cuda.OutOfMemoryError:
                row[name] = float("nan")
        payload["memory"].append(row)
        print(f"  memory N={N}: " + ", ".join(f"{n} {row[n]:.0f} MiB" for n in ("ours", "sdpa", "naive")))
        del q, k, v

    path = write_result("attention_gpu", payload, args.out)
    print(f"correctness: {'all passed' if ok_all else 'FAILURES'}; wrote {path}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
