"""The compiled CPU kernel (attention/_compiled.py, csrc/flash_cpu.cpp), dense and with bool masks,
against the Python blockwise kernel it replaces and the float64 reference.

float64: equal to the Python kernel and to attention_reference within 1e-10 (outputs, LSE and
gradients); float32: flash-attn's rule (attention/tolerance.py). Shapes cover Sq != Sk both
ways, odd sizes, several key tiles (512) and query blocks (256), D in {32, 64, 128}, GQA/MQA and
causal (bottom-right aligned). The whole file skips, with the build error as reason, when the
kernel cannot be built; the fallback itself is tested with a compiler that does not exist.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import deepnotes.attention._compiled as compiled_module
from deepnotes.attention import (
    attention_reference,
    blockwise_attention,
    flash_attention,
)
from deepnotes.attention.tolerance import GRAD_FACTOR, flash_rule, max_abs_err

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [(1, 239), (113, 203), (203, 113), (127, 513), (513, 127), (64, 64), (37, 1100)]
IDS = [f"{a}x{b}" for a, b in SHAPES]


@pytest.fixture(scope="module")
def kernel():
    ops = compiled_module.load_kernel()
    if ops is None:
        pytest.skip(f"the compiled attention kernel could not be built: {compiled_module.build_info()['error']}")
    return ops


@pytest.fixture
def python_kernel(monkeypatch):
    """A function that runs blockwise_attention on the Python kernel."""
    def run(*args, **kw):
        with monkeypatch.context() as m:
            m.setattr(compiled_module, "ENABLED", False)
            return blockwise_attention(*args, **kw)
    return run


@pytest.fixture
def calls(monkeypatch):
    """Counts the compiled kernel's forward and backward calls."""
    count = {"fwd": 0, "bwd": 0}
    fwd, bwd = compiled_module.flash_fwd, compiled_module.flash_bwd

    def counting_fwd(*a):
        count["fwd"] += 1
        return fwd(*a)

    def counting_bwd(*a):
        count["bwd"] += 1
        return bwd(*a)

    monkeypatch.setattr(compiled_module, "flash_fwd", counting_fwd)
    monkeypatch.setattr(compiled_module, "flash_bwd", counting_bwd)
    return count


def _inputs(B, H, Hkv, Sq, Sk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq, D, generator=g)
    k = torch.randn(B, Hkv, Sk, D, generator=g)
    v = torch.randn(B, Hkv, Sk, D, generator=g)
    do = torch.randn(B, H, Sq, D, generator=g)
    return [x.to(dtype).requires_grad_(True) for x in (q, k, v)] + [do.to(dtype)]


def _run(fn, q, k, v, do, **kw):
    o, lse = fn(q, k, v, return_lse=True, **kw)
    grads = torch.autograd.grad(o, [q, k, v], do)
    return o, lse, grads


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_float64_equals_the_python_kernel_and_the_reference(kernel, calls, python_kernel, shape, causal):
    Sq, Sk = shape
    for D, Hkv in ((32, 4), (64, 2), (128, 1)):
        q, k, v, do = _inputs(1, 4, Hkv, Sq, Sk, D, torch.float64, seed=D)
        o, lse, g = _run(blockwise_attention, q, k, v, do, causal=causal)
        op, lsep, gp = _run(python_kernel, q, k, v, do, causal=causal)
        o_ref = attention_reference(q, k, v, causal=causal)
        g_ref = torch.autograd.grad(o_ref, [q, k, v], do)
        assert max_abs_err(o, op) < 1e-10 and max_abs_err(o, o_ref) < 1e-10
        seen = torch.isfinite(lsep)
        assert torch.equal(seen, torch.isfinite(lse)) and max_abs_err(lse[seen], lsep[seen]) < 1e-10
        for name, a, b, c in zip("qkv", g, gp, g_ref):
            assert max_abs_err(a, b) < 1e-10, f"d{name} vs the Python kernel"
            assert max_abs_err(a, c) < 1e-10, f"d{name} vs the reference"
    assert calls == {"fwd": 3, "bwd": 3}


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [(113, 203), (203, 113), (1, 239), (300, 1100), (1100, 300)],
                         ids=["113x203", "203x113", "1x239", "300x1100", "1100x300"])
def test_float32_meets_the_flash_rule(kernel, calls, shape, causal):
    Sq, Sk = shape
    for D, Hkv in ((32, 2), (64, 1), (128, 2)):
        q, k, v, do = _inputs(1, 2, Hkv, Sq, Sk, D, torch.float32, seed=D)
        o, _, g = _run(flash_attention, q, k, v, do, causal=causal)
        ob = attention_reference(q, k, v, causal=causal)
        gb = torch.autograd.grad(ob, [q, k, v], do)
        q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
        o64 = attention_reference(q64, k64, v64, causal=causal)
        g64 = torch.autograd.grad(o64, [q64, k64, v64], do.double())
        rule = flash_rule(o, ob, o64)
        assert rule.passed, f"output D={D}: {rule}"
        for name, a, b, c in zip("qkv", g, gb, g64):
            rule = flash_rule(a, b, c, factor=GRAD_FACTOR)
            assert rule.passed, f"d{name} D={D}: {rule}"
    assert calls["fwd"] == 3 and calls["bwd"] == 3


