"""alibi_slopes: flash-attn's ALiBi, computed per tile, with gradients w.r.t. q, k, v."""
from __future__ import annotations

import pytest
import torch

import deepnotes.attention.tiles as tiles_mod
from deepnotes.attention import (attention_reference, blockwise_attention, flash_attention, geometric_slopes)
from deepnotes.attention.alibi import alibi_bias
from deepnotes.attention.tolerance import max_abs_err
from attention_inputs import attention_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(B, H, Hkv, Sq, Sk, D, dtype=torch.float64, seed=0):
    return attention_inputs(B, H, Hkv, Sq, Sk, D, dtype=dtype, seed=seed)


def _fa_bias(slopes, Sq, Sk, causal):
    """flash-attn's tests/test_flash_attn.py attn_bias_from_alibi_slopes, written out: (B, H, Sq, Sk)."""
    s = slopes[:, :, None, None].double()
    if causal:
        return torch.arange(-Sk + 1, 1, dtype=torch.float64) * s
    i, j = torch.arange(Sq)[:, None], torch.arange(Sk)[None, :]
    return -s * (i + Sk - Sq - j).abs().double()


def _run(fn, q, k, v, do, **kw):
    o, lse = fn(q, k, v, return_lse=True, **kw)
    return (o, lse, *torch.autograd.grad(o, [q, k, v], do))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(37, 53), (53, 37), (1, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_flash_attn_definition(shape, causal):
    """Same O and gradients as adding flash-attn's test bias as a mask, in both of its forms."""
    Sq, Sk = shape
    q, k, v, do = _inputs(2, 4, 2, Sq, Sk, 16)
    slopes = torch.rand(2, 4, generator=torch.Generator().manual_seed(1)) * 0.3
    ours = _run(flash_attention, q, k, v, do, causal=causal, alibi_slopes=slopes)
    masked = _run(attention_reference, q, k, v, do, causal=causal, mask=_fa_bias(slopes, Sq, Sk, causal))
    for name, a, b in zip(["o", "lse", "dq", "dk", "dv"], ours, masked):
        if name == "lse" and causal:
            # the causal form slope * (j - Sk + 1) differs from -slope |i + Sk - Sq - j| by a row constant
            shift = slopes.double()[:, :, None] * (Sq - 1 - torch.arange(Sq)).double()
            fin = torch.isfinite(b)
            assert max_abs_err(a[fin], (b + shift)[fin]) <= 1e-10
            continue
        fin = torch.isfinite(b)
        assert max_abs_err(a[fin], b[fin]) <= 1e-10, name


@pytest.mark.parametrize("kw", [dict(), dict(causal=True), dict(window=(5, 2)), dict(softcap=1.5, window=(-1, 3)),
                                dict(causal=True, mask="bool"), dict(mask="additive")],
                         ids=["plain", "causal", "window", "softcap-right", "causal-bool", "additive"])
@pytest.mark.parametrize("slopes_shape", ["h", "bh"])
@pytest.mark.parametrize("Hkv", [4, 2, 1])
def test_blockwise_equals_reference(kw, slopes_shape, Hkv):
    """The per-tile bias (small tiles: many tiles and diagonal offsets) equals the dense one, float64."""
    kw = dict(kw)
    Sq, Sk = 45, 61
    q, k, v, do = _inputs(2, 4, Hkv, Sq, Sk, 8, seed=Hkv)
    g = torch.Generator().manual_seed(2)
    kw["alibi_slopes"] = torch.rand(4 if slopes_shape == "h" else (2, 4), generator=g, dtype=torch.float64)
    if kw.get("mask") == "bool":
        kw["mask"] = torch.rand(2, 1, Sq, Sk, generator=g) > 0.3
    elif kw.get("mask") == "additive":
        kw["mask"] = torch.randn(Sq, Sk, generator=g, dtype=torch.float64)
    ref = _run(attention_reference, q, k, v, do, **kw)
    ours = _run(lambda *a, **c: blockwise_attention(*a, block_q=8, block_k=16, **c), q, k, v, do, **kw)
    for a, b in zip(ours, ref):
        fin = torch.isfinite(b)
        assert torch.equal(fin, torch.isfinite(a)) and max_abs_err(a[fin], b[fin]) <= 1e-12


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 1, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 1, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    slopes = torch.rand(2, 2, generator=g, dtype=torch.float64)

    def fn(q, k, v):
        return blockwise_attention(q, k, v, alibi_slopes=slopes, causal=True, window=(4, 0), block_q=2, block_k=3)

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)


