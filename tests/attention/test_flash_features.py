"""Masks, windows, softcap, dropout, empty rows, gradcheck, tile skipping and bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deepnotes.attention import (EMPTY, FULL, PARTIAL, ScaledDotProductAttention, attention_reference,
                                 blockwise_attention, check_inputs, dense_visible, flash_attention, tile_map)
from deepnotes.attention.dropout import keep_mask, keep_tile
from deepnotes.attention.tolerance import flash_rule, max_abs_err
from attention_inputs import attention_inputs


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(B, H, Hkv, Sq, Sk, D, dtype=torch.float32, seed=0):
    return attention_inputs(B, H, Hkv, Sq, Sk, D, dtype=dtype, seed=seed)


def _grads(fn, tensors, do, **kw):
    o = fn(*tensors[:3], **kw)
    leaves = [t for t in tensors if t.requires_grad]
    return o, torch.autograd.grad(o, leaves, do)


def _rule(fn, q, k, v, do, grad_factor=3.0, out_factor=2.0, extra=(), **kw):
    """flash-attn's rule for the output and every gradient (q, k, v and `extra` leaves like a mask)."""
    o, g = _grads(fn, (q, k, v, *extra), do, **kw)
    ob, gb = _grads(attention_reference, (q, k, v, *extra), do, **kw)
    as64 = [t.detach().double().requires_grad_(t.requires_grad) for t in (q, k, v, *extra)]
    kw64 = dict(kw)
    if "mask" in kw and kw["mask"].is_floating_point():
        kw64["mask"] = as64[3]
    o64, g64 = _grads(attention_reference, as64, do.double(), **kw64)
    rule = flash_rule(o, ob, o64, factor=out_factor)
    assert rule.passed, f"output {rule}"
    for a, b, r in zip(g, gb, g64):
        rule = flash_rule(a, b, r, factor=grad_factor)
        assert rule.passed, f"grad {rule}"


SMALL_TILES = dict(block_q=32, block_k=48)


def _tiled(*a, **kw):
    return blockwise_attention(*a, **SMALL_TILES, **kw)


@pytest.mark.parametrize("window", [(16, 0), (0, 0), (7, 21), (-1, 9), (40, -1)])
@pytest.mark.parametrize("shape", [(113, 203), (203, 113), (127, 127)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_window(window, shape):
    q, k, v, do = _inputs(2, 6, 2, *shape, 64, seed=sum(window) + shape[0])
    _rule(_tiled, q, k, v, do, window=window)


def test_window_matches_sdpa_with_the_same_band():
    q, k, v, _ = _inputs(1, 4, 4, 100, 140, 32)
    Sq, Sk, left, right = 100, 140, 13, 4
    i, j = torch.arange(Sq)[:, None], torch.arange(Sk)[None, :]
    rel = j - (i + Sk - Sq)
    band = (rel >= -left) & (rel <= right)
    o = flash_attention(q, k, v, window=(left, right))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
    assert max_abs_err(o, ref) <= 1e-5


def test_causal_is_bottom_right_as_flash_attn():
    """Sq=2, Sk=5 gives the rows 11110 / 11111 (flash-attn >= 2.1)."""
    spec = check_inputs(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4), causal=True)
    vis = dense_visible(spec, "cpu").int().tolist()
    assert vis == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_shape", [(2, 6, 113, 203), (2, 1, 113, 203), (1, 1, 113, 203), (113, 203),
                                        (2, 1, 1, 203), (203,)])
def test_bool_mask(mask_shape, causal):
    q, k, v, do = _inputs(2, 6, 2, 113, 203, 59, seed=len(mask_shape))
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(1)) > 0.4
    _rule(_tiled, q, k, v, do, mask=mask, causal=causal)
    if not causal:
        mask4 = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # SDPA takes 2-D or 4-D masks
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask4, enable_gqa=True)
        assert max_abs_err(flash_attention(q, k, v, mask=mask), ref) <= 1e-5


@pytest.mark.parametrize("mask_shape", [(2, 6, 113, 203), (1, 6, 113, 203), (2, 1, 113, 203), (113, 1), (203,)])
def test_additive_mask_with_gradient(mask_shape):
    q, k, v, do = _inputs(2, 6, 3, 113, 203, 32, seed=5)
    g = torch.Generator().manual_seed(2)
    bias = torch.randn(mask_shape, generator=g)
    bias = bias.masked_fill(torch.rand(mask_shape, generator=g) > 0.8, -math.inf).requires_grad_()
    _rule(_tiled, q, k, v, do, mask=bias, extra=(bias,), causal=True)


