"""Every activation against torch's function of the same name (references/fundamentals.md, section c)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from deepnotes.nn import activations as A

# name -> (ours, torch's); each takes x only (hyperparameters bound here).
CASES = {
    "sigmoid": (A.sigmoid, torch.sigmoid),
    "tanh": (A.tanh, torch.tanh),
    "hardtanh": (A.hardtanh, F.hardtanh),
    "hardtanh(-2,3)": (lambda x: A.hardtanh(x, -2.0, 3.0), lambda x: F.hardtanh(x, -2.0, 3.0)),
    "relu": (A.relu, F.relu),
    "relu6": (A.relu6, F.relu6),
    "leaky_relu": (A.leaky_relu, F.leaky_relu),
    "leaky_relu(0.2)": (lambda x: A.leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, 0.2)),
    "rrelu(eval)": (A.rrelu, F.rrelu),
    "elu": (A.elu, F.elu),
    "elu(2)": (lambda x: A.elu(x, 2.0), lambda x: F.elu(x, 2.0)),
    "selu": (A.selu, F.selu),
    "celu": (A.celu, F.celu),
    "celu(0.5)": (lambda x: A.celu(x, 0.5), lambda x: F.celu(x, 0.5)),
    "gelu": (A.gelu, F.gelu),
    "gelu(tanh)": (lambda x: A.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "silu": (A.silu, F.silu),
    "swish(1)": (A.swish, F.silu),
    "swish(1.7)": (lambda x: A.swish(x, 1.7), lambda x: x * torch.sigmoid(1.7 * x)),
    "mish": (A.mish, F.mish),
    "softplus": (A.softplus, F.softplus),
    "softplus(2,10)": (lambda x: A.softplus(x, 2.0, 10.0), lambda x: F.softplus(x, 2.0, 10.0)),
    "softplus(0.5)": (lambda x: A.softplus(x, 0.5), lambda x: F.softplus(x, 0.5)),
    "softsign": (A.softsign, F.softsign),
    "hardsigmoid": (A.hardsigmoid, F.hardsigmoid),
    "hardswish": (A.hardswish, F.hardswish),
    "logsigmoid": (A.logsigmoid, F.logsigmoid),
    "prelu(0.25)": (lambda x: A.prelu(x, torch.tensor([0.25], dtype=x.dtype)),
                    lambda x: F.prelu(x, torch.tensor([0.25], dtype=x.dtype))),
}


def _halves(f):
    def ref(x):
        a, b = x.chunk(2, dim=-1)
        return f(a) * b
    return ref


GATED_CASES = {
    "glu": (A.glu, F.glu),
    "reglu": (A.reglu, _halves(F.relu)),
    "geglu": (A.geglu, _halves(F.gelu)),
    "geglu(tanh)": (lambda x: A.geglu(x, approximate="tanh"), _halves(lambda a: F.gelu(a, approximate="tanh"))),
    "swiglu": (A.swiglu, _halves(F.silu)),
    "bilinear_glu": (A.bilinear_glu, _halves(lambda a: a)),
}
ALL = {**CASES, **GATED_CASES}

# Kinks, bounds and thresholds of the whole family, a dense grid, and large |x| for stability.
EDGES = [0.0, -0.0, 1.0, -1.0, 3.0, -3.0, 6.0, 2.0, -2.0, 5.0, 10.0, 20.0, -20.0, 40.0, 100.0, -100.0, 1e-8, -1e-8]
# float32: atol 1e-5 (torch.testing's float32 default) absorbs cancellation inside torch's own float32
# kernels, e.g. 1 - sigmoid(8) in F.glu's backward has a relative error of 2e-4 before we compare.
TOL = {torch.float64: dict(rtol=1e-6, atol=1e-6), torch.float32: dict(rtol=1e-6, atol=1e-5)}


def points(dtype, n_grid=401):
    return torch.cat([torch.tensor(EDGES, dtype=torch.float64), torch.linspace(-8, 8, n_grid, dtype=torch.float64)]).to(dtype)


def value_and_grad(f, x):
    x = x.detach().clone().requires_grad_(True)
    y = f(x)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.detach(), g


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_forward_and_backward_match_torch(name, dtype):
    ours, ref = ALL[name]
    x = points(dtype)
    if name in GATED_CASES:  # halves a, b: every point meets a gate value (|b| <= 8 keeps float32 well scaled)
        x = torch.cat([x, x.flip(0).clamp(-8, 8)])
    y, g = value_and_grad(ours, x)
    y_ref, g_ref = value_and_grad(ref, x)
    assert y.dtype == dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    torch.testing.assert_close(g, g_ref, **TOL[dtype])


@pytest.mark.parametrize("name", sorted(ALL))
def test_bfloat16_matches_float32_reference(name):
    ours, ref = ALL[name]
    x = points(torch.float32, 201)
    if name in GATED_CASES:
        x = torch.cat([x, x.flip(0).clamp(-8, 8)])
    xb = x.to(torch.bfloat16)
    y, g = value_and_grad(ours, xb)
    y_ref, g_ref = value_and_grad(ref, xb.float())  # same (rounded) input, float32 math
    assert y.dtype == torch.bfloat16 and g.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=1.6e-2, atol=1e-5)
    torch.testing.assert_close(g.float(), g_ref, rtol=1.6e-2, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ALL))
def test_empty_and_noncontiguous_inputs(name):
    ours, ref = ALL[name]
    empty = torch.empty(0, 4)
    y, g = value_and_grad(ours, empty)
    assert y.shape == ref(empty).shape and g.shape == (0, 4)
    base = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    x = base.t()  # (8, 6), not contiguous; gated halves the last dim 6 -> 3
    assert not x.is_contiguous()
    y, g = value_and_grad(ours, x)
    y_ref, g_ref = value_and_grad(ref, x.contiguous())
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    torch.testing.assert_close(g, g_ref, **TOL[torch.float64])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=16),
       st.sampled_from(sorted(CASES)))
def test_random_inputs_match_torch_in_float32(values, name):
    ours, ref = CASES[name]
    x = torch.tensor(values, dtype=torch.float32)
    y, g = value_and_grad(ours, x)
    y_ref, g_ref = value_and_grad(ref, x)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float32])
    torch.testing.assert_close(g, g_ref, **TOL[torch.float32])


# --- torch's gradient conventions at the kinks, spelled out -----------------------------------

@pytest.mark.parametrize("f, x0, want", [
    (A.relu, 0.0, 0.0), (A.leaky_relu, 0.0, 0.01), (A.hardtanh, -1.0, 0.0), (A.hardtanh, 1.0, 0.0),
    (A.relu6, 0.0, 0.0), (A.relu6, 6.0, 0.0), (A.hardsigmoid, -3.0, 0.0), (A.hardsigmoid, 3.0, 0.0),
    (A.hardswish, -3.0, 0.0), (A.hardswish, 3.0, 1.0), (lambda x: A.elu(x, 2.0), 0.0, 2.0),
    (A.selu, 0.0, A.SELU_SCALE * A.SELU_ALPHA), (A.rrelu, 0.0, (1 / 8 + 1 / 3) / 2),
    (A.sigmoid, 0.0, 0.25), (A.tanh, 0.0, 1.0), (A.logsigmoid, 0.0, 0.5), (A.softsign, 0.0, 1.0),
    (A.step, 0.0, 0.0), (A.step, 1.0, 0.0), (A.softplus, 25.0, 1.0),
])
def test_gradient_at_kinks(f, x0, want):
    _, g = value_and_grad(f, torch.tensor([x0], dtype=torch.float64))
    assert g.item() == pytest.approx(want, abs=1e-15)


def test_step_is_heaviside():
    x = torch.tensor([-2.0, -0.0, 0.0, 0.5, float("nan"), float("inf")])
    torch.testing.assert_close(A.step(x), torch.heaviside(x, torch.tensor(0.0)))
    torch.testing.assert_close(A.step(x, 0.5), torch.heaviside(x, torch.tensor(0.5)))


# --- reference point values (fundamentals.md c, checks 1-4) -------------------------------------

def test_reference_point_values():
    one = torch.tensor(1.0, dtype=torch.float64)
    assert A.gelu(one).item() == pytest.approx(0.8413447460685429, abs=1e-12)
    assert A.gelu(one, "tanh").item() == pytest.approx(0.8411919906082768, abs=1e-12)
    assert A.silu(one).item() == pytest.approx(0.7310585786300049, abs=1e-12)
    assert A.mish(one).item() == pytest.approx(0.8650983882673103, abs=1e-12)
    assert A.softplus(one).item() == pytest.approx(1.3132616875182228, abs=1e-12)
    assert A.selu(-one).item() == pytest.approx(-1.1113307378125625, abs=1e-12)
    assert A.selu(torch.tensor(-50.0, dtype=torch.float64)).item() == pytest.approx(-1.7580993408473766, abs=1e-12)


def test_gelu_tanh_form_max_gap():
    x = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    gap = (A.gelu(x) - A.gelu(x, "tanh")).abs()
    assert gap.max().item() == pytest.approx(4.73e-4, abs=5e-6)
    assert abs(x[gap.argmax()].abs().item() - 2.70) < 0.02  # the gap is even in x: +-2.70


def test_stability_at_large_magnitude():
    assert A.logsigmoid(torch.tensor(-100.0)).item() == -100.0
    assert A.softplus(torch.tensor(25.0)).item() == 25.0
    big = torch.tensor([-1e4, -100.0, 100.0, 1e4], dtype=torch.float32)
    for f in (A.sigmoid, A.tanh, A.softplus, A.logsigmoid, A.mish, A.silu, A.gelu, A.elu, A.selu):
        y, g = value_and_grad(f, big)
        assert torch.isfinite(y).all() and torch.isfinite(g).all(), f.__name__


def test_sigmoid_derivative_bound_and_vanishing_product():
    x = torch.linspace(-10, 10, 20_001, dtype=torch.float64)
    _, g = value_and_grad(A.sigmoid, x)
    assert g.max().item() == pytest.approx(0.25, abs=1e-15)
    # Through 10 nested sigmoids the chain rule multiplies 10 derivatives, each <= 1/4.
    z = torch.linspace(-5, 5, 101, dtype=torch.float64, requires_grad=True)
    y = z
    for _ in range(10):
        y = A.sigmoid(y)
    (dz,) = torch.autograd.grad(y.sum(), z)
    assert dz.abs().max().item() <= 0.25**10


def test_prelu_per_channel_weights_and_gradient():
    w = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    x = -torch.ones(2, 3, 4, 4, dtype=torch.float64)
    y = A.prelu(x, w)
    torch.testing.assert_close(y, -w.detach().view(1, 3, 1, 1).expand(2, 3, 4, 4))
    y.sum().backward()
    torch.testing.assert_close(w.grad, torch.full((3,), -32.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="3 parameters"):
        A.prelu(torch.randn(3, dtype=torch.float64), w)
    with pytest.raises(RuntimeError):  # torch's exception type too
        A.prelu(torch.randn(2, 4, dtype=torch.float64), w)
    assert A.prelu(torch.randn(3), torch.tensor([0.25])).shape == (3,)  # one weight broadcasts anywhere


def test_prelu_matches_torch_with_gradients_wrt_both():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 3, 2, generator=gen, dtype=torch.float64)
    w = torch.rand(5, generator=gen, dtype=torch.float64)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    gy = torch.randn(4, 5, 3, 2, generator=gen, dtype=torch.float64)
    torch.autograd.backward(A.prelu(xs, ws), gy)
    torch.autograd.backward(F.prelu(xr, wr), gy)
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ws.grad, wr.grad, rtol=1e-12, atol=1e-12)


def test_rrelu_training_draws_slopes_from_the_generator():
    x = -torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.1
    y1 = A.rrelu(x, training=True, generator=torch.Generator().manual_seed(5))
    y2 = A.rrelu(x, training=True, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    slope = y1 / x
    assert slope.min() >= 1 / 8 and slope.max() <= 1 / 3
    assert slope.std() > 0.03  # random, not one slope
    assert slope.mean().item() == pytest.approx((1 / 8 + 1 / 3) / 2, abs=0.01)
    pos = torch.tensor([0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(A.rrelu(pos, training=True), pos)
    torch.testing.assert_close(A.rrelu(x, 0.1, 0.3), F.leaky_relu(x, 0.2))  # eval: the mean slope


def test_glu_reference_and_errors():
    torch.testing.assert_close(A.glu(torch.tensor([1.0, 2.0, 0.0, 0.0])), torch.tensor([0.5, 1.0]))
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(A.glu(x, dim=1), F.glu(x, dim=1))
    assert A.swiglu(torch.empty(0, 8)).shape == (0, 4)
    for f in (A.glu, A.reglu, A.geglu, A.swiglu, A.bilinear_glu):
        with pytest.raises(ValueError, match="even"):
            f(torch.randn(2, 5))
        with pytest.raises(RuntimeError):
            f(torch.randn(3))


def test_bad_arguments_raise_naming_them():
    with pytest.raises(TypeError, match="floating"):
        A.relu(torch.arange(3))
    with pytest.raises(TypeError, match="Tensor"):
        A.sigmoid([1.0, 2.0])
    with pytest.raises(ValueError, match="approximate"):
        A.gelu(torch.zeros(2), approximate="fast")
    with pytest.raises(ValueError, match="min_val"):
        A.hardtanh(torch.zeros(2), 1.0, -1.0)
    with pytest.raises(ValueError, match="alpha"):
        A.celu(torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="lower"):
        A.rrelu(torch.zeros(2), 0.5, 0.1)


# --- modules ------------------------------------------------------------------------------------

MODULES = [
    (A.Step(), A.step), (A.Sigmoid(), torch.sigmoid), (A.Tanh(), torch.tanh), (A.Hardtanh(-2.0, 2.0),
    lambda x: F.hardtanh(x, -2.0, 2.0)), (A.ReLU(), F.relu), (A.ReLU6(), F.relu6),
    (A.LeakyReLU(0.1), lambda x: F.leaky_relu(x, 0.1)), (A.ELU(0.5), lambda x: F.elu(x, 0.5)), (A.SELU(), F.selu),
    (A.CELU(2.0), lambda x: F.celu(x, 2.0)), (A.GELU(), F.gelu), (A.GELU("tanh"), lambda x: F.gelu(x, approximate="tanh")),
    (A.SiLU(), F.silu), (A.Swish(), F.silu), (A.Mish(), F.mish), (A.Softplus(2.0), lambda x: F.softplus(x, 2.0)),
    (A.Softsign(), F.softsign), (A.Hardsigmoid(), F.hardsigmoid), (A.Hardswish(), F.hardswish),
    (A.LogSigmoid(), F.logsigmoid), (A.GLU(), F.glu), (A.ReGLU(), _halves(F.relu)), (A.GEGLU(), _halves(F.gelu)),
    (A.SwiGLU(), _halves(F.silu)), (A.BilinearGLU(), _halves(lambda a: a)),
]


@pytest.mark.parametrize("module, ref", MODULES, ids=[type(m).__name__ + repr(m.kwargs) for m, _ in MODULES])
def test_modules_apply_their_function(module, ref):
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 4
    torch.testing.assert_close(module(x), ref(x), rtol=1e-10, atol=1e-10)
    assert len(list(module.parameters())) == 0


def test_prelu_and_rrelu_modules():
    m = A.PReLU(4)
    assert m.weight.shape == (4,) and torch.all(m.weight == 0.25)
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(m(x), F.prelu(x, m.weight))
    assert A.PReLU().weight.shape == (1,)
    r = A.RReLU(generator=torch.Generator().manual_seed(0))
    neg = -torch.ones(100)
    assert r(neg).unique().numel() > 1  # training: random slopes
    r.eval()
    torch.testing.assert_close(r(neg), F.rrelu(neg))
    with pytest.raises(TypeError):
        A.ReLU(inplace=True)


def test_public_names_exist():
    for name in ["step", "sigmoid", "tanh", "hardtanh", "relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu",
                 "selu", "celu", "gelu", "silu", "swish", "mish", "softplus", "softsign", "hardsigmoid",
                 "hardswish", "logsigmoid", "glu", "reglu", "geglu", "swiglu", "bilinear_glu", "ReLU", "GELU",
                 "SiLU", "PReLU", "SwiGLU", "FeedForward"]:
        assert hasattr(A, name), name
        assert name in A.__all__, name
    assert math.isclose(A.SELU_ALPHA, 1.6732632423543772848) and math.isclose(A.SELU_SCALE, 1.0507009873554804934)


@pytest.mark.parametrize("name", ["glu", "reglu", "geglu", "swiglu", "bilinear_glu"])
def test_glu_family_dim_out_of_range_names_the_argument(name):
    f = getattr(A, name)
    with pytest.raises(ValueError, match="dim must be in"):
        f(torch.ones(2, 4), dim=2)
    with pytest.raises(IndexError):  # torch's type for it too
        f(torch.ones(2, 4), dim=-3)
    with pytest.raises(IndexError):
        torch.nn.functional.glu(torch.ones(2, 4), dim=2)
