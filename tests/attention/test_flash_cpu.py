"""The CPU blockwise kernel against the float64 reference and torch SDPA.

Tolerances follow flash-attn's rule (deepnotes.attention.tolerance): error vs a
float64 reference <= 2x (outputs) / 3x (gradients) the error of the same naive
math in the working dtype, + 1e-5. The sweep is flash-attn's: head dims
{32, 59, 64, 111, 128}, (Sq, Sk) pairs and their swaps, B=2, H=6, Hkv in {6, 2, 1},
causal or not; the heaviest pair (1023, 1024) runs for one head dim in float32
(see docs/notes/06-flash-attention.md, "What is tested").
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

import deepnotes.attention.parallel as parallel
from deepnotes.attention import attention_reference, blockwise_attention, flash_attention
from deepnotes.attention.tolerance import GRAD_FACTOR, flash_rule, max_abs_err



pytestmark = pytest.mark.usefixtures("one_thread")


SHAPES = [(1, 239), (3, 799), (113, 203), (127, 513), (128, 217)]
SHAPES = SHAPES + [(b, a) for a, b in SHAPES]
HEAD_DIMS = [32, 59, 64, 111, 128]


def _inputs(B, H, Hkv, Sq, Sk, D, dtype=torch.float32, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq, D, generator=g)
    k = torch.randn(B, Hkv, Sk, D, generator=g)
    v = torch.randn(B, Hkv, Sk, D, generator=g)
    do = torch.randn(B, H, Sq, D, generator=g)
    return [x.to(dtype).requires_grad_(requires_grad) for x in (q, k, v)] + [do.to(dtype)]


def _fwd_bwd(fn, q, k, v, do, **kw):
    o = fn(q, k, v, **kw)
    grads = torch.autograd.grad(o, [q, k, v], do)
    return o, grads


def _as64(*xs):
    return [x.detach().double().requires_grad_(x.requires_grad) for x in xs]


def _check_rule(q, k, v, do, fn, out_factor=2.0, grad_factor=GRAD_FACTOR, **kw):
    """ours vs float64 reference, with the naive computation in q's dtype as the baseline."""
    o, g = _fwd_bwd(fn, q, k, v, do, **kw)
    ob, gb = _fwd_bwd(attention_reference, q, k, v, do, **kw)
    q64, k64, v64 = _as64(q, k, v)
    o64, g64 = _fwd_bwd(attention_reference, q64, k64, v64, do.double(), **kw)
    assert torch.isfinite(o).all()
    rule = flash_rule(o, ob, o64, factor=out_factor)
    assert rule.passed, f"output: {rule}"
    for name, a, b, r in zip("qkv", g, gb, g64):
        rule = flash_rule(a, b, r, factor=grad_factor)
        assert rule.passed, f"d{name}: {rule}"
    return o


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Hkv", [6, 2, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_sweep_matches_reference(D, shape, Hkv, causal):
    Sq, Sk = shape
    q, k, v, do = _inputs(2, 6, Hkv, Sq, Sk, D, seed=D + Sq)
    # Small tiles so that every shape crosses tile boundaries (and short queries take the decode path).
    fn = lambda *a, **kw: blockwise_attention(*a, block_q=64, block_k=96, **kw)  # noqa: E731
    _check_rule(q, k, v, do, fn, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1023, 1024), (1024, 1023)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_large_shape_default_tiles(shape, causal):
    q, k, v, do = _inputs(2, 6, 2, *shape, 64, seed=1)
    _check_rule(q, k, v, do, flash_attention, causal=causal)


@pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs")  # torch's, for Sq > Sk
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(113, 203), (203, 113), (1, 239), (128, 128)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_equals_sdpa(shape, causal):
    """<= 1e-5 vs torch's CPU SDPA; bottom-right causal via causal_lower_right, GQA via enable_gqa."""
    Sq, Sk = shape
    q, k, v, do = _inputs(2, 6, 2, Sq, Sk, 64, requires_grad=False)
    o = flash_attention(q, k, v, causal=causal)
    attn_mask = causal_lower_right(Sq, Sk) if causal else None
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=True)
    # SDPA's lower-right bias leaves rows that see no key undefined; compare the rows that see one.
    rows = torch.arange(Sq) + (Sk - Sq) >= 0 if causal else torch.ones(Sq, dtype=torch.bool)
    assert max_abs_err(o[:, :, rows], ref[:, :, rows]) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_half_precision_rule(dtype, causal):
    q, k, v, do = _inputs(2, 6, 2, 113, 203, 64, dtype=dtype, seed=3)
    o = _check_rule(q, k, v, do, flash_attention, causal=causal)
    assert o.dtype == dtype
    _, lse = flash_attention(q, k, v, causal=causal, return_lse=True)
    assert lse.dtype == torch.float32


def test_larger_inputs_gradients():
    """flash-attn's stress: q x5 and k, v x3 at <= 5x + 1e-3 (d = 59, (113, 203))."""
    q, k, v, do = _inputs(2, 6, 2, 113, 203, 59, seed=4, requires_grad=False)
    q, k, v = [(x * s).requires_grad_() for x, s in ((q, 5.0), (k, 3.0), (v, 3.0))]
    o, g = _fwd_bwd(flash_attention, q, k, v, do, causal=True)
    ob, gb = _fwd_bwd(attention_reference, q, k, v, do, causal=True)
    o64, g64 = _fwd_bwd(attention_reference, *_as64(q, k, v), do.double(), causal=True)
    assert flash_rule(o, ob, o64, factor=5.0, atol=1e-3).passed
    for a, b, r in zip(g, gb, g64):
        assert flash_rule(a, b, r, factor=5.0, atol=1e-3).passed


def test_decode_long_cache_and_lse():
    """Sq = 1 against 20000 keys: <= 3x + 1e-5, LSE to 1e-5."""
    q, k, v, do = _inputs(1, 4, 2, 1, 20000, 64, seed=5, requires_grad=False)
    o, lse = flash_attention(q, k, v, return_lse=True)
    ob = attention_reference(q, k, v)
    o64, lse64 = attention_reference(q.double(), k.double(), v.double(), return_lse=True)
    assert flash_rule(o, ob, o64, factor=3.0).passed
    assert max_abs_err(lse, lse64) <= 1e-5


@pytest.mark.parametrize("blocks", [(1, 1), (7, 13), (64, 64), (100, 1000), (4096, 4096)])
def test_block_size_does_not_change_the_result(blocks):
    q, k, v, _ = _inputs(1, 4, 2, 97, 129, 32, dtype=torch.float64, seed=6, requires_grad=False)
    mask = torch.rand(1, 4, 97, 129, generator=torch.Generator().manual_seed(0)) > 0.3
    ref, lse_ref = attention_reference(q, k, v, causal=True, mask=mask, return_lse=True)
    o, lse = blockwise_attention(q, k, v, causal=True, mask=mask, return_lse=True, block_q=blocks[0],
                                 block_k=blocks[1])
    assert max_abs_err(o, ref) <= 1e-12
    finite = torch.isfinite(lse_ref)
    assert torch.equal(finite, torch.isfinite(lse)) and max_abs_err(lse[finite], lse_ref[finite]) <= 1e-12


def test_parallel_path_equals_inline_and_is_deterministic(monkeypatch):
    """The worker-pool path (forced on small inputs) gives the inline path's result, bitwise on reruns."""
    q, k, v, do = _inputs(2, 4, 2, 300, 700, 32, seed=7)
    kw = dict(causal=True, block_q=64, block_k=128)
    inline = _fwd_bwd(lambda *a, **c: blockwise_attention(*a, **c), q, k, v, do, **kw)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(parallel, "num_workers", lambda: 2)
    import deepnotes.attention.blockwise as bw

    monkeypatch.setattr(bw, "num_workers", lambda: 2)
    runs = [_fwd_bwd(lambda *a, **c: blockwise_attention(*a, **c), q, k, v, do, **kw) for _ in range(2)]
    for a, b in zip([runs[0][0], *runs[0][1]], [runs[1][0], *runs[1][1]]):
        assert torch.equal(a, b)
    for a, b in zip([inline[0], *inline[1]], [runs[0][0], *runs[0][1]]):
        assert max_abs_err(a, b) <= 1e-5
    # decode-shaped input takes the split-KV path across workers
    q1, k1, v1, _ = _inputs(1, 2, 1, 1, 5000, 32, seed=8, requires_grad=False)
    o = blockwise_attention(q1, k1, v1, block_q=16, block_k=64)
    assert max_abs_err(o, attention_reference(q1.double(), k1.double(), v1.double())) <= 1e-6


