"""interpolate against F.interpolate (references/fundamentals.md, section d)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from deepnotes.nn.upsampling import Upsample, interpolate, interpolate_reference, resize_matrix

RANK_MODES = {3: ["nearest", "nearest-exact", "linear", "area"],
              4: ["nearest", "nearest-exact", "bilinear", "bicubic", "area"],
              5: ["nearest", "nearest-exact", "trilinear", "area"]}
INTERPOLATING = ("linear", "bilinear", "bicubic", "trilinear")
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@st.composite
def resize_cases(draw, max_side=9):
    rank = draw(st.sampled_from([3, 4, 5]))
    mode = draw(st.sampled_from(RANK_MODES[rank]))
    side = max_side if rank < 5 else 5
    spatial = draw(st.lists(st.integers(1, side), min_size=rank - 2, max_size=rank - 2))
    kw = {}
    if draw(st.booleans()):
        kw["size"] = draw(st.lists(st.integers(1, 2 * side), min_size=rank - 2, max_size=rank - 2))
    else:
        factor = st.one_of(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 1 / 3]), st.floats(0.3, 3.5))
        kw["scale_factor"] = draw(st.lists(factor, min_size=rank - 2, max_size=rank - 2))
        if any(int(n * f) < 1 for n, f in zip(spatial, kw["scale_factor"])):
            kw["scale_factor"] = [max(f, 1.0) for f in kw["scale_factor"]]
        if draw(st.booleans()):
            kw["recompute_scale_factor"] = True
    if mode in INTERPOLATING:
        kw["align_corners"] = draw(st.booleans())
    return rank, mode, spatial, kw


def assert_matches_torch(fn, x, mode, kw):
    want = F.interpolate(x, mode=mode, **kw)
    got = fn(x, mode=mode, **kw)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = TOL[x.dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@settings(max_examples=60, deadline=None)
@given(resize_cases(), st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**31 - 1))
def test_forward_matches_torch(case, dtype, seed):
    rank, mode, spatial, kw = case
    x = torch.randn(2, 3, *spatial, generator=torch.Generator().manual_seed(seed)).to(dtype)
    assert_matches_torch(interpolate, x, mode, kw)
    assert_matches_torch(interpolate_reference, x, mode, kw)


def forward_adjoint(linear_fn, x, g):
    """J^T g of a linear map, from its forward: <g, f(e_j)> for every basis tensor e_j."""
    out = torch.empty(x.numel(), dtype=x.dtype)
    for j in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=x.dtype)
        e[j] = 1.0
        out[j] = (linear_fn(e.view_as(x)) * g).sum()
    return out.view_as(x)


def test_nearest_backward_is_the_adjoint_of_the_forward_where_torchs_is_not():
    x = torch.randn(1, 1, 2, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[[1.0, 10.0]]], dtype=torch.float64)
    assert torch.equal(interpolate(x, scale_factor=1.25, mode="nearest"), x[..., [0, 0]])  # torch's forward too
    (got,) = torch.autograd.grad(interpolate(x, scale_factor=1.25, mode="nearest"), x, g)
    assert got.tolist() == [[[11.0, 0.0]]]


@settings(max_examples=40, deadline=None)
@given(resize_cases(max_side=7), st.integers(0, 2**31 - 1))
@example(case=(5, "nearest", [1, 1, 2], {"scale_factor": [1.0, 1.0, 2.25]}), seed=0)  # torch's backward is wrong
def test_backward_matches_torch_and_paths_agree(case, seed):
    rank, mode, spatial, kw = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, *spatial, generator=gen, dtype=torch.float64, requires_grad=True)
    want = F.interpolate(x, mode=mode, **kw)
    g = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    if mode.startswith("nearest"):
        # torch's nearest backward does not always invert its forward's indices: it treats equal input
        # and output sizes as the identity even when a scale_factor != 1 made the forward repeat rows
        # (size 2, scale 1.25: out = [x0, x0]), and for 5-D input with scale_factor (1, 1, 2.25) on a
        # (1, 1, 2) volume its forward gives [x0, x0, x0, x1] but its backward [3, 7] for g = [1, 2, 3, 4]
        # (the adjoint is [6, 4]). The true gradient is the adjoint of the forward, built from torch's
        # forward alone.
        g_want = forward_adjoint(lambda t: F.interpolate(t, mode=mode, **kw), x.detach(), g)
    else:
        (g_want,) = torch.autograd.grad(want, x, g)
    for fn in (interpolate, interpolate_reference):
        (g_got,) = torch.autograd.grad(fn(x, mode=mode, **kw), x, g)
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(interpolate(x, mode=mode, **kw), interpolate_reference(x, mode=mode, **kw),
                               rtol=1e-12, atol=1e-12)


# --- reference values (fundamentals.md d, checks 1-3) -------------------------------------------

def line(values):
    return torch.tensor(values, dtype=torch.float64).view(1, 1, -1)


def test_linear_reference_values():
    x = line([1, 2, 3, 4])
    torch.testing.assert_close(interpolate(x, size=8, mode="linear").flatten(),
                               torch.tensor([1, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4], dtype=torch.float64))
    torch.testing.assert_close(interpolate(x, size=8, mode="linear", align_corners=True).flatten(),
                               1 + 3 * torch.arange(8, dtype=torch.float64) / 7)
    x = line([0, 1, 2, 3, 4])
    got = interpolate(x, scale_factor=1.5, mode="linear").flatten()
    torch.testing.assert_close(got, torch.tensor([0, .5, 7 / 6, 11 / 6, 2.5, 19 / 6, 23 / 6], dtype=torch.float64))
    got = interpolate(x, scale_factor=1.5, mode="linear", recompute_scale_factor=True).flatten()
    torch.testing.assert_close(got, torch.tensor([0, 4 / 7, 9 / 7, 2, 19 / 7, 24 / 7, 4], dtype=torch.float64))


def test_nearest_reference_values():
    x = line([10, 20, 30])
    assert interpolate(x, size=5, mode="nearest").flatten().tolist() == [10, 10, 20, 20, 30]
    assert interpolate(x, size=5, mode="nearest-exact").flatten().tolist() == [10, 10, 20, 30, 30]
    x = line([0, 1, 2, 3, 4])
    assert interpolate(x, size=2, mode="nearest").flatten().tolist() == [0, 2]
    assert interpolate(x, size=2, mode="nearest-exact").flatten().tolist() == [1, 3]


def test_bicubic_reference_values():
    x = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 3)
    got = interpolate(x, size=(1, 5), mode="bicubic", align_corners=True).flatten()
    torch.testing.assert_close(got, torch.tensor([0, .59375, 1, .59375, 0], dtype=torch.float64))
    x = torch.tensor([0.0, 0, 1, 1], dtype=torch.float64).view(1, 1, 1, 4)
    got = interpolate(x, size=(1, 7), mode="bicubic", align_corners=True).flatten()
    torch.testing.assert_close(got, torch.tensor([0, -.09375, 0, .5, 1, 1.09375, 1], dtype=torch.float64))


def test_area_is_adaptive_average_pooling():
    x = torch.randn(2, 3, 11, 7, dtype=torch.float64)
    torch.testing.assert_close(interpolate(x, size=(4, 3), mode="area"), F.adaptive_avg_pool2d(x, (4, 3)))


@pytest.mark.parametrize("mode", ["linear", "bicubic", "area", "nearest", "nearest-exact"])
def test_resize_matrix_rows_are_partitions_of_unity(mode):
    for n_in, n_out in [(5, 9), (9, 5), (4, 4), (1, 3), (7, 1)]:
        m = resize_matrix(n_in, n_out, mode, dtype=torch.float64)
        assert m.shape == (n_out, n_in)
        torch.testing.assert_close(m.sum(1), torch.ones(n_out, dtype=torch.float64))
        if mode.startswith("nearest"):
            assert ((m == 0) | (m == 1)).all()


# --- layouts, dtypes, non-finite values -----------------------------------------------------------

@pytest.mark.parametrize("mode", RANK_MODES[4])
def test_channels_last_equals_contiguous_and_keeps_its_layout(mode):
    x = torch.randn(2, 5, 7, 6)
    xc = x.contiguous(memory_format=torch.channels_last)
    kw = dict(size=(11, 4), mode=mode, **({"align_corners": False} if mode in INTERPOLATING else {}))
    got = interpolate(xc, **kw)
    torch.testing.assert_close(got, interpolate(x, **kw), rtol=1e-6, atol=1e-6)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, F.interpolate(xc, **kw), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "area"])
def test_bfloat16_and_integer_inputs(mode):
    x = torch.randn(1, 2, 5, 6).bfloat16()
    got, want = interpolate(x, scale_factor=2, mode=mode), F.interpolate(x, scale_factor=2, mode=mode)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=1.6e-2, atol=1e-2)
    if mode == "nearest":
        u = torch.randint(0, 255, (1, 2, 5, 6), dtype=torch.uint8)
        assert torch.equal(interpolate(u, size=(7, 13)), F.interpolate(u, size=(7, 13)))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "area", "nearest"])
def test_non_finite_values_stay_local_as_in_torch(mode):
    x = torch.randn(1, 1, 6, 6)
    x[0, 0, 2, 3], x[0, 0, 0, 0] = float("nan"), float("inf")
    got, want = interpolate(x, scale_factor=2, mode=mode), F.interpolate(x, scale_factor=2, mode=mode)
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-5, atol=1e-5)


def test_empty_batch_and_upsample_module():
    x = torch.randn(0, 3, 4, 4)
    assert interpolate(x, scale_factor=2, mode="bilinear").shape == (0, 3, 8, 8)
    y = torch.randn(2, 3, 5, 4)
    m = Upsample(scale_factor=2.5, mode="bicubic", align_corners=True)
    torch.testing.assert_close(m(y), F.interpolate(y, scale_factor=2.5, mode="bicubic", align_corners=True),
                               rtol=1e-5, atol=1e-5)


# --- the errors F.interpolate raises, for the same conditions -----------------------------------------

ERROR_CASES = [
    ("both size and scale_factor", (1, 1, 4), dict(size=8, scale_factor=2.0)),
    ("neither size nor scale_factor", (1, 1, 4), dict()),
    ("align_corners with nearest", (1, 1, 4), dict(size=8, align_corners=False)),
    ("align_corners with area", (1, 1, 4), dict(size=8, mode="area", align_corners=True)),
    ("align_corners with nearest-exact", (1, 1, 4), dict(size=8, mode="nearest-exact", align_corners=True)),
    ("size length", (1, 1, 4, 4), dict(size=(8, 8, 8))),
    ("scale_factor length", (1, 1, 4, 4), dict(scale_factor=(2.0,))),
    ("float size", (1, 1, 4, 4), dict(size=(8.0, 8))),
    ("recompute with size", (1, 1, 4), dict(size=8, recompute_scale_factor=True)),
    ("2-D input", (4, 4), dict(scale_factor=2.0)),
    ("6-D input", (1, 1, 2, 2, 2, 2), dict(scale_factor=2.0)),
    ("bilinear on 3-D", (1, 1, 4), dict(scale_factor=2.0, mode="bilinear")),
    ("linear on 4-D", (1, 1, 4, 4), dict(scale_factor=2.0, mode="linear")),
    ("trilinear on 4-D", (1, 1, 4, 4), dict(scale_factor=2.0, mode="trilinear")),
    ("bicubic on 5-D", (1, 1, 2, 2, 2), dict(scale_factor=2.0, mode="bicubic")),
    ("empty output", (1, 1, 4, 4), dict(scale_factor=0.1, mode="bilinear")),
    ("zero size", (1, 1, 4, 4), dict(size=(0, 3))),
]


@pytest.mark.parametrize("why, shape, kw", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_raises_where_torch_raises_with_its_exception_type(why, shape, kw):
    x = torch.randn(shape)
    with pytest.raises(Exception) as torch_error:
        F.interpolate(x, **kw)
    with pytest.raises(type(torch_error.value)) as ours:
        interpolate(x, **kw)
    assert isinstance(ours.value, (ValueError, TypeError))  # and the project's boundary convention


def test_no_error_where_torch_has_none():
    x = torch.randn(1, 1, 4, 4)
    assert interpolate(x, size=(0, 3), mode="area").shape == F.interpolate(x, size=(0, 3), mode="area").shape
    with pytest.raises(ValueError, match="mode"):
        interpolate(x, scale_factor=2.0, mode="lanczos3")


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([3, 4, 5]), st.sampled_from(["nearest", "nearest-exact"]), st.integers(1, 300),
       st.one_of(st.integers(1, 700).map(lambda n: {"size": n}),
                 st.floats(0.05, 4.0).map(lambda f: {"scale_factor": f})))
def test_nearest_picks_exactly_torchs_indices(rank, mode, n, kw):
    """Float32 index arithmetic as ATen's (incl. upsample_nearest2d's 1x/2x shortcuts): bit-equal outputs."""
    x = torch.arange(float(n)).view(*([1] * (rank - 1)), n)
    key, value = next(iter(kw.items()))
    kw = {key: [1] * (rank - 3) + [value] if key == "size" else [1.0] * (rank - 3) + [value]}
    assume(key != "scale_factor" or int(n * value) >= 1)  # an empty output is an error, tested elsewhere
    assert torch.equal(interpolate(x, mode=mode, **kw), F.interpolate(x, mode=mode, **kw))


@pytest.mark.parametrize("shape, factor", [((2, 3, 5), 3), ((2, 3, 4, 5), 2), ((1, 2, 3, 4, 2), 2), ((2, 1, 3, 4), 3)])
def test_integer_nearest_fast_path_backward(shape, factor):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    want = F.interpolate(x, scale_factor=factor, mode="nearest")
    g = torch.randn(want.shape, dtype=torch.float64)
    got = interpolate(x, scale_factor=factor, mode="nearest")
    assert torch.equal(got, want)
    (g_got,) = torch.autograd.grad(got, x, g)
    (g_want,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)


def test_area_mode_with_non_finite_inputs_equals_torch():
    x = torch.tensor([[[1.0, float("inf"), 2.0, 3.0, float("nan"), -float("inf"), 4.0]]])
    for size in (3, 7, 11, 16):  # shrink, keep, grow
        torch.testing.assert_close(interpolate(x, size=size, mode="area"), F.interpolate(x, size=size, mode="area"),
                                   equal_nan=True)
    x2 = x.view(1, 1, 1, 7).expand(1, 1, 3, 7).contiguous()
    torch.testing.assert_close(interpolate(x2, size=(5, 16), mode="area"),
                               F.interpolate(x2, size=(5, 16), mode="area"), equal_nan=True)


@pytest.mark.parametrize("factor", [float("nan"), float("inf"), [2.0, float("nan")]])
def test_non_finite_scale_factor_is_a_value_error_naming_it(factor):
    with pytest.raises(ValueError, match="scale_factor must be finite"):
        interpolate(torch.ones(1, 1, 4, 4), scale_factor=factor, mode="bilinear")


def test_area_mode_on_an_empty_spatial_dimension_is_a_value_error():
    with pytest.raises(ValueError, match="non-empty spatial"):
        interpolate(torch.ones(1, 1, 0, 4), size=(2, 2), mode="area")
    with pytest.raises(RuntimeError):  # torch refuses it too
        F.interpolate(torch.ones(1, 1, 0, 4), size=(2, 2), mode="area")
