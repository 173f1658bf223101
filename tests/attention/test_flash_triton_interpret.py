"""The Triton kernel, run on CPU tensors by Triton's interpreter (TRITON_INTERPRET=1).

The interpreter must be switched on before triton is first imported, and other
test files in the same pytest process may import triton without it, so every
kernel call here runs in one child process started with the variable set. The
child prints one JSON line per case; the tests below assert on them.

What the interpreter cannot show: speed, and the bf16 tl.dot as a GPU runs it
(triton 3.9's interpreter multiplies bf16 bit patterns, so the kernel casts
bf16 dot operands to fp32 while interpreting; see triton_kernel.py). The GPU
check is benchmarks/attention_gpu.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from deepnotes.attention import flash_attention, uses_triton

CHILD = textwrap.dedent(r'''
    import json, os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    torch.set_num_threads(1)
    from deepnotes.attention import attention_reference, attention_reference_varlen
    from deepnotes.attention.triton_kernel import triton_attention, triton_attention_varlen
    from deepnotes.attention.tolerance import flash_rule, max_abs_err

    DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    def run(name, dtype, B, H, Hkv, Sq, Sk, D, transpose=False, alibi=None, lens=None, **kw):
        dtype = DT[dtype]
        g = torch.Generator().manual_seed(len(name))
        if alibi is not None:  # flash-attn's draw: rand * 0.3, per head or per (batch, head)
            kw["alibi_slopes"] = torch.rand((H,) if alibi == "h" else (B, H), generator=g) * 0.3
        if lens is not None:  # packed (T, H, D) sequences: lens = (lengths of q, lengths of k)
            cu = [torch.tensor([0] + torch.tensor(x).cumsum(0).tolist(), dtype=torch.int32) for x in lens]
            shapes = [(sum(lens[0]), H, D), (sum(lens[1]), Hkv, D), (sum(lens[1]), Hkv, D), (sum(lens[0]), H, D)]
            extra = (cu[0], cu[1], max(lens[0]), max(lens[1]))
            fast = lambda *a, **c: triton_attention_varlen(*a, *extra, block_m=16, block_n=16, **c)  # noqa: E731
            ref = lambda *a, **c: attention_reference_varlen(*a, *extra, **c)  # noqa: E731
        else:
            shapes = [(B, H, Sq, D), (B, Hkv, Sk, D), (B, Hkv, Sk, D), (B, H, Sq, D)]
            fast = lambda *a, **c: triton_attention(*a, block_m=16, block_n=16, **c)  # noqa: E731
            ref = attention_reference
        q, k, v, do = [torch.randn(s_, generator=g) for s_ in shapes]
        do = do.to(dtype)
        if transpose:  # (B, S, H, D) storage seen as (B, H, S, D), as transformers passes it
            q, k, v = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]
        q, k, v = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        o, lse = fast(q, k, v, return_lse=True, **kw)
        grads = torch.autograd.grad(o, [q, k, v], do)
        again = torch.autograd.grad(fast(q, k, v, **kw), [q, k, v], do)
        ob = ref(q, k, v, **kw)
        gb = torch.autograd.grad(ob, [q, k, v], do)
        q6, k6, v6 = [x.detach().double().requires_grad_() for x in (q, k, v)]
        o6, lse6 = ref(q6, k6, v6, return_lse=True, **kw)
        g6 = torch.autograd.grad(o6, [q6, k6, v6], do.double())
        rules = [flash_rule(o, ob, o6)] + [flash_rule(a, b, c, factor=3.0) for a, b, c in zip(grads, gb, g6)]
        finite = torch.isfinite(lse6)
        empty = ~finite
        print(json.dumps({
            "name": name,
            "passed": [r.passed for r in rules],
            "detail": [str(r) for r in rules],
            "lse_err": max_abs_err(lse[finite], lse6[finite]),
            "lse_inf_where_empty": bool(torch.equal(torch.isinf(lse) & (lse > 0), empty)),
            "empty_rows_zero": bool((o.detach().movedim(0, 1) if lens else o.detach())[empty].eq(0).all()),
            "finite": bool(torch.isfinite(o).all() and all(torch.isfinite(x).all() for x in grads)),
            "deterministic": all(torch.equal(a, b) for a, b in zip(grads, again)),
            "dtype_kept": o.dtype == dtype and all(x.dtype == dtype for x in grads),
            "n_empty": int(empty.sum()),
        }), flush=True)

    for case in json.loads(sys.argv[1]):
        run(**case)
''')

CASES = [
    dict(name="fp32-plain-d24", dtype="fp32", B=1, H=2, Hkv=2, Sq=37, Sk=45, D=24),
    dict(name="fp32-causal-gqa-d59", dtype="fp32", B=2, H=4, Hkv=1, Sq=37, Sk=45, D=59, causal=True),
    dict(name="fp32-causal-sq>sk", dtype="fp32", B=1, H=2, Hkv=1, Sq=45, Sk=29, D=32, causal=True),
    dict(name="fp32-decode", dtype="fp32", B=1, H=4, Hkv=2, Sq=1, Sk=67, D=32, causal=True),
    dict(name="fp32-window", dtype="fp32", B=1, H=2, Hkv=2, Sq=40, Sk=52, D=32, window=(7, 3)),
    dict(name="fp32-left-only-softcap", dtype="fp32", B=1, H=2, Hkv=1, Sq=33, Sk=33, D=16, window=(5, -1),
         softcap=1.5),
    dict(name="fp32-scale-d128", dtype="fp32", B=1, H=1, Hkv=1, Sq=20, Sk=24, D=128, scale=0.3, causal=True),
    dict(name="fp32-strided", dtype="fp32", B=2, H=2, Hkv=2, Sq=21, Sk=21, D=32, causal=True, transpose=True),
    dict(name="fp16-causal-gqa", dtype="fp16", B=1, H=4, Hkv=2, Sq=45, Sk=37, D=64, causal=True),
    dict(name="fp16-plain-d111", dtype="fp16", B=1, H=2, Hkv=1, Sq=19, Sk=35, D=111),
    dict(name="bf16-window-softcap", dtype="bf16", B=1, H=2, Hkv=1, Sq=33, Sk=50, D=64, window=(5, 3), softcap=2.0),
    dict(name="bf16-causal", dtype="bf16", B=1, H=2, Hkv=2, Sq=30, Sk=30, D=32, causal=True),
    # ALiBi: per head and per (batch, head); Sq >> Sk puts |bias| (and |LSE|) in the tens
    dict(name="fp32-alibi-causal-gqa", dtype="fp32", B=2, H=4, Hkv=2, Sq=29, Sk=41, D=32, causal=True, alibi="bh"),
    dict(name="fp32-alibi-window-softcap", dtype="fp32", B=1, H=2, Hkv=1, Sq=33, Sk=25, D=16, window=(5, 3),
         softcap=1.5, alibi="h"),
    dict(name="fp32-alibi-sq>>sk", dtype="fp32", B=1, H=2, Hkv=1, Sq=160, Sk=3, D=16, alibi="h"),
    dict(name="bf16-alibi-causal", dtype="bf16", B=1, H=2, Hkv=2, Sq=30, Sk=30, D=32, causal=True, alibi="h"),
    # varlen: packed sequences incl. an empty query and an empty key sequence, Sq != Sk both ways
    dict(name="fp32-varlen-causal-alibi-gqa", dtype="fp32", B=4, H=4, Hkv=2, Sq=0, Sk=0, D=16, causal=True,
         alibi="bh", lens=([5, 0, 19, 33], [9, 4, 19, 12])),
    dict(name="fp32-varlen-window-softcap", dtype="fp32", B=3, H=2, Hkv=1, Sq=0, Sk=0, D=32, window=(6, 2),
         softcap=2.0, lens=([17, 30, 9], [30, 17, 0])),
    dict(name="fp16-varlen-causal", dtype="fp16", B=2, H=2, Hkv=2, Sq=0, Sk=0, D=64, causal=True,
         lens=([20, 13], [20, 29])),
]


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[r["name"]] = r
    return out


@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_triton_kernel_matches_reference(results, name):
    r = results[name]
    assert all(r["passed"]), r["detail"]  # output 2x, gradients 3x the naive error (+1e-5)
    assert r["lse_err"] <= 1e-5
    assert r["lse_inf_where_empty"] and r["empty_rows_zero"] and r["finite"]
    assert r["deterministic"], "backward has no atomics: reruns are bitwise equal"
    assert r["dtype_kept"]


def test_bottom_right_causal_leaves_rows_empty(results):
    assert results["fp32-causal-sq>sk"]["n_empty"] == 2 * (45 - 29)  # H=2 heads, first Sq-Sk rows see no key
    assert results["fp32-window"]["n_empty"] == 0
    # per sequence: (33 - 12) rows of sequence 3 see no key, on each of 4 heads
    assert results["fp32-varlen-causal-alibi-gqa"]["n_empty"] == 4 * (33 - 12)
    # sequence 1 (Sq 30, Sk 17, window (6, 2)): rows i < 11 see no key; sequence 2 has no keys at all
    assert results["fp32-varlen-window-softcap"]["n_empty"] == 2 * (11 + 9)


def test_cpu_tensors_never_dispatch_to_triton():
    q = torch.randn(1, 2, 8, 16)
    assert not uses_triton(q, q, q)
    assert flash_attention(q, q, q).device.type == "cpu"


def test_supports_lists_the_kernels_features():
    from deepnotes.attention.triton_kernel import supports  # plain import: no kernel runs here

    q = torch.zeros(1, 2, 8, 64, dtype=torch.float16)
    assert supports(q, q, q)
    assert not supports(q, q, q, mask=torch.ones(8, 8, dtype=torch.bool))  # masks -> blockwise kernel
    assert not supports(q, q, q, dropout_p=0.1)  # dropout -> blockwise kernel
    assert not supports(q.double(), q.double(), q.double())  # float64 -> blockwise kernel
    big = torch.zeros(1, 2, 8, 256, dtype=torch.float16)
    assert not supports(big, big, big)