def test_inputs_are_not_modified_and_noncontiguous_inputs_work():
    q, k, v, do = _inputs(2, 4, 4, 64, 80, 32, seed=9, requires_grad=False)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, S, D) view of a (B, S, H, D) buffer
    before = [x.clone() for x in (qt, k, v)]
    o = flash_attention(qt, k, v, causal=True)
    assert all(torch.equal(a, b) for a, b in zip(before, (qt, k, v)))
    assert max_abs_err(o, attention_reference(q.double(), k.double(), v.double(), causal=True)) <= 1e-5


def test_empty_lengths():
    q, k, v, _ = _inputs(1, 2, 2, 4, 0, 8, requires_grad=False)
    o, lse = flash_attention(q, k, v, return_lse=True)
    assert o.shape == (1, 2, 4, 8) and torch.equal(o, torch.zeros_like(o)) and torch.isinf(lse).all()
    q0 = torch.zeros(1, 2, 0, 8)
    assert flash_attention(q0, k[:, :, :0].new_zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8)).shape == (1, 2, 0, 8)


def test_scale_argument():
    q, k, v, do = _inputs(1, 2, 2, 33, 47, 16, seed=10)
    _check_rule(q, k, v, do, flash_attention, scale=0.37)
    ref = attention_reference(q.double(), k.double(), v.double(), scale=0.37)
    alt = attention_reference(q.double() * 0.37 * math.sqrt(16), k.double(), v.double())
    assert max_abs_err(ref, alt) <= 1e-12


@pytest.mark.parametrize("tile_bytes", [1, 4 * 3 * 32 * 48 * 8, 1 << 30],
                         ids=["one-kv-head-per-step", "two-batches-per-step", "everything-per-step"])
def test_head_chunks_equal_the_reference(monkeypatch, tile_bytes):
    """Tile steps over chunks of (batch, kv head) pairs: head ranges of one batch, several whole
    batches, or all of them, with masks broadcast over either dim, ALiBi per (b, h), GQA and dropout."""
    import deepnotes.attention.tiles as tiles_mod

    monkeypatch.setattr(tiles_mod, "TILE_BYTES", tile_bytes)
    g = torch.Generator().manual_seed(11)
    B, H, Hkv, Sq, Sk, D = 3, 6, 2, 70, 90, 8
    q, k, v, do = _inputs(B, H, Hkv, Sq, Sk, D, dtype=torch.float64, seed=12)
    bias = torch.randn(1, H, Sq, 1, generator=g, dtype=torch.float64).requires_grad_()
    kw = dict(causal=True, alibi_slopes=torch.rand(B, H, generator=g, dtype=torch.float64))

    def run(fn, mask, **extra):
        o = fn(q, k, v, mask=mask, generator=torch.Generator().manual_seed(5), **kw, **extra)
        return (o, *torch.autograd.grad(o, [q, k, v] + ([bias] if mask is bias else []), do))

    keep = torch.rand(B, 1, Sq, Sk, generator=g) > 0.2
    for mask, extra in ((keep, dict(dropout_p=0.25)), (bias, {})):
        ours = run(lambda *a, **c: blockwise_attention(*a, block_q=32, block_k=48, **c), mask, **extra)
        ref = run(attention_reference, mask, **extra)
        for a, b in zip(ours, ref):
            assert max_abs_err(a, b) <= 1e-12