def test_bias_is_computed_per_tile(monkeypatch):
    """O(N) memory: the only ALiBi tensors the kernel makes are tile-sized distance tiles."""
    made = []
    real = tiles_mod.distance

    def spy(rows, cols, offset, dtype):
        out = real(rows, cols, offset, dtype)
        made.append(out.shape)
        return out

    monkeypatch.setattr(tiles_mod, "distance", spy)
    q, k, v, do = _inputs(1, 2, 2, 300, 700, 8, dtype=torch.float32)
    o = blockwise_attention(q, k, v, alibi_slopes=torch.rand(2), block_q=64, block_k=128)
    torch.autograd.grad(o, [q, k, v], do)
    assert made and all(r <= 64 and c <= 128 for r, c in made)
    # tiles with the same diagonal offset share one distance tile: fewer than the tiles visited
    assert len(made) < (300 // 64 + 1) * (700 // 128 + 1)


def test_slopes_receive_no_gradient_and_half_precision_runs():
    q, k, v, do = _inputs(1, 4, 4, 33, 47, 16, dtype=torch.bfloat16)
    slopes = geometric_slopes(4)
    o = flash_attention(q, k, v, causal=True, alibi_slopes=slopes)
    assert o.dtype == torch.bfloat16
    ref = attention_reference(*(x.detach().double() for x in (q, k, v)), causal=True, alibi_slopes=slopes)
    assert max_abs_err(o, ref) <= 2e-2
    with pytest.raises(ValueError, match="alibi_slopes must not require grad"):
        flash_attention(q, k, v, alibi_slopes=slopes.clone().requires_grad_())


def test_geometric_slopes_are_the_papers():
    assert torch.allclose(geometric_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s6 = geometric_slopes(6).tolist()  # 4 from 2^(-8/4 h), then every other one of the 8-head set
    assert s6[:4] == pytest.approx([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8])
    assert s6[4:] == pytest.approx([2.0 ** -1, 2.0 ** -3])


def test_reference_bias_formula():
    slopes = torch.tensor([[0.5, 0.25]])
    b = alibi_bias(slopes, 2, 5, torch.float32)  # bottom-right: query i sits at key i + 3
    assert b[0, 0].tolist() == [[-1.5, -1.0, -0.5, 0.0, -0.5], [-2.0, -1.5, -1.0, -0.5, 0.0]]
    assert torch.equal(b[0, 1], b[0, 0] / 2)


@pytest.mark.parametrize("fn", [flash_attention, attention_reference])
@pytest.mark.parametrize("bad, exc, words", [
    (torch.rand(3), ValueError, ["alibi_slopes", "(4,)", "(2, 4)", "(3,)"]),
    (torch.rand(3, 4), ValueError, ["alibi_slopes", "(3, 4)"]),
    (torch.rand(2, 4, 1), ValueError, ["alibi_slopes", "(2, 4, 1)"]),
    (torch.ones(4, dtype=torch.int64), TypeError, ["alibi_slopes", "int64"]),
    ([0.1] * 4, TypeError, ["alibi_slopes", "list"]),
])
def test_bad_slopes_name_the_argument(fn, bad, exc, words):
    q, k = torch.zeros(2, 4, 5, 8), torch.zeros(2, 2, 7, 8)
    with pytest.raises(exc) as info:
        fn(q, k, k, alibi_slopes=bad)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
