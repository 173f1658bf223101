r"""The compiled tile step of the CPU kernel: csrc/flash_cpu.cpp, built on first use.

blockwise.py's plain case (no additive bias, ALiBi, window other than causal, softcap or
dropout; float32 or float64 on the CPU; automatic tile sizes) runs the whole forward and
backward in one C++ parallel loop each (at::parallel_for), with the Python kernel's conventions
(base 2, row stats m and l, q times log2(e) * scale rounded once, the backward over the Python
plan's tiles, dQ x scale and dK x ln 2 at the end). Differences: the kernel scales q block by
block, so the autograd Function saves q unscaled, and the LSE comes from the kernel; a compiled
forward always pairs with the compiled backward. The backward runs one work item per (batch,
kv head), or per query head when there are fewer of those than threads (MQA at batch 1). The Python tile loop is the reference it is tested against
(tests/attention/test_compiled.py).

A bool mask (a padding mask, a block-sparse layout, a Medusa tree) takes the same kernel,
tile-mapped: plan_tiles reduces the mask to a class per tile once (cached per mask tensor, as a
FlexAttention BlockMask is made once), and forward and backward run over those tiles, skipping
the EMPTY ones and masking only the PARTIAL ones (Plan carries the map and the mask).

The build is deepnotes/_ext.py's, shared with the fused Adam kernel:
torch.utils.cpp_extension compiles the source once per machine into
``$XDG_CACHE_HOME/deepnotes/ext/<key>`` (``~/.cache`` by default), the key hashing the source,
the flags, the torch and Python versions and the CPU; a cached load takes milliseconds. When
the build fails (no compiler, no ninja) a RuntimeWarning says so once and every call keeps
the Python kernel. ``ENABLED = False`` (a module attribute, e.g. for tests and benchmarks)
sends every call to the Python kernel too.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import _ext

_cpu_signature = _ext.cpu_signature  # a module name, so that tests can stand in another CPU

__all__ = ["ENABLED", "Plan", "load_kernel", "build_info", "supports", "flash_fwd", "flash_bwd"]

ENABLED = True  # False: flash_attention never takes the compiled kernel
SOURCE = Path(__file__).parent / "csrc" / "flash_cpu.cpp"
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_state: dict[str, Any] = {"kernel": None, "tried": False, "error": None, "build_seconds": None, "cached": None,
                          "build_dir": None}


def _build_key(source: bytes) -> str:
    return _ext.build_key(source, CFLAGS + LDFLAGS, _cpu_signature())


def _build() -> Any:
    _state.update(_ext.build("deepnotes_flash_cpu", SOURCE, _build_key(SOURCE.read_bytes()), CFLAGS, LDFLAGS))
    return torch.ops.deepnotes_attention


def load_kernel() -> Any | None:
    """``torch.ops.deepnotes_attention`` (flash_fwd, flash_bwd), built on the first call; None if it cannot be."""
    return _ext.load_once(_state, _lock, lambda: _build(), lambda error: (
        f"deepnotes.attention: the compiled CPU kernel could not be built ({error}); flash_attention runs the "
        "Python blockwise kernel instead"))


def build_info() -> dict[str, Any]:
    """Which kernel the dense CPU case uses and what the build cost: backend, build_seconds, cached, build_dir, error."""
    ops = load_kernel()
    return {"backend": "cpp" if ops is not None else "python",
            **{k: _state[k] for k in ("build_seconds", "cached", "build_dir", "error")}}


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec, bias, block_q, block_k) -> bool:
    """Whether the call is the compiled kernel's case (the build is not triggered here): no bias,
    ALiBi, softcap, dropout or window other than causal; a bool mask is (it goes tile-mapped)."""
    return (ENABLED and q.device.type == "cpu" and k.device.type == "cpu" and v.device.type == "cpu"
            and q.dtype in (torch.float32, torch.float64) and k.dtype == q.dtype and v.dtype == q.dtype
            and bias is None and (spec.mask is None or (spec.bool_mask and spec.mask.device.type == "cpu"))
            and spec.alibi is None and spec.softcap == 0
            and spec.dropout_p == 0 and spec.left < 0 and spec.right in (-1, 0)
            and spec.D > 0 and spec.Dv > 0 and block_q is None and block_k is None)


class Plan(NamedTuple):
    """The tiles a compiled call runs over: block_q x block_k, and for a masked call its tile map
    (cls, uint8 (n_r, n_c): EMPTY / PARTIAL / FULL, masks.py) and bool mask; both None when dense."""

    block_q: int
    block_k: int
    cls: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def flash_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, plan: Plan):
    """Contiguous q, k, v (unscaled) -> O, m, l, LSE (B, H, Sq[, Dv]): O, m (log2 units), l as
    blockwise.forward_problems writes them, LSE as lse_from_stats computes it. A dense call picks
    its own query blocks; a masked one runs over plan's tiles, skipping the EMPTY ones."""
    return load_kernel().flash_fwd(q, k, v, causal, scale, plan.cls, plan.mask, plan.block_q, plan.block_k)


def flash_bwd(q, k, v, o, m, ell, do, causal: bool, scale: float, plan: Plan):
    """-> dq, dk, dv (final), summed over the tiles of blockwise.py's plan in its order (block_q x block_k;
    block_k >= Sk: one tile, whose D' comes from the tile, as blockwise.backward_problems does)."""
    return load_kernel().flash_bwd(q, k, v, o, m, ell, do, causal, scale, plan.block_q, plan.block_k, plan.cls,
                                   plan.mask)
