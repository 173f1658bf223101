"""Pixel shuffle, transposed convolution, max unpooling, ICNR and the upsampling modules against torch."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from deepnotes.nn.upsampling import (
    PixelShuffle, PixelUnshuffle, ResizeConv2d, SubPixelConv2d, conv_transpose2d, conv_transpose2d_output_size,
    conv_transpose2d_reference, icnr_, interpolate, max_unpool2d, pixel_shuffle, pixel_unshuffle,
)

# --- pixel shuffle --------------------------------------------------------------------------------------


def test_pixel_shuffle_reference_layout():
    y = pixel_shuffle(torch.arange(24.0).view(1, 4, 2, 3), 2)
    assert y.shape == (1, 1, 4, 6)
    assert y[0, 0, 0].tolist() == [0, 6, 1, 7, 2, 8]
    assert y[0, 0, 1].tolist() == [12, 18, 13, 19, 14, 20]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=0, max_size=2), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 5), st.integers(1, 5))
def test_pixel_shuffle_and_unshuffle_equal_torch(lead, c, r, h, w):
    x = torch.randn(*lead, c * r * r, h, w)
    y = pixel_shuffle(x, r)
    assert torch.equal(y, F.pixel_shuffle(x, r))
    assert torch.equal(pixel_unshuffle(y, r), F.pixel_unshuffle(y, r))
    assert torch.equal(pixel_unshuffle(y, r), x)
    assert torch.equal(PixelShuffle(r)(x), y) and torch.equal(PixelUnshuffle(r)(y), x)


def test_pixel_shuffle_backward_and_errors():
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    g = torch.randn(2, 2, 6, 6)
    (ours,) = torch.autograd.grad(pixel_shuffle(x, 2), x, g)
    (want,) = torch.autograd.grad(F.pixel_shuffle(x, 2), x, g)
    assert torch.equal(ours, want)
    with pytest.raises(ValueError, match="divisible by r"):
        pixel_shuffle(torch.randn(1, 6, 2, 2), 2)
    with pytest.raises(ValueError, match="divisible by r"):
        pixel_unshuffle(torch.randn(1, 1, 5, 4), 2)
    with pytest.raises(ValueError, match="positive int"):
        pixel_shuffle(torch.randn(1, 4, 2, 2), 0)


# --- transposed convolution -------------------------------------------------------------------------------

@st.composite
def conv_t_cases(draw):
    groups = draw(st.sampled_from([1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    op = tuple(draw(st.integers(0, max(s[i], d[i]) - 1)) for i in range(2))
    hw = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    out = [conv_transpose2d_output_size(hw[i], k[i], s[i], p[i], op[i], d[i]) for i in range(2)]
    if min(out) < 1:
        p = (0, 0)
    return dict(groups=groups, c_in=c_in, c_out=c_out, k=k, stride=s, dilation=d, padding=p, output_padding=op, hw=hw)


@settings(max_examples=50, deadline=None)
@given(conv_t_cases(), st.sampled_from([torch.float32, torch.float64]), st.booleans(), st.integers(0, 2**31 - 1))
def test_conv_transpose2d_matches_torch_forward_and_backward(case, dtype, use_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, case["c_in"], *case["hw"], generator=gen).to(dtype).requires_grad_()
    w = torch.randn(case["c_in"], case["c_out"] // case["groups"], *case["k"], generator=gen).to(dtype).requires_grad_()
    b = torch.randn(case["c_out"], generator=gen).to(dtype).requires_grad_() if use_bias else None
    kw = {k: case[k] for k in ("stride", "padding", "output_padding", "groups", "dilation")}
    want = F.conv_transpose2d(x, w, b, **kw)
    g = torch.randn(want.shape, generator=gen).to(dtype)
    inputs = (x, w) + ((b,) if use_bias else ())
    grads_want = torch.autograd.grad(want, inputs, g)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for fn in (conv_transpose2d, conv_transpose2d_reference):
        got = fn(x, w, b, **kw)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        for gg, gw in zip(torch.autograd.grad(got, inputs, g), grads_want):
            torch.testing.assert_close(gg, gw, rtol=tol, atol=tol)


def test_conv_transpose_reference_shapes_and_overlap():
    assert conv_transpose2d_output_size(5, kernel=3, stride=2, padding=1, output_padding=1, dilation=2) == 12
    ones = torch.ones(1, 1, 1, 4, dtype=torch.float64)
    y3 = conv_transpose2d(ones, torch.ones(1, 1, 1, 3, dtype=torch.float64), stride=(1, 2))
    assert y3.flatten().tolist() == [1, 1, 2, 1, 2, 1, 2, 1, 1]  # k=3, s=2: uneven overlap
    y4 = conv_transpose2d(ones, torch.ones(1, 1, 1, 4, dtype=torch.float64), stride=(1, 2))
    assert y4.flatten()[2:-2].unique().tolist() == [2.0]  # k=4, s=2: uniform interior
    x = torch.randn(3, 4, 5)  # unbatched (C, H, W)
    w = torch.randn(3, 2, 3, 3)
    torch.testing.assert_close(conv_transpose2d(x, w, stride=2), F.conv_transpose2d(x, w, stride=2))


def test_conv_transpose_errors():
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(x, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="weight.shape"):
        conv_transpose2d(x, torch.randn(3, 3, 3, 3))
    with pytest.raises(ValueError, match="bias"):
        conv_transpose2d(x, w, torch.randn(2))
    with pytest.raises(TypeError, match="stride"):
        conv_transpose2d(x, w, stride=1.5)


# --- max unpooling -------------------------------------------------------------------------------------------

def test_max_unpool_reference_values():
    x = torch.arange(1.0, 26.0).view(1, 1, 5, 5)
    pooled, idx = F.max_pool2d(x, 2, stride=2, return_indices=True)
    out = max_unpool2d(pooled, idx, 2, stride=2, output_size=(5, 5))
    assert out.shape == (1, 1, 5, 5)
    nz = {(int(i), int(j)): out[0, 0, i, j].item() for i, j in out[0, 0].nonzero()}
    assert nz == {(1, 1): 7.0, (1, 3): 9.0, (3, 1): 17.0, (3, 3): 19.0}
    pooled4, idx4 = F.max_pool2d(x[..., :4, :4], 2, stride=2, return_indices=True)
    assert max_unpool2d(pooled4, idx4, 2).shape == (1, 1, 4, 4)  # default (H - 1) s - 2p + k


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 1), st.integers(3, 9), st.integers(3, 9),
       st.integers(0, 2**31 - 1))
def test_max_unpool_matches_torch(k, s, p, h, w, seed):
    if p > k // 2:
        p = 0
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pooled, idx = F.max_pool2d(x, k, s, p, return_indices=True)
    pooled.requires_grad_()
    default = [(pooled.shape[2 + i] - 1) * s - 2 * p + k for i in range(2)]
    sizes = []
    if int(idx.max()) < default[0] * default[1]:
        sizes.append(None)
    if abs(h - default[0]) < s and abs(w - default[1]) < s:
        sizes.append((2, 3, h, w))  # the pooled input's own size: the exact inverse placement
    for size in sizes:
        want = F.max_unpool2d(pooled, idx, k, s, p, output_size=size)
        got = max_unpool2d(pooled, idx, k, s, p, output_size=size)
        assert torch.equal(got, want)
        g = torch.randn(want.shape, dtype=torch.float64)
        assert torch.equal(torch.autograd.grad(got, pooled, g)[0], torch.autograd.grad(want, pooled, g)[0])


def test_max_unpool_errors():
    pooled, idx = F.max_pool2d(torch.randn(1, 1, 5, 5), 2, 2, return_indices=True)
    with pytest.raises(ValueError, match="output_size"):
        max_unpool2d(pooled, idx, 2, output_size=(7, 7))
    with pytest.raises(ValueError, match="indices"):
        max_unpool2d(pooled, idx + 100, 2)
    with pytest.raises(ValueError, match="shape"):
        max_unpool2d(pooled, idx[..., :1], 2)


# --- ICNR, sub-pixel and resize convolutions --------------------------------------------------------------------

def test_icnr_copies_one_kernel_per_subpixel():
    w = torch.empty(3 * 4, 5, 3, 3)
    icnr_(w, 2, generator=torch.Generator().manual_seed(0))
    kernels = w.view(3, 4, 5, 3, 3)
    assert torch.equal(kernels, kernels[:, :1].expand_as(kernels))
    assert kernels[0, 0].std() > 0
    w2 = torch.empty(12, 5, 3, 3)
    icnr_(w2, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, w2)  # randomness only from the generator
    with pytest.raises(ValueError, match="divisible"):
        icnr_(torch.empty(6, 1, 3, 3), 2)


def test_icnr_subpixel_conv_equals_nearest_resize_of_a_conv_at_init():
    layer = SubPixelConv2d(4, 3, scale=2, generator=torch.Generator().manual_seed(1)).double()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    sub = layer.conv.weight[::4]  # the kernel every sub-pixel shares
    want = interpolate(F.conv2d(x, sub, layer.conv.bias[::4], padding=1), scale_factor=2, mode="nearest")
    torch.testing.assert_close(layer(x), want, rtol=1e-12, atol=1e-12)
    assert layer(x).shape == (2, 3, 10, 12)


def test_resize_conv_is_conv_of_nearest_resize():
    layer = ResizeConv2d(3, 2, scale=2).double()
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    want = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), layer.conv.weight, layer.conv.bias, padding=1)
    torch.testing.assert_close(layer(x), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="kernel_size"):
        ResizeConv2d(3, 2, kernel_size=4)