def test_additive_mask_matches_sdpa():
    q, k, v, _ = _inputs(2, 4, 4, 77, 91, 32)
    bias = torch.randn(2, 1, 77, 91)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert max_abs_err(flash_attention(q, k, v, mask=bias), ref) <= 1e-5


@pytest.mark.parametrize("softcap", [50.0, 2.0])
def test_softcap_with_window(softcap):
    """reference section 6.5: random window, softcap 50 (and a cap that bites), <= 2x / 3x."""
    q, k, v, do = _inputs(2, 6, 2, 113, 203, 64, seed=7)
    q = (q.detach() * 4).requires_grad_()  # large scores so that the cap matters
    _rule(_tiled, q, k, v, do, softcap=softcap, window=(37, 11), out_factor=3.0)


def test_softcap_matches_closed_form():
    q, k, v, _ = _inputs(1, 2, 2, 20, 30, 16, dtype=torch.float64)
    cap, scale = 1.5, 0.25
    s = cap * torch.tanh(q @ k.transpose(-1, -2) * scale / cap)
    ref = torch.softmax(s, -1) @ v
    assert max_abs_err(_tiled(q, k, v, softcap=cap, scale=scale), ref) <= 1e-12


# ---- rows that see no key -------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["bool", "additive", "causal_sq_gt_sk", "window"])
def test_fully_masked_rows(case):
    """Output exactly 0, LSE = +inf, no NaN anywhere, finite gradients (0 for those rows)."""
    Sq, Sk = (203, 113) if case == "causal_sq_gt_sk" else (113, 203)
    q, k, v, do = _inputs(2, 6, 2, Sq, Sk, 32, seed=8)
    kw, extra = {}, ()
    empty = torch.zeros(Sq, dtype=torch.bool)
    if case == "bool":
        mask = torch.rand(2, 1, Sq, Sk, generator=torch.Generator().manual_seed(3)) > 0.5
        mask[:, :, 10:50] = False
        kw["mask"], empty[10:50] = mask, True
    elif case == "additive":
        bias = torch.randn(1, 6, Sq, Sk)
        bias[..., 70:90, :] = -math.inf
        bias.requires_grad_()
        kw["mask"], extra, empty[70:90] = bias, (bias,), True
    elif case == "causal_sq_gt_sk":
        kw["causal"], empty[: Sq - Sk] = True, True
    else:
        kw["window"], empty = (0, 0), torch.arange(Sq) + Sk - Sq >= Sk  # diagonal past the last key: none here
        kw["mask"] = torch.ones(Sq, Sk, dtype=torch.bool)
        kw["mask"][:5] = False
        empty[:5] = True
    o, lse = _tiled(q, k, v, return_lse=True, **kw)
    leaves = [q, k, v, *extra]
    grads = torch.autograd.grad(o, leaves, do)
    assert torch.equal(o[:, :, empty], torch.zeros_like(o[:, :, empty]))
    assert torch.isinf(lse[:, :, empty]).all() and (lse[:, :, empty] > 0).all()
    assert torch.isfinite(o).all() and torch.isfinite(lse[:, :, ~empty]).all()
    assert all(torch.isfinite(g_).all() for g_ in grads)
    assert torch.equal(grads[0][:, :, empty], torch.zeros_like(grads[0][:, :, empty]))
    _rule(_tiled, q, k, v, do, extra=extra, **kw)
    # The reference agrees on the convention.
    o_ref, lse_ref = attention_reference(q, k, v, return_lse=True, **kw)
    assert torch.equal(torch.isinf(lse_ref), torch.isinf(lse)) and torch.isfinite(o_ref).all()


def test_all_rows_masked():
    q, k, v, do = _inputs(1, 2, 2, 9, 11, 8)
    o = flash_attention(q, k, v, mask=torch.zeros(9, 11, dtype=torch.bool))
    o.backward(do)
    assert torch.equal(o, torch.zeros_like(o))
    assert all(torch.equal(t.grad, torch.zeros_like(t)) for t in (q, k, v))


# ---- float64 gradcheck ----------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(causal=True), dict(window=(2, 1), softcap=0.7),
                                dict(causal=True, mask="bool"), dict(mask="additive"), dict(dropout_p=0.3)],
                         ids=["plain", "causal", "window-softcap", "causal-bool", "additive", "dropout"])
