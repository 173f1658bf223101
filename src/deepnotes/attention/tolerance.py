"""flash-attn's tolerance rule, as the tests and the experiment use it.

An attention kernel is judged against a float64 reference, and its error is
allowed to be a small multiple of the error of the *naive* computation done
in the working dtype (flash-attn `tests/test_flash_attn.py`):

    max|out - ref64|  <=  2 * max|baseline - ref64| + atol        (output)
    max|grad - ref64| <=  3 * max|baseline_grad - ref64| + atol   (gradients)

so the bound scales with what the dtype can do (about 1e-7 in float32,
1e-3 in bfloat16) instead of being one absolute number.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["OUTPUT_FACTOR", "GRAD_FACTOR", "ATOL", "max_abs_err", "RuleCheck", "flash_rule"]

OUTPUT_FACTOR = 2.0
GRAD_FACTOR = 3.0
ATOL = 1e-5


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64 (0 for empty tensors); NaN anywhere gives NaN."""
    if a.numel() == 0:
        return 0.0
    return float((a.detach().double() - b.detach().double()).abs().max())


@dataclass
class RuleCheck:
    err: float  # max |ours - ref64|
    baseline_err: float  # max |naive in the working dtype - ref64|
    bound: float  # factor * baseline_err + atol

    @property
    def passed(self) -> bool:
        return self.err == self.err and self.err <= self.bound  # NaN never passes

    @property
    def ratio(self) -> float:
        """err / baseline_err (how many baselines' worth of error)."""
        return self.err / self.baseline_err if self.baseline_err > 0 else float("inf") * (self.err > 0)

    def __str__(self) -> str:
        return f"err {self.err:.3e} <= {self.bound:.3e} (baseline {self.baseline_err:.3e})"


def flash_rule(out: torch.Tensor, baseline: torch.Tensor, ref: torch.Tensor, factor: float = OUTPUT_FACTOR,
               atol: float = ATOL) -> RuleCheck:
    """Compares `out` and the naive `baseline` (same dtype) with a float64 `ref`."""
    err, base = max_abs_err(out, ref), max_abs_err(baseline, ref)
    return RuleCheck(err=err, baseline_err=base, bound=factor * base + atol)
