"""flash_attention_varlen: packed sequences, equal to flash_attention run per sequence, no padding computed."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import deepnotes.attention.tiles as tiles_mod
from deepnotes.attention import (attention_reference_varlen, blockwise_attention_varlen, flash_attention,
                                 flash_attention_varlen)
from deepnotes.attention.tolerance import flash_rule, max_abs_err

pytestmark = pytest.mark.usefixtures("one_thread")

LENS_Q = [37, 0, 64, 1, 113, 20]
LENS_K = [53, 9, 64, 30, 97, 0]  # Sq != Sk both ways, an empty query and an empty key sequence


def _cu(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)


def _packed(H=6, Hkv=2, D=16, Dv=None, dtype=torch.float32, seed=0, lens_q=LENS_Q, lens_k=LENS_K):
    g = torch.Generator().manual_seed(seed)
    Tq, Tk = sum(lens_q), sum(lens_k)
    q = torch.randn(Tq, H, D, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(Tk, Hkv, D, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(Tk, Hkv, Dv or D, generator=g, dtype=dtype).requires_grad_()
    do = torch.randn(Tq, H, Dv or D, generator=g, dtype=dtype)
    return q, k, v, do, _cu(lens_q), _cu(lens_k), max(lens_q), max(lens_k)


def _run(fn, q, k, v, do, *cu, **kw):
    o, lse = fn(q, k, v, *cu, return_lse=True, **kw)
    return (o, lse, *torch.autograd.grad(o, [q, k, v], do))


KWARGS = [dict(), dict(causal=True), dict(window=(7, 3)), dict(causal=True, softcap=2.0),
          dict(alibi_slopes="h"), dict(alibi_slopes="bh", causal=True, window=(11, 0))]
IDS = ["plain", "causal", "window", "causal-softcap", "alibi-h", "alibi-bh-local"]


def _slopes(kw, B, H):
    kw = dict(kw)
    if kw.get("alibi_slopes") == "h":
        kw["alibi_slopes"] = torch.rand(H, generator=torch.Generator().manual_seed(5))
    elif kw.get("alibi_slopes") == "bh":
        kw["alibi_slopes"] = torch.rand(B, H, generator=torch.Generator().manual_seed(5))
    return kw


@pytest.mark.parametrize("kw", KWARGS, ids=IDS)
def test_equals_flash_attention_per_sequence(kw):
    """O, LSE (H, Tq) and gradients equal flash_attention on each sequence alone (bottom-right per sequence)."""
    q, k, v, do, cu_q, cu_k, mq, mk = _packed()
    kw = _slopes(kw, len(LENS_Q), 6)
    o, lse, dq, dk, dv = _run(flash_attention_varlen, q, k, v, do, cu_q, cu_k, mq, mk, **kw)
    assert o.shape == (sum(LENS_Q), 6, 16) and lse.shape == (6, sum(LENS_Q))
    for b in range(len(LENS_Q)):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        one = dict(kw)
        if "alibi_slopes" in kw and kw["alibi_slopes"].dim() == 2:
            one["alibi_slopes"] = kw["alibi_slopes"][b]

        def heads_first(x):  # (S, H, D) -> (1, H, S, D)
            return x.detach().transpose(0, 1).unsqueeze(0).requires_grad_()

        qb, kb, vb = heads_first(q[q0:q1]), heads_first(k[k0:k1]), heads_first(v[k0:k1])
        ob, lseb = flash_attention(qb, kb, vb, return_lse=True, **one)
        gq, gk, gv = torch.autograd.grad(ob, [qb, kb, vb], do[q0:q1].transpose(0, 1).unsqueeze(0))
        assert max_abs_err(o[q0:q1], ob[0].transpose(0, 1)) <= 1e-6
        assert torch.equal(torch.isinf(lse[:, q0:q1]), torch.isinf(lseb[0]))
        fin = torch.isfinite(lseb[0])
        assert max_abs_err(lse[:, q0:q1][fin], lseb[0][fin]) <= 1e-6
        for ours, alone in ((dq[q0:q1], gq), (dk[k0:k1], gk), (dv[k0:k1], gv)):
            assert max_abs_err(ours, alone[0].transpose(0, 1)) <= 1e-6


@pytest.mark.parametrize("kw", KWARGS + [dict(dropout_p=0.2)], ids=IDS + ["dropout"])
def test_blockwise_equals_reference_float64(kw):
    """Small tiles (many per sequence) against the per-sequence naive path, float64; dropout included."""
    q, k, v, do, *cu = _packed(Hkv=3, D=8, Dv=5, dtype=torch.float64, seed=1)
    kw = _slopes(kw, len(LENS_Q), 6)

    def run(fn):
        gen = torch.Generator().manual_seed(7) if kw.get("dropout_p") else None
        return _run(fn, q, k, v, do, *cu, generator=gen, **kw)

    ours = run(lambda *a, **c: blockwise_attention_varlen(*a, block_q=16, block_k=24, **c))
    ref = run(attention_reference_varlen)
    for a, b in zip(ours, ref):
        fin = torch.isfinite(b)
        assert torch.equal(fin, torch.isfinite(a)) and max_abs_err(a[fin], b[fin]) <= 1e-12


def test_float32_rule_against_the_naive_path():
    q, k, v, do, *cu = _packed(D=59, seed=2)
    kw = dict(causal=True, alibi_slopes=torch.rand(6, generator=torch.Generator().manual_seed(0)) * 0.3)
    o, _, *g = _run(flash_attention_varlen, q, k, v, do, *cu, **kw)
    ob, _, *gb = _run(attention_reference_varlen, q, k, v, do, *cu, **kw)
    q6, k6, v6 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o6, _, *g6 = _run(attention_reference_varlen, q6, k6, v6, do.double(), *cu, **kw)
    assert flash_rule(o, ob, o6).passed
    for a, b, r in zip(g, gb, g6):
        assert flash_rule(a, b, r, factor=3.0).passed


def test_equals_sdpa_on_the_padded_batch():
    """The padded batch with a key-padding mask gives the same rows (what a user would run instead)."""
    lens = [37, 64, 5, 20]
    q, k, v, _, cu, _, S, _ = _packed(H=4, Hkv=4, lens_q=lens, lens_k=lens)
    o = flash_attention_varlen(q, k, v, cu, cu, S, S, causal=True)
    B = len(lens)
    pad = torch.zeros(B, 4, S, 16)
    qp, kp, vp = pad.clone(), pad.clone(), pad.clone()
    for b, n in enumerate(lens):
        s0 = int(cu[b])
        for x, xp in ((q, qp), (k, kp), (v, vp)):
            xp[b, :, :n] = x.detach()[s0:s0 + n].transpose(0, 1)
    valid = torch.arange(S)[None, :] < torch.tensor(lens)[:, None]  # (B, S)
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    mask = causal[None, None] & valid[:, None, None, :]
    mask = mask | ~valid[:, None, :, None]  # padded query rows: anything finite
    ref = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask)
    for b, n in enumerate(lens):
        s0 = int(cu[b])
        assert max_abs_err(o[s0:s0 + n], ref[b, :, :n].transpose(0, 1)) <= 1e-5


def test_no_padding_is_computed_and_sequences_do_not_mix(monkeypatch):
    """Score elements computed = sum_b H Sq_b Sk_b exactly; NaN in one sequence stays in that sequence."""
    computed = []
    real = tiles_mod.Tiles.scores

    def spy(self, qi, kj, *a, **kw):
        S, t = real(self, qi, kj, *a, **kw)
        computed.append(S.numel())
        return S, t

    monkeypatch.setattr(tiles_mod.Tiles, "scores", spy)
    q, k, v, do, cu_q, cu_k, mq, mk = _packed(H=4, Hkv=4)
    with torch.no_grad():
        k[int(cu_k[2]):int(cu_k[3])] = math.nan  # sequence 2's keys
    o = flash_attention_varlen(q, k, v, cu_q, cu_k, mq, mk)
    assert sum(computed) == sum(4 * a * b for a, b in zip(LENS_Q, LENS_K))
    nan_rows = torch.zeros(sum(LENS_Q), dtype=torch.bool)
    nan_rows[int(cu_q[2]):int(cu_q[3])] = True
    assert torch.isnan(o[nan_rows]).all() and torch.isfinite(o[~nan_rows]).all()


def test_dropout_is_reproducible_and_independent_per_sequence():
    lens = [50, 50]
    q, k, v, do, cu, _, S, _ = _packed(H=2, Hkv=2, lens_q=lens, lens_k=lens, seed=3)
    with torch.no_grad():  # two identical sequences: only dropout can tell them apart
        for x in (q, k, v):
            x[50:] = x[:50]

    def run(seed):
        return flash_attention_varlen(q, k, v, cu, cu, S, S, dropout_p=0.3,
                                      generator=torch.Generator().manual_seed(seed))

    a, b = run(0), run(0)
    assert torch.equal(a, b)
    assert not torch.equal(a[:50], a[50:])  # Z drawn at packed coordinates, not per-sequence ones


def test_gradcheck_float64():
    q, k, v, _, cu_q, cu_k, mq, mk = _packed(H=2, Hkv=1, D=3, dtype=torch.float64, lens_q=[3, 0, 4],
                                             lens_k=[5, 2, 2])
    slopes = torch.rand(3, 2, dtype=torch.float64)

    def fn(q, k, v):
        return blockwise_attention_varlen(q, k, v, cu_q, cu_k, mq, mk, causal=True, alibi_slopes=slopes,
                                          softcap=1.3, block_q=2, block_k=2)

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)


def _good():
    q, k, v, _, cu_q, cu_k, mq, mk = _packed(H=4, Hkv=2, D=8, lens_q=[3, 5], lens_k=[4, 6])
    return q.detach(), k.detach(), v.detach(), cu_q, cu_k, mq, mk


@pytest.mark.parametrize("bad, exc, words", [
    (lambda a: a.update(cu_q=a["cu_q"].float()), TypeError, ["cu_seqlens_q", "int32", "float32"]),
    (lambda a: a.update(cu_k=torch.tensor([1, 4, 10], dtype=torch.int32)), ValueError, ["cu_seqlens_k", "start at 0"]),
    (lambda a: a.update(cu_q=torch.tensor([0, 6, 5, 8], dtype=torch.int32)), ValueError,
     ["cu_seqlens_q", "non-decreasing"]),
    (lambda a: a.update(cu_q=torch.tensor([0, 3, 7], dtype=torch.int32)), ValueError,
     ["cu_seqlens_q", "Tq", "8", "7"]),
    (lambda a: a.update(cu_k=torch.tensor([0, 4, 6, 10], dtype=torch.int32), cu_q=torch.tensor([0, 3, 8])),
     ValueError, ["cu_seqlens_q", "cu_seqlens_k", "same length"]),
    (lambda a: a.update(cu_q=torch.tensor([[0, 3, 8]], dtype=torch.int32)), ValueError, ["cu_seqlens_q", "1-D"]),
    (lambda a: a.update(mq=4), ValueError, ["max_seqlen_q", "longest", "5", "4"]),
    (lambda a: a.update(mk=-1), ValueError, ["max_seqlen_k", "-1"]),
    (lambda a: a.update(q=a["q"][None]), ValueError, ["q", "rank 3", "(total_tokens, H, D)"]),
    (lambda a: a.update(k=a["k"][:, :, :4], v=a["v"][:, :, :4]), ValueError, ["head dim"]),
    (lambda a: a.update(q=a["q"][:, :3]), ValueError, ["H=3", "Hkv=2"]),
    (lambda a: a.update(alibi_slopes=torch.rand(3, 4)), ValueError, ["alibi_slopes", "(2, 4)", "(3, 4)"]),
], ids=["cu-dtype", "cu-start", "cu-order", "cu-end", "cu-lengths", "cu-rank", "max-q", "max-k", "q-rank",
        "head-dim", "gqa", "alibi"])
def test_bad_input_names_the_argument(bad, exc, words):
    q, k, v, cu_q, cu_k, mq, mk = _good()
    a = dict(q=q, k=k, v=v, cu_q=cu_q, cu_k=cu_k, mq=mq, mk=mk, alibi_slopes=None)
    bad(a)
    for fn in (flash_attention_varlen, attention_reference_varlen):
        with pytest.raises(exc) as info:
            fn(a["q"], a["k"], a["v"], a["cu_q"], a["cu_k"], a["mq"], a["mk"], alibi_slopes=a["alibi_slopes"])
        for w in words:
            assert w in str(info.value), (w, str(info.value))


def test_parallel_path_equals_inline_and_is_deterministic(monkeypatch):
    """All sequences' tiles go to one worker pool: same result as inline, bitwise on reruns."""
    import deepnotes.attention.blockwise as bw
    import deepnotes.attention.parallel as parallel

    q, k, v, do, *cu = _packed(seed=4)
    kw = dict(causal=True, alibi_slopes=torch.rand(6, generator=torch.Generator().manual_seed(1)), block_q=16,
              block_k=32)

    def run():
        o = blockwise_attention_varlen(q, k, v, *cu, **kw)
        return (o, *torch.autograd.grad(o, [q, k, v], do))

    inline = run()
    monkeypatch.setattr(parallel, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(parallel, "num_workers", lambda: 2)
    monkeypatch.setattr(bw, "num_workers", lambda: 2)
    a, b = run(), run()
    for x, y, z in zip(a, b, inline):
        assert torch.equal(x, y) and max_abs_err(x, z) <= 1e-5