@pytest.mark.parametrize("Hkv", [2, 1])
def test_gradcheck_float64(kw, Hkv):
    kw = dict(kw)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, Hkv, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, Hkv, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    inputs = [q, k, v]
    if kw.get("mask") == "bool":
        m = torch.rand(2, 6, 7, generator=g) > 0.3
        m[0, 1] = False  # a fully masked row
        kw["mask"] = m
    elif kw.get("mask") == "additive":
        kw.pop("mask")
        inputs.append(torch.randn(1, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True))
    p = kw.pop("dropout_p", 0.0)

    def fn(q, k, v, *bias):
        gen = torch.Generator().manual_seed(11) if p else None
        return blockwise_attention(q, k, v, mask=bias[0] if bias else kw.get("mask"), dropout_p=p, generator=gen,
                                   block_q=2, block_k=3, **{a: b for a, b in kw.items() if a != "mask"})

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


# ---- dropout --------------------------------------------------------------------------------------

def test_dropout_is_reproducible_and_matches_reference():
    q, k, v, do = _inputs(2, 6, 2, 113, 203, 32, seed=9)

    def run(fn, seed):
        o = fn(q, k, v, dropout_p=0.17, generator=torch.Generator().manual_seed(seed))
        return (o, *torch.autograd.grad(o, [q, k, v], do))

    a, b, c = run(_tiled, 0), run(_tiled, 0), run(_tiled, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # same seed: bitwise equal, gradients too
    assert not torch.equal(a[0], c[0])
    ref = run(attention_reference, 0)  # same generator state -> same Z on every path
    for x, y in zip(a, ref):
        assert max_abs_err(x, y) <= 1e-4
    other_tiles = run(lambda *t, **kw: blockwise_attention(*t, block_q=128, block_k=256, **kw), 0)
    assert max_abs_err(other_tiles[0], a[0]) <= 1e-5


@pytest.mark.parametrize("p", [0.1, 0.17, 0.5, 0.9])
def test_dropout_kept_fraction(p):
    z = keep_mask(12345, p, 2, 3, 200, 300)
    assert abs(z.float().mean().item() - (1 - p)) <= 0.01


def test_dropout_tiles_are_slices_of_the_grid():
    full = keep_mask(7, 0.3, 2, 3, 50, 60)
    bh = torch.tensor([1, 4])
    tile = keep_tile(7, 0.3, bh, torch.arange(10, 20), torch.arange(33, 60), 50, 60)
    assert torch.equal(tile, full.view(6, 50, 60)[bh][:, 10:20, 33:60])


def test_dropout_hash_matches_splitmix64_in_python():
    """The int64 tensor arithmetic wraps exactly like 64-bit unsigned integers."""
    M = (1 << 64) - 1

    def splitmix(x):
        z = (x * 0x9E3779B97F4A7C15 + 99) & M
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return (z ^ (z >> 31)) >> 40

    from deepnotes.attention.dropout import _uniform24

    idx = torch.tensor([0, 1, 2, 12345, 2**40 + 17])
    assert _uniform24(idx, 99).tolist() == [splitmix(int(i)) for i in idx]


# ---- tile map: skipped tiles are not computed -------------------------------------------------------

def test_causal_tile_map_counts():
    spec = check_inputs(torch.zeros(1, 1, 1024, 8), torch.zeros(1, 1, 1024, 8), torch.zeros(1, 1, 1024, 8),
                        causal=True)
    tm = tile_map(spec, 128, 128)
    n = 8
    flat = [c for row in tm.cls for c in row]
    assert flat.count(EMPTY) == n * (n - 1) // 2 and flat.count(PARTIAL) == n and flat.count(FULL) == n * (n - 1) // 2


@pytest.mark.parametrize("seed", range(6))
def test_tile_classes_agree_with_dense_visibility(seed):
    g = torch.Generator().manual_seed(seed)
    Sq, Sk = [int(x) for x in torch.randint(1, 120, (2,), generator=g)]
    left, right = [int(x) for x in torch.randint(-1, 30, (2,), generator=g)]
    mask = torch.rand(Sq, Sk, generator=g) > 0.02 if seed % 2 else None
    spec = check_inputs(torch.zeros(1, 1, Sq, 4), torch.zeros(1, 1, Sk, 4), torch.zeros(1, 1, Sk, 4),
                        window=(left, right), causal=bool(seed % 3 == 0), mask=mask)
    vis = dense_visible(spec, "cpu")
    vis = torch.ones(Sq, Sk, dtype=torch.bool) if vis is None else vis.reshape(Sq, Sk)
    bq, bk = 16, 24
    tm = tile_map(spec, bq, bk)
    for i in range(tm.n_r):
        for j in range(tm.n_c):
            t = vis[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            want = FULL if t.all() else (PARTIAL if t.any() else EMPTY)
            assert tm.cls[i][j] == want, (i, j)


def test_empty_tiles_are_never_read():
    """Values behind fully hidden tiles are NaN: a kernel that touched them would return NaN."""
    B, H, S, D, bq, bk = 1, 2, 256, 16, 64, 64
    q, k, v, do = _inputs(B, H, H, S, S, D, seed=10)
    layout = torch.rand(S // bq, S // bk, generator=torch.Generator().manual_seed(4)) > 0.6
    layout[:, 1] = False  # key tile 1 hidden from every query
    layout[:, 0] = True
    mask = layout.repeat_interleave(bq, 0).repeat_interleave(bk, 1)
    v_nan = v.detach().clone()
    v_nan[:, :, bk:2 * bk] = math.nan
    k_nan = k.detach().clone()
    k_nan[:, :, bk:2 * bk] = math.nan
    v_nan.requires_grad_(), k_nan.requires_grad_()
    o = blockwise_attention(q, k_nan, v_nan, mask=mask, block_q=bq, block_k=bk)
    gq, gk, gv = torch.autograd.grad(o, [q, k_nan, v_nan], do)
    ref = attention_reference(q.double(), k.double(), v.double(), mask=mask)
    assert max_abs_err(o, ref) <= 1e-5
    assert torch.isfinite(gq).all() and torch.isfinite(gk).all() and torch.isfinite(gv).all()
    spec = check_inputs(q, k, v, mask=mask)
    assert tile_map(spec, bq, bk).visible_fraction == pytest.approx(layout.float().mean().item())


# ---- bad input ------------------------------------------------------------------------------------

def _qkv(B=2, H=4, Hkv=2, Sq=5, Sk=7, D=8):
    return torch.zeros(B, H, Sq, D), torch.zeros(B, Hkv, Sk, D), torch.zeros(B, Hkv, Sk, D)


@pytest.mark.parametrize("fn", [flash_attention, attention_reference])
@pytest.mark.parametrize("bad, exc, words", [
    (lambda q, k, v: (q[0], k, v, {}), ValueError, ["q", "rank 4", "(4, 5, 8)"]),
    (lambda q, k, v: (q, k[..., :4], v, {}), ValueError, ["head dim", "8", "(2, 2, 7, 4)"]),
    (lambda q, k, v: (q[:, :3], k, v, {}), ValueError, ["H=3", "Hkv=2"]),
    (lambda q, k, v: (q, k, v, {"mask": torch.ones(3, 5, 7, dtype=torch.bool)}), ValueError,
     ["mask", "(2, 4, 5, 7)", "(3, 5, 7)"]),
    (lambda q, k, v: (q, k, v, {"mask": torch.ones(5, 6)}), ValueError, ["mask", "(5, 6)"]),
    (lambda q, k, v: (q, k, v, {"dropout_p": 1.0}), ValueError, ["dropout_p", "[0, 1)", "1.0"]),
    (lambda q, k, v: (q, k, v, {"dropout_p": -0.1}), ValueError, ["dropout_p", "-0.1"]),
    (lambda q, k, v: (q, k, v, {"window": (3,)}), ValueError, ["window", "(3,)"]),
    (lambda q, k, v: (q, k, v, {"window": (-2, 0)}), ValueError, ["window", "-2"]),
    (lambda q, k, v: (q, k, v, {"softcap": -1.0}), ValueError, ["softcap", "-1.0"]),
    (lambda q, k, v: (q, k, v, {"scale": float("nan")}), ValueError, ["scale", "nan"]),
    (lambda q, k, v: (q, k.double(), v, {}), TypeError, ["dtype", "float64"]),
    (lambda q, k, v: (q, k, v, {"mask": torch.ones(5, 7, dtype=torch.int64)}), TypeError, ["mask", "int64"]),
    (lambda q, k, v: (q.long(), k, v, {}), TypeError, ["q", "int64"]),
    (lambda q, k, v: (q.numpy(), k, v, {}), TypeError, ["q", "ndarray"]),
    (lambda q, k, v: (q, k, v[:, :, :6], {}), ValueError, ["v", "(2, 2, 6, 8)"]),
    (lambda q, k, v: (q, k, v, {"generator": 3}), TypeError, ["generator", "int"]),
], ids=lambda x: "" if callable(x) or isinstance(x, (list, type)) else None)
def test_bad_input_names_the_argument(fn, bad, exc, words):
    q, k, v, kw = bad(*_qkv())
    with pytest.raises(exc) as info:
        fn(q, k, v, **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_bad_block_sizes():
    with pytest.raises(ValueError, match="block_q"):
        blockwise_attention(*_qkv(), block_q=0)


# ---- module ---------------------------------------------------------------------------------------

def test_module_wraps_the_function_and_drops_out_only_in_training():
    q, k, v, _ = _inputs(1, 4, 2, 30, 40, 16)
    mod = ScaledDotProductAttention(causal=True, dropout_p=0.5).eval()
    assert torch.equal(mod(q, k, v), flash_attention(q, k, v, causal=True))
    mod.train()
    out = mod(q, k, v, generator=torch.Generator().manual_seed(0))
    ref = flash_attention(q, k, v, causal=True, dropout_p=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, ref)
    assert "causal=True" in repr(mod)


# ---- automatic tile sizes -------------------------------------------------------------------------

def test_pooled_grids_equal_direct_tile_maps():
    from deepnotes.attention.masks import mask_grids, pool_grids

    g = torch.Generator().manual_seed(5)
    for Sq, Sk in [(300, 520), (256, 512), (70, 1000)]:
        layout = torch.rand((Sq + 63) // 64, (Sk + 63) // 64, generator=g) < 0.3
        mask = layout.repeat_interleave(64, 0).repeat_interleave(64, 1)[:Sq, :Sk].clone()
        mask[:, :3] |= torch.rand(Sq, 3, generator=g) > 0.5  # partial tiles too
        spec = check_inputs(torch.zeros(1, 1, Sq, 4), torch.zeros(1, 1, Sk, 4), torch.zeros(1, 1, Sk, 4), mask=mask,
                            causal=Sq == 300)
        base = mask_grids(spec, 64, 64)
        for bq, bk in [(64, 128), (128, 256), (256, 512)]:
            n_r, n_c = -(-Sq // bq), -(-Sk // bk)
            pooled = tile_map(spec, bq, bk, pool_grids(base, bq // 64, bk // 64, n_r, n_c))
            assert pooled.cls == tile_map(spec, bq, bk).cls


def test_automatic_tiles_follow_the_mask_granularity():
    from deepnotes.attention.blockwise import BLOCK_K, BLOCK_Q, plan_tiles

    q = torch.zeros(1, 8, 1024, 16)
    dense = plan_tiles(check_inputs(q, q, q))
    assert (dense.block_q, dense.block_k) == (BLOCK_Q, BLOCK_K)
    layout = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) < 0.1
    layout[torch.arange(16), torch.arange(16)] = True
    fine = layout.repeat_interleave(64, 0).repeat_interleave(64, 1)
    plan = plan_tiles(check_inputs(q, q, q, mask=fine))
    assert (plan.block_q, plan.block_k) == (64, 64)  # the only size at which its empty blocks are tiles
    assert plan.visible_fraction == pytest.approx(layout.float().mean().item())
    qq, kk, vv, _ = _inputs(1, 2, 2, 1024, 1024, 16, seed=12)
    out = flash_attention(qq, kk, vv, mask=fine)
    assert max_abs_err(out, attention_reference(qq.double(), kk.double(), vv.double(), mask=fine)) <= 1e-5


def test_a_mask_made_under_inference_mode_works_and_is_not_cached():
    # inference tensors have no version counter, so their tile plan cannot be keyed; it is made per call
    from deepnotes.attention.tiles import _plan_key

    q, k, v, _ = _inputs(1, 2, 2, 40, 40, 16, seed=13)
    with torch.inference_mode():
        mask = torch.rand(40, 40, generator=torch.Generator().manual_seed(1)) < 0.5
        out = flash_attention(q, k, v, mask=mask)  # raised "Inference tensors do not track version counter"
        assert _plan_key(check_inputs(q, k, v, mask=mask), None, None) is None
    assert _plan_key(check_inputs(q, k, v, mask=mask.clone()), None, None) is not None
    ref = attention_reference(q.double(), k.double(), v.double(), mask=mask)
    assert max_abs_err(out, ref) <= 1e-5
