"""float32 gradients within flash-attn's rule under large additive biases, ALiBi and softcap.

The rule (deepnotes.attention.tolerance, flash-attn tests/test_flash_attn.py):
max|ours - ref64| <= 2x (output) / 3x (dq, dk, dv) max|naive fp32 - ref64| + 1e-5.

The sweep draws its cases from this space (hypothesis, derandomized, so the
same cases run every time; small shapes keep it fast):

    head dim     {32, 59, 64, 111, 128, 160, 256}
    (Sq, Sk)     flash-attn's odd pairs at small scale, each way round, incl. 1 and 3 keys/queries
    heads        H = 6 with Hkv in {6, 2, 1} (MHA, GQA, MQA)
    structure    none, causal, a sliding window (left, right), a left-only window
    bias         none; ALiBi slopes (H,) or (B, H) drawn as flash-attn (rand * 0.3); the same
                 ALiBi materialised as an additive mask, -slope |i + Sk - Sq - j| (flash-attn's
                 non-causal form), or slope * (j - Sk + 1) (its causal form: |bias| up to
                 0.3 Sk on every key of a row); an N(0, 30^2) additive bias
    softcap      {0, 50 (flash-attn's), 5 (one that bites, with q x 4)}
    padding      none, or a key-padding mask (bool, or additive -inf) hiding each batch's tail
    tiles        the automatic ones, or 64 x 96 so that every shape crosses tile boundaries

Before the fix (blockwise.py's docstring) a share of these failed on dk/dq,
up to 29x the naive error for rows with one visible key. The worst
err / bound over the sweep is printed at the end of the module (pytest -s).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepnotes.attention import attention_reference, blockwise_attention, flash_attention
from deepnotes.attention.tolerance import GRAD_FACTOR, OUTPUT_FACTOR, flash_rule

pytestmark = pytest.mark.usefixtures("one_thread")

WORST: dict[str, tuple[float, str]] = {}


@pytest.fixture(scope="module", autouse=True)
def report_worst():
    yield
    if WORST:
        print("\nworst err/bound under flash-attn's rule (float32):",
              ", ".join(f"{k} {v:.3f} [{case}]" for k, (v, case) in WORST.items()))


def _grads(fn, leaves, do, **kw):
    o = fn(*leaves, **kw)
    return o, torch.autograd.grad(o, leaves, do)


def check_case(D, Sq, Sk, Hkv, structure, bias, softcap, padding, small_tiles, seed, B=2, H=6):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq, D, generator=g) * (4.0 if softcap == 5.0 else 1.0)
    k = torch.randn(B, Hkv, Sk, D, generator=g)
    v = torch.randn(B, Hkv, Sk, D, generator=g)
    do = torch.randn(B, H, Sq, D, generator=g)
    kw: dict = {"softcap": softcap}
    if structure == "causal":
        kw["causal"] = True
    elif structure == "window":
        left, right = torch.randint(0, max(2, Sk), (1,), generator=g), torch.randint(0, 40, (1,), generator=g)
        kw["window"] = (int(left), int(right))
    elif structure == "left":
        kw["window"] = (int(torch.randint(0, max(2, Sk), (1,), generator=g)), -1)
    slopes = torch.rand(B, H, generator=g) * 0.3
    mask = None
    if bias == "alibi_h":
        kw["alibi_slopes"] = slopes[0]
    elif bias == "alibi_bh":
        kw["alibi_slopes"] = slopes
    elif bias == "alibi_dense":  # flash-attn's test bias for non-causal ALiBi, as a dense additive mask
        rel = (torch.arange(Sq)[:, None] + Sk - Sq - torch.arange(Sk)[None, :]).abs().float()
        mask = -slopes[:, :, None, None] * rel
    elif bias == "alibi_fa_causal_form":  # flash-attn's test bias for causal ALiBi, as a dense additive mask
        mask = (torch.arange(-Sk + 1, 1, dtype=torch.float32) * slopes[:, :, None, None]).expand(B, H, Sq, Sk)
    elif bias == "gauss30":
        mask = torch.randn(B, 1, Sq, Sk, generator=g) * 30
    if padding != "none":  # key padding: batch b keeps its first Sk - pad_b keys
        keep = torch.arange(Sk)[None, :] < torch.tensor([Sk, max(1, Sk - Sk // 3)])[:, None]  # (B, Sk)
        keep = keep[:, None, None, :]
        if padding == "bool" and mask is None:
            mask = keep
        else:
            pad = torch.where(keep, 0.0, -math.inf)
            mask = pad if mask is None else mask + pad
    if mask is not None:
        kw["mask"] = mask
    fn = (lambda *a, **c: blockwise_attention(*a, block_q=64, block_k=96, **c)) if small_tiles else flash_attention
    leaves = [x.requires_grad_() for x in (q, k, v)]
    o, gr = _grads(fn, leaves, do, **kw)
    ob, gb = _grads(attention_reference, leaves, do, **kw)
    leaves64 = [x.detach().double().requires_grad_() for x in leaves]
    kw64 = dict(kw)
    if mask is not None and mask.is_floating_point():
        kw64["mask"] = mask.double()
    o64, g64 = _grads(attention_reference, leaves64, do.double(), **kw64)
    rules = {"out": flash_rule(o, ob, o64, OUTPUT_FACTOR)}
    rules.update({f"d{n}": flash_rule(a, b, r, GRAD_FACTOR) for n, a, b, r in zip("qkv", gr, gb, g64)})
    case = f"D={D} {Sq}x{Sk} Hkv={Hkv} {structure} {bias} softcap={softcap} pad={padding} small={small_tiles}"
    for name, r in rules.items():
        ratio = r.err / r.bound
        if ratio > WORST.get(name, (-1.0, ""))[0]:
            WORST[name] = (ratio, case)
        if r.baseline_err > 0 and r.ratio > WORST.get(name + " err/naive_err", (-1.0, ""))[0]:
            WORST[name + " err/naive_err"] = (r.ratio, case)
    bad = {n: str(r) for n, r in rules.items() if not r.passed}
    assert not bad, f"{case}: {bad}"


PAIRS = [(113, 203), (128, 217), (108, 256), (1, 239), (3, 127), (127, 513), (64, 64)]
PAIRS = PAIRS + [(b, a) for a, b in PAIRS if a != b]


@settings(max_examples=120, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(D=st.sampled_from([32, 59, 64, 111, 128, 160, 256]), shape=st.sampled_from(PAIRS),
       Hkv=st.sampled_from([6, 2, 1]), structure=st.sampled_from(["none", "causal", "window", "left"]),
       bias=st.sampled_from(["alibi_h", "alibi_bh", "alibi_dense", "alibi_fa_causal_form", "gauss30", "none"]),
       softcap=st.sampled_from([0.0, 50.0, 5.0]), padding=st.sampled_from(["none", "bool", "additive"]),
       small_tiles=st.booleans(), seed=st.integers(0, 2**16))
def test_float32_rule_sweep(D, shape, Hkv, structure, bias, softcap, padding, small_tiles, seed):
    check_case(D, *shape, Hkv, structure, bias, softcap, padding, small_tiles, seed)


# The cases that exceeded the rule before the fix (issue 12), kept as fixed regressions.
@pytest.mark.parametrize("case", [
    # one visible key per row: the naive dK is exactly 0, ours was 1e-5 off (LSE round trip e <-> 2)
    dict(D=128, Sq=239, Sk=1, Hkv=1, structure="none", bias="alibi_dense", softcap=50.0),
    dict(D=64, Sq=239, Sk=1, Hkv=6, structure="none", bias="alibi_bh", softcap=50.0),
    # |LSE| in the hundreds: P from exp(S - LSE) off by a common factor per row (now E = 2^(S - m), dO / l)
    dict(D=32, Sq=799, Sk=3, Hkv=1, structure="none", bias="alibi_dense", softcap=0.0),
    dict(D=64, Sq=512, Sk=3, Hkv=6, structure="causal", bias="alibi_fa_causal_form", softcap=0.0),
    dict(D=111, Sq=799, Sk=3, Hkv=1, structure="none", bias="alibi_h", softcap=50.0),
    dict(D=256, Sq=512, Sk=40, Hkv=2, structure="causal", bias="gauss30", softcap=0.0),
], ids=lambda c: f"{c['D']}-{c['Sq']}x{c['Sk']}-{c['bias']}-{c['softcap']}")
@pytest.mark.parametrize("small_tiles", [False, True])
def test_float32_rule_regressions(case, small_tiles):
    check_case(**case, padding="none", small_tiles=small_tiles, seed=case["D"] + case["Sq"])
