r"""Binary floating-point formats from their bit layout.

A format with E exponent bits and M mantissa (fraction) bits stores a sign s,
a biased exponent e and a fraction f; with bias b = 2^(E-1) - 1 its value is

    normal     (0 < e < 2^E - 1):  (-1)^s · 2^(e - b) · (1 + f / 2^M)
    subnormal  (e = 0):            (-1)^s · 2^(1 - b) · (f / 2^M)
    e = 2^E - 1:                   ±inf (f = 0) or NaN (f != 0)

so, with nothing but E and M:

    max = (2 - 2^-M) · 2^b,   min_normal = 2^(1 - b),
    min_subnormal = 2^(1 - b - M),   eps = 2^-M  (the gap after 1.0).

fp16 (1/5/10) tops out at 65504 and flushes anything below 2^-24 to zero;
bf16 (1/8/7) keeps fp32's range with 8 bits of precision. float8_e4m3fn is
not IEEE: it has no infinities and only the all-ones pattern is NaN, which
frees the top exponent for numbers (max 448).

``round_to`` is the readable reference for a cast: round to nearest, ties to
even, at the quantum of the target format, overflowing to inf at
max + ulp/2 (e4m3fn saturates at 448, as torch's cast does); a test holds it
equal to ``x.to(dtype)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FloatInfo", "FORMATS", "float_info", "decode", "encode", "decoded_value", "round_to",
           "representations"]

# dtype -> (exponent_bits, mantissa_bits, ieee). ieee=False: no inf, NaN is all ones.
_LAYOUTS: dict[torch.dtype, tuple[int, int, bool]] = {
    torch.float16: (5, 10, True),
    torch.bfloat16: (8, 7, True),
    torch.float32: (8, 23, True),
    torch.float64: (11, 52, True),
}
if hasattr(torch, "float8_e5m2"):
    _LAYOUTS[torch.float8_e5m2] = (5, 2, True)
if hasattr(torch, "float8_e4m3fn"):
    _LAYOUTS[torch.float8_e4m3fn] = (4, 3, False)

_ALIASES = {"fp16": torch.float16, "half": torch.float16, "float16": torch.float16,
            "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
            "fp32": torch.float32, "float": torch.float32, "float32": torch.float32,
            "fp64": torch.float64, "double": torch.float64, "float64": torch.float64,
            "fp8_e5m2": getattr(torch, "float8_e5m2", None), "float8_e5m2": getattr(torch, "float8_e5m2", None),
            "fp8_e4m3": getattr(torch, "float8_e4m3fn", None),
            "float8_e4m3fn": getattr(torch, "float8_e4m3fn", None)}

# The four formats of note 11, narrowest first.
FORMATS: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Integer type of the same width, to reinterpret the bits.
_INT_VIEW = {8: torch.uint8, 16: torch.int16, 32: torch.int32, 64: torch.int64}


@dataclass(frozen=True)
class FloatInfo:
    """A format's layout and the limits that follow from it (compare ``torch.finfo``)."""

    name: str
    dtype: torch.dtype
    bits: int
    sign_bits: int
    exponent_bits: int
    mantissa_bits: int  # stored fraction bits; precision is mantissa_bits + 1
    bias: int
    max: float
    min_normal: float  # torch.finfo(...).tiny / smallest_normal
    min_subnormal: float
    eps: float
    has_inf: bool

    @property
    def precision_bits(self) -> int:
        return self.mantissa_bits + 1

    @property
    def decimal_digits(self) -> float:
        """log10(2^(M+1)): about how many significant decimal digits survive."""
        return self.precision_bits * math.log10(2.0)


def _dtype(dtype: torch.dtype | str, name: str = "dtype") -> torch.dtype:
    if isinstance(dtype, str):
        resolved = _ALIASES.get(dtype.lower())
        if resolved is None or resolved not in _LAYOUTS:
            raise ValueError(f"{name} must be one of {sorted(k for k, v in _ALIASES.items() if v is not None)} "
                             f"or a torch floating dtype, got {dtype!r}")
        return resolved
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype or a format name, got {type(dtype).__name__}")
    if dtype not in _LAYOUTS:
        raise ValueError(f"{name} must be one of {[str(d) for d in _LAYOUTS]}, got {dtype}")
    return dtype


def float_info(dtype: torch.dtype | str) -> FloatInfo:
    """Layout and limits of a floating format, computed from its exponent and mantissa widths."""
    dtype = _dtype(dtype)
    E, M, ieee = _LAYOUTS[dtype]
    bias = 2 ** (E - 1) - 1
    if ieee:
        # The all-ones exponent is reserved for inf/NaN: the largest exponent is 2^E - 2.
        e_max, f_max = (2**E - 2) - bias, 2**M - 1
    else:
        # e4m3fn: the all-ones exponent holds numbers; only f = all ones is NaN.
        e_max, f_max = (2**E - 1) - bias, 2**M - 2
    return FloatInfo(
        name=str(dtype).replace("torch.", ""), dtype=dtype, bits=1 + E + M, sign_bits=1,
        exponent_bits=E, mantissa_bits=M, bias=bias,
        max=math.ldexp(1.0 + f_max / 2**M, e_max),
        min_normal=math.ldexp(1.0, 1 - bias),
        min_subnormal=math.ldexp(1.0, 1 - bias - M),
        eps=math.ldexp(1.0, -M),
        has_inf=ieee,
    )