def test_large_causal_crosses_query_blocks_and_key_tiles(kernel, calls, python_kernel):
    # 1100 rows: five 256-row work items, three 512-key tiles, a partial diagonal in each
    q, k, v, do = _inputs(1, 2, 1, 1100, 1100, 64, torch.float64, seed=3)
    o, lse, g = _run(flash_attention, q, k, v, do, causal=True)
    op, lsep, gp = _run(python_kernel, q, k, v, do, causal=True)
    assert max_abs_err(o, op) < 1e-10 and max_abs_err(lse, lsep) < 1e-10
    assert all(max_abs_err(a, b) < 1e-10 for a, b in zip(g, gp))
    assert calls == {"fwd": 1, "bwd": 1}


def test_rows_that_see_no_key_and_empty_lengths(kernel, python_kernel):
    # causal with Sq > Sk: the first Sq - Sk rows see nothing (O = 0, LSE = +inf, zero gradients)
    q, k, v, do = _inputs(2, 2, 2, 40, 7, 32, torch.float64)
    o, lse, g = _run(flash_attention, q, k, v, do, causal=True)
    op, lsep, gp = _run(python_kernel, q, k, v, do, causal=True)
    assert torch.equal(o[:, :, :33], torch.zeros_like(o[:, :, :33])) and torch.isinf(lse[:, :, :33]).all()
    assert max_abs_err(o, op) < 1e-12 and torch.equal(torch.isinf(lse), torch.isinf(lsep))
    assert all(max_abs_err(a, b) < 1e-12 for a, b in zip(g, gp))
    for Sq, Sk in ((0, 5), (5, 0)):
        q, k, v, do = _inputs(1, 2, 1, Sq, Sk, 16, torch.float32)
        o, lse, g = _run(flash_attention, q, k, v, do)
        assert o.shape == (1, 2, Sq, 16) and (o == 0).all() and (torch.isinf(lse) | (Sq == 0)).all()
        assert all((x == 0).all() for x in g)


def test_dispatch(kernel, calls, python_kernel):
    q, k, v, _ = _inputs(1, 2, 2, 20, 30, 16, torch.float32)
    flash_attention(q, k, v, causal=True, scale=0.3)
    flash_attention(q, k, v, window=(-1, 0))  # causal spelled as a window
    assert calls["fwd"] == 2
    o_w = flash_attention(q, k, v, window=(-1, 0))
    assert torch.equal(o_w, flash_attention(q, k, v, causal=True))
    flash_attention(q, k, v, mask=torch.ones(20, 30, dtype=torch.bool))  # a bool mask: tile-mapped
    assert calls["fwd"] == 5
    others = [dict(mask=torch.zeros(20, 30)),
              dict(window=(4, 0)), dict(window=(-1, 3)), dict(softcap=5.0),
              dict(alibi_slopes=torch.ones(2)), dict(dropout_p=0.1, generator=torch.Generator())]
    for kw in others:
        flash_attention(q, k, v, **kw)
    blockwise_attention(q, k, v, block_q=8, block_k=8)  # explicit tiles: the Python kernel's
    python_kernel(q, k, v)
    h = [x.detach().to(torch.bfloat16) for x in (q, k, v)]
    flash_attention(*h)
    assert calls["fwd"] == 5


def test_thread_count_does_not_change_the_result(kernel):
    q, k, v, do = _inputs(2, 4, 2, 300, 600, 64, torch.float32, seed=5)
    n = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            o, lse, g = _run(flash_attention, q, k, v, do, causal=True)
            results.append((o, lse, *g))
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_few_kv_heads_split_the_backward_by_query_head(kernel, python_kernel, dtype):
    # B * Hkv = 1 < 2 threads: the backward runs one item per query head and sums dK, dV after
    q, k, v, do = _inputs(1, 4, 1, 300, 700, 32, dtype, seed=7)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        o, lse, g = _run(flash_attention, q, k, v, do, causal=True)
        op, lsep, gp = _run(python_kernel, q, k, v, do, causal=True)
    finally:
        torch.set_num_threads(n)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert max_abs_err(o, op) < tol and max_abs_err(lse, lsep) < tol
    assert all(max_abs_err(a, b) < tol for a, b in zip(g, gp))


@pytest.fixture
def fresh_loader(monkeypatch):
    """An empty load state (restored afterwards), so that a test can watch a first build fail."""
    monkeypatch.setattr(compiled_module, "_state", {k: None for k in compiled_module._state} | {"tried": False})


