"""Float formats from their bits, against torch.finfo, torch's casts and references/fundamentals.md (b)."""
import math

import pytest
import torch

from deepnotes.amp import FORMATS, decode, decoded_value, encode, float_info, representations, round_to
from deepnotes.amp.formats import _LAYOUTS

ALL = list(_LAYOUTS)  # the four of note 11, plus fp8 e5m2 / e4m3fn
_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


pytestmark = pytest.mark.usefixtures("one_thread")


def bits_of(x):
    return x.view(_INT[x.element_size()])


# --- the format table ----------------------------------------------------------------

# references/fundamentals.md (b): bits s/e/m, min normal, min subnormal, max, eps (as printed there).
TABLE = {
    torch.float16: ((1, 5, 10), 6.1035e-5, 5.96e-8, 65504, 9.765625e-4),
    torch.bfloat16: ((1, 8, 7), 1.1755e-38, 9.18e-41, 3.3895e38, 0.0078125),
    torch.float32: ((1, 8, 23), 1.1755e-38, 1.4e-45, 3.4028e38, 1.1920929e-7),
    # 1.7977e308 as printed overflows a Python float; 1.7976e308 is within the rel tolerance.
    torch.float64: ((1, 11, 52), 2.2251e-308, 4.94e-324, 1.7976e308, 2.220446e-16),
}


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_float_info_equals_torch_finfo(dtype):
    info, fi = float_info(dtype), torch.finfo(dtype)
    assert info.bits == fi.bits
    assert info.max == fi.max
    assert info.min_normal == fi.tiny == fi.smallest_normal
    assert info.eps == fi.eps
    # torch.finfo has no smallest subnormal: ask torch for the number after +0 via the bit pattern 1.
    one_bit = torch.ones((), dtype=_INT[fi.bits // 8]).view(dtype)
    assert info.min_subnormal == float(one_bit.double())
    assert info.sign_bits + info.exponent_bits + info.mantissa_bits == info.bits


@pytest.mark.parametrize("dtype", FORMATS, ids=str)
def test_float_info_matches_the_reference_table(dtype):
    info = float_info(dtype)
    (s, e, m), min_normal, min_sub, mx, eps = TABLE[dtype]
    assert (info.sign_bits, info.exponent_bits, info.mantissa_bits) == (s, e, m)
    # The table prints 3-5 significant digits.
    assert info.min_normal == pytest.approx(min_normal, rel=1e-4)
    assert info.min_subnormal == pytest.approx(min_sub, rel=1e-2)
    assert info.max == pytest.approx(mx, rel=1e-4)
    assert info.eps == pytest.approx(eps, rel=1e-6)


def test_float_info_accepts_names_and_rejects_non_float_formats():
    assert float_info("bf16") == float_info(torch.bfloat16)
    assert float_info("fp16").dtype is torch.float16
    with pytest.raises(ValueError, match="dtype"):
        float_info(torch.int32)
    with pytest.raises(ValueError, match="fp12"):
        float_info("fp12")
    with pytest.raises(TypeError, match="dtype"):
        float_info(16)


# --- decode / encode ------------------------------------------------------------------

@pytest.mark.parametrize("value, dtype, fields", [
    (1.0, torch.float16, (0, 15, 0)),
    (-2.0, torch.float16, (1, 16, 0)),
    (65504.0, torch.float16, (0, 30, 1023)),
    (2.0**-24, torch.float16, (0, 0, 1)),          # the smallest subnormal
    (math.inf, torch.float16, (0, 31, 0)),
    (1.0, torch.bfloat16, (0, 127, 0)),
    (-1.5, torch.float32, (1, 127, 2**22)),
    (-1.5, torch.float64, (1, 1023, 2**51)),
    (-0.0, torch.float64, (1, 0, 0)),
    (2.0**-1074, torch.float64, (0, 0, 1)),
])
def test_decode_known_bit_patterns(value, dtype, fields):
    s, e, m = decode(torch.tensor([value], dtype=dtype))
    assert (int(s), int(e), int(m)) == fields
    assert s.dtype == e.dtype == m.dtype == torch.int64


@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_decode_then_formula_gives_the_value_and_encode_inverts_decode(dtype):
    info = float_info(dtype)
    n = 2**info.bits if info.bits <= 16 else 50_000
    gen = torch.Generator().manual_seed(0)
    if info.bits <= 16:  # every pattern of the format
        raw = torch.arange(n, dtype=torch.int64)
        raw = torch.where(raw >= n // 2, raw - n, raw) if info.bits == 16 else raw
        x = raw.to(_INT[info.bits // 8]).view(dtype)
    else:
        x = torch.randint(-(2**62), 2**62, (n,), generator=gen, dtype=torch.int64)
        x = x.view(torch.float64) if info.bits == 64 else x.to(torch.int32).view(torch.float32)
    s, e, m = decode(x)
    value = decoded_value(s, e, m, dtype)
    want = x.double()
    assert torch.equal(torch.isnan(value), torch.isnan(want))
    finite = ~torch.isnan(want)
    assert torch.equal(value[finite], want[finite])
    assert torch.equal(torch.signbit(value[finite]), torch.signbit(want[finite]))
    assert torch.equal(bits_of(encode(s, e, m, dtype)), bits_of(x))


def test_decode_and_encode_reject_bad_input():
    with pytest.raises(TypeError, match="x"):
        decode([1.0])
    with pytest.raises(ValueError, match="dtype"):
        decode(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="exponent"):
        encode(torch.tensor([0]), torch.tensor([32]), torch.tensor([0]), torch.float16)


# --- rounding -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_round_to_from_the_layout_equals_torchs_cast_on_random_float32(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-(2**31), 2**31 - 1, (100_000,), generator=gen, dtype=torch.int64).to(torch.int32)
    x = x.view(torch.float32)
    specials = torch.tensor([65504, 65519, 65520, -65520, 2.0**-25, 3 * 2.0**-26, 1.5 * 2.0**-24,
                             448, 464, 57344, 61440, 3.4e38, math.inf, -math.inf, math.nan, 0.0, -0.0])
    x = torch.cat([x, specials])
    got, want = round_to(x, dtype), x.to(dtype).double()
    same = (got == want) | (torch.isnan(got) & torch.isnan(want))
    assert bool(same.all()), x[~same][:5]
    assert torch.equal(torch.signbit(got[~torch.isnan(got)]), torch.signbit(want[~torch.isnan(want)]))


def test_fp16_casting_check_1():
    # references (b) check 1, through torch's cast and through the layout.
    cases = [(65519.0, 65504.0), (65520.0, math.inf), (2.0**-25, 0.0), (1.5 * 2.0**-24, 2.0**-23), (1e-8, 0.0)]
    for value, want in cases:
        assert torch.tensor(value).to(torch.float16).item() == want
        assert round_to(value, torch.float16).item() == want
    scaled = torch.tensor(1e-8 * 1024).to(torch.float16).item()
    assert scaled == pytest.approx(1.025e-5, rel=1e-3) and scaled != 0.0
    assert round_to(1e-8 * 1024, "fp16").item() == scaled


def test_representations_shows_what_one_number_becomes_in_each_format():
    rep = representations(65520.0)
    assert rep == {"float16": math.inf, "bfloat16": 65536.0, "float32": 65520.0, "float64": 65520.0}
    assert representations(0.1)["float64"] == 0.1
    assert representations(0.1)["bfloat16"] == torch.tensor(0.1).to(torch.bfloat16).item()


def test_round_to_rounds_once_where_torchs_float64_cast_rounds_twice():
    # 1 + 2^-8 + 2^-30: above the half-ulp of bf16, so one rounding goes up; torch rounds
    # to float32 first (1 + 2^-8, a tie) and then to even (1.0).
    v = 1 + 2.0**-8 + 2.0**-30
    assert round_to(v, torch.bfloat16).item() == 1 + 2.0**-7
    assert torch.tensor(v, dtype=torch.float64).float().to(torch.bfloat16).item() == 1.0


# --- master weights -----------------------------------------------------------------

def test_master_weights_check_2():
    # Ten updates of 1e-4: an fp32 master weight moves to 1.0010002, an fp16 weight stays at 1.0.
    w32, w16 = torch.tensor(1.0), torch.tensor(1.0, dtype=torch.float16)
    for _ in range(10):
        w32 = w32 + torch.tensor(1e-4)
        w16 = w16 + torch.tensor(1e-4, dtype=torch.float16)
    assert abs(w32.item() - 1.0010002) < 1e-7
    assert w16.item() == 1.0


def test_weight_update_ratio_above_2048_is_lost_in_fp16():
    # The fp16 ulp at 1 is 2^-10: updates below half of it (ratio > 2048) vanish, ties go to even.
    assert round_to(1 + 2.0**-12, "fp16").item() == 1.0            # ratio 4096
    assert round_to(1 + 2.0**-11, "fp16").item() == 1.0            # ratio 2048: a tie, to even
    assert round_to(1 + 1.5 * 2.0**-11, "fp16").item() == 1 + 2.0**-10  # ratio 1365: kept
    assert float_info("fp16").eps == 2.0**-10