def decode(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bit fields of a floating tensor: (sign, biased exponent, mantissa) as int64 tensors of x's shape."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    info = float_info(x.dtype) if x.dtype in _LAYOUTS else None
    if info is None:
        raise ValueError(f"x must have a floating dtype in {[str(d) for d in _LAYOUTS]}, got {x.dtype}")
    bits = x.contiguous().view(_INT_VIEW[info.bits]).to(torch.int64)
    if info.bits < 64:
        bits = bits & ((1 << info.bits) - 1)  # the view is signed: keep the raw pattern
        sign = bits >> (info.bits - 1)
    else:
        sign = (bits < 0).to(torch.int64)  # int64 has no unsigned view; the sign bit is the sign
        bits = bits & ((1 << 63) - 1)
    exponent = (bits >> info.mantissa_bits) & ((1 << info.exponent_bits) - 1)
    mantissa = bits & ((1 << info.mantissa_bits) - 1)
    return sign, exponent, mantissa


def encode(sign: Tensor, exponent: Tensor, mantissa: Tensor, dtype: torch.dtype | str) -> Tensor:
    """Inverse of ``decode``: assembles the bit fields into a tensor of ``dtype``."""
    info = float_info(dtype)
    sign, exponent, mantissa = (torch.as_tensor(t, dtype=torch.int64) for t in (sign, exponent, mantissa))
    for name, t, width in (("sign", sign, 1), ("exponent", exponent, info.exponent_bits),
                           ("mantissa", mantissa, info.mantissa_bits)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= 2**width):
            raise ValueError(f"{name} must be in [0, 2^{width}) for {info.name}, got range "
                             f"[{int(t.min())}, {int(t.max())}]")
    bits = (exponent << info.mantissa_bits) | mantissa
    if info.bits == 64:  # no unsigned int64: set the sign bit through int64's minimum
        return torch.where(sign == 1, bits | torch.iinfo(torch.int64).min, bits).view(torch.float64)
    bits = bits | (sign << (info.bits - 1))  # the unsigned pattern
    if info.bits == 8:
        return bits.to(torch.uint8).view(info.dtype)
    bits = torch.where(bits >= 2 ** (info.bits - 1), bits - 2**info.bits, bits)  # two's complement
    return bits.to(_INT_VIEW[info.bits]).view(info.dtype)


def decoded_value(sign: Tensor, exponent: Tensor, mantissa: Tensor, dtype: torch.dtype | str) -> Tensor:
    """The value of the bit fields by the formula in the module docstring, as float64."""
    info = float_info(dtype)
    s, e, f = (torch.as_tensor(t, dtype=torch.int64) for t in (sign, exponent, mantissa))
    frac = f.double() / 2.0**info.mantissa_bits
    normal = torch.ldexp(1.0 + frac, (e - info.bias).double())
    subnormal = torch.ldexp(frac, torch.full_like(frac, 1 - info.bias))
    mag = torch.where(e == 0, subnormal, normal)
    top = e == 2**info.exponent_bits - 1
    if info.has_inf:
        mag = torch.where(top, torch.where(f == 0, math.inf, math.nan), mag)
    else:
        mag = torch.where(top & (f == 2**info.mantissa_bits - 1), math.nan, mag)
    return torch.where(s == 1, -mag, mag)


def round_to(x: Tensor | float, dtype: torch.dtype | str) -> Tensor:
    """What x becomes when stored in ``dtype``, computed from the layout, returned as float64.

    Round to nearest, ties to even, at the quantum 2^(e - M) of x's binade
    (2^(1 - b - M) below min_normal, i.e. gradual underflow). Values at or above
    max + ulp(max)/2 become inf (formats without inf saturate at ±max, as
    torch's cast does). Equals ``x.to(dtype).double()`` for float32 inputs; a
    float64 tensor cast to fp16/bf16 by torch is rounded twice (through
    float32), this function rounds once.
    """
    info = float_info(dtype)
    x = torch.as_tensor(x, dtype=torch.float64)
    if info.dtype == torch.float64:
        return x.clone()
    a = x.abs()
    _, k = torch.frexp(a)  # a = m · 2^k with m in [0.5, 1): floor(log2 a) = k - 1
    e = torch.clamp(k.to(torch.int64) - 1, min=1 - info.bias)
    quantum = torch.ldexp(torch.ones_like(a), (e - info.mantissa_bits).double())
    r = torch.round(a / quantum) * quantum  # torch.round: half to even; a / quantum is exact
    overflow = torch.isinf(a) | (r > info.max)
    # IEEE formats overflow to inf; torch's cast to e4m3fn (no inf) saturates at max, inf included.
    r = torch.where(overflow, math.inf if info.has_inf else info.max, r)
    r = torch.where(torch.isnan(a), math.nan, r)
    return torch.copysign(r, x)


def representations(value: float, dtypes: tuple[torch.dtype, ...] = FORMATS) -> dict[str, float]:
    """``{format name: value as stored in it}`` for one number, e.g. 65520 -> fp16 inf, bf16 65536."""
    return {float_info(d).name: float(round_to(value, d)) for d in dtypes}