def test_no_compiler_means_one_warning_and_the_python_kernel(fresh_loader, monkeypatch, tmp_path):
    # A real build attempt with a compiler that does not exist, in an empty cache.
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    q, k, v, do = _inputs(1, 2, 1, 33, 45, 32, torch.float64)
    with pytest.warns(RuntimeWarning, match="could not be built.*no-such-c"):
        o, _, g = _run(flash_attention, q, k, v, do, causal=True)
    info = compiled_module.build_info()
    assert info["backend"] == "python" and "no-such-c" in info["error"]
    o_ref = attention_reference(q, k, v, causal=True)
    assert max_abs_err(o, o_ref) < 1e-10
    assert all(max_abs_err(a, b) < 1e-10 for a, b in zip(g, torch.autograd.grad(o_ref, [q, k, v], do)))
    with warnings.catch_warnings():  # once per process, not once per call
        warnings.simplefilter("error")
        flash_attention(q, k, v)


def test_the_build_is_cached_under_a_key_of_its_source_flags_and_cpu(monkeypatch):
    key = compiled_module._build_key(b"int main() {}")
    assert key == compiled_module._build_key(b"int main() {}")
    assert key != compiled_module._build_key(b"int main() { return 0; }")
    monkeypatch.setattr(compiled_module, "_cpu_signature", lambda: "another CPU")
    assert key != compiled_module._build_key(b"int main() {}")


def _masks(B, H, Sq, Sk, seed):
    """Bool masks of every broadcast shape the API takes, sparse and dense, with fully hidden rows."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(B, 1, (Sq + 63) // 64, (Sk + 63) // 64, generator=g) < 0.3
    block_sparse = blocks.repeat_interleave(64, 2).repeat_interleave(64, 3)[:, :, :Sq, :Sk]
    random = torch.rand(B, H, Sq, Sk, generator=g) < 0.7
    random[:, :, :3] = False  # rows that see no key
    padding = torch.ones(B, 1, 1, Sk, dtype=torch.bool)
    padding[0, ..., Sk // 2:] = False  # keys beyond a length
    return {"block-sparse (B,1,Sq,Sk)": block_sparse, "random (B,H,Sq,Sk)": random, "padding (B,1,1,Sk)": padding,
            "2-D (Sq,Sk)": random[0, 0]}


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [(130, 300), (300, 130), (1, 700), (600, 600)], ids=["130x300", "300x130", "1x700", "600x600"])
def test_bool_masks_float64_equal_the_python_kernel_and_the_reference(kernel, calls, python_kernel, shape, causal):
    Sq, Sk = shape
    q, k, v, do = _inputs(2, 4, 2, Sq, Sk, 32, torch.float64, seed=Sq)
    for name, mask in _masks(2, 4, Sq, Sk, seed=Sk).items():
        o, lse, g = _run(flash_attention, q, k, v, do, causal=causal, mask=mask)
        op, lsep, gp = _run(python_kernel, q, k, v, do, causal=causal, mask=mask)
        o_ref = attention_reference(q, k, v, causal=causal, mask=mask)
        g_ref = torch.autograd.grad(o_ref, [q, k, v], do)
        assert max_abs_err(o, op) < 1e-10 and max_abs_err(o, o_ref) < 1e-10, name
        assert torch.equal(torch.isinf(lse), torch.isinf(lsep)), name
        seen = torch.isfinite(lsep)
        assert max_abs_err(lse[seen], lsep[seen]) < 1e-10, name
        for d, a, b, c in zip("qkv", g, gp, g_ref):
            assert max_abs_err(a, b) < 1e-10 and max_abs_err(a, c) < 1e-10, f"d{d} with {name}"
    assert calls == {"fwd": 4, "bwd": 4}


def test_bool_mask_float32_meets_the_flash_rule_and_skips_empty_tiles(kernel, calls):
    # a ~90%-empty 128 x 128 block layout, as the FlexAttention benchmark's; MQA
    N, block = 1024, 128
    g = torch.Generator().manual_seed(4)
    layout = torch.rand(N // block, N // block, generator=g) < 0.1
    layout[torch.arange(N // block), torch.arange(N // block)] = True
    mask = layout.repeat_interleave(block, 0).repeat_interleave(block, 1)
    q, k, v, do = _inputs(1, 4, 1, N, N, 64, torch.float32, seed=9)
    o, _, grads = _run(flash_attention, q, k, v, do, mask=mask)
    ob = attention_reference(q, k, v, mask=mask)
    gb = torch.autograd.grad(ob, [q, k, v], do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    o64 = attention_reference(q64, k64, v64, mask=mask)
    g64 = torch.autograd.grad(o64, [q64, k64, v64], do.double())
    assert flash_rule(o, ob, o64).passed
    for name, a, b, c in zip("qkv", grads, gb, g64):
        rule = flash_rule(a, b, c, factor=GRAD_FACTOR)
        assert rule.passed, f"d{name}: {rule}"
    assert calls == {"fwd": 1, "bwd": 1}
