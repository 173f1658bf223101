"""Temporal shift (references/video.md section 7, checks 1, 2 and 4) against a loop over the definition."""
import pytest
import torch
import torch.nn.functional as F

from deepnotes.video.models.temporal import (OnlineTemporalShift, TemporalShift, TemporalShiftConv,
                                             shift_conv_weight, temporal_shift, unidirectional_shift)

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [(2, 4, 16), (1, 3, 10), (3, 1, 8), (2, 5, 7)]  # (N, T, C): C % 8 != 0, T = 1, C < 8


def loop_shift(x, T, fold, first_from, second_from):
    """y[n,t,c] = x[n, t+first_from, c] on the first fold, x[n, t+second_from, c] on the second, 0 outside."""
    N = x.shape[0] // T
    x5 = x.view(N, T, *x.shape[1:])
    y = torch.zeros_like(x5)
    for t in range(T):
        for c in range(x.shape[1]):
            if c < 2 * fold:
                src = t + (first_from if c < fold else second_from)
                if 0 <= src < T:
                    y[:, t, c] = x5[:, src, c]
            else:
                y[:, t, c] = x5[:, t, c]
    return y.view_as(x)


def _x(N, T, C, seed=0):
    return torch.randn(N * T, C, 3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("N,T,C", CASES)
def test_shift_matches_definition(N, T, C):
    x = _x(N, T, C)
    y = temporal_shift(x, T)
    torch.testing.assert_close(y, loop_shift(x, T, C // 8, +1, -1), rtol=0, atol=0)


@pytest.mark.parametrize("N,T,C", CASES)
def test_inplace_equals_naive_forward_and_backward(N, T, C):
    x = _x(N, T, C).requires_grad_()
    g = _x(N, T, C, seed=1)
    y_naive = temporal_shift(x, T)
    (gx_naive,) = torch.autograd.grad(y_naive, x, g)

    x_work = x * 1.0  # not a leaf: the in-place version overwrites it
    ptr = x_work.data_ptr()
    y_inplace = temporal_shift(x_work, T, inplace=True)
    assert y_inplace.data_ptr() == ptr  # the result lives in the input's memory
    (gx_inplace,) = torch.autograd.grad(y_inplace, x, g)
    torch.testing.assert_close(y_inplace, y_naive, rtol=0, atol=0)
    torch.testing.assert_close(gx_inplace, gx_naive, rtol=0, atol=0)


@pytest.mark.parametrize("N,T,C", CASES)
@pytest.mark.parametrize("inplace", [False, True])
def test_backward_is_the_opposite_shift(N, T, C, inplace):
    x = _x(N, T, C).requires_grad_()
    g = _x(N, T, C, seed=2)
    y = temporal_shift(x * 1.0, T, inplace=inplace)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, loop_shift(g, T, C // 8, -1, +1), rtol=0, atol=0)


def test_untouched_channels_and_zero_ends():
    N, T, C, fold_div = 2, 6, 20, 4
    fold = C // fold_div
    x = _x(N, T, C) + 10.0  # no zeros in x
    y = temporal_shift(x, T, fold_div).view(N, T, C, 3, 2)
    x5 = x.view(N, T, C, 3, 2)
    assert torch.equal(y[:, :, 2 * fold:], x5[:, :, 2 * fold:])
    assert (y[:, -1, :fold] == 0).all() and (y[:, 0, fold:2 * fold] == 0).all()
    assert (y[:, :-1, :fold] != 0).all() and (y[:, 1:, fold:2 * fold] != 0).all()
    # at fold_div = 8 a quarter of the channels move: at an interior frame exactly C/4 channels change
    x = _x(1, 3, 32)
    moved = temporal_shift(x, 3).view(3, 32, -1)[1].ne(x.view(3, 32, -1)[1]).any(dim=1)
    assert moved.sum() == 32 // 4 and moved[:8].all()


@pytest.mark.parametrize("fold_div", [8, 4])
def test_shift_is_a_one_hot_depthwise_temporal_conv(fold_div):
    N, T, C, H, W = 2, 5, 16, 3, 2
    x = _x(N, T, C)
    seq = x.view(N, T, C, H, W).permute(0, 3, 4, 2, 1).reshape(-1, C, T)  # (N*H*W, C, T)
    y = F.conv1d(seq, shift_conv_weight(C, fold_div).double(), padding=1, groups=C)
    y = y.view(N, H, W, C, T).permute(0, 4, 3, 1, 2).reshape(N * T, C, H, W)
    torch.testing.assert_close(y, temporal_shift(x, T, fold_div), rtol=0, atol=0)
    conv = TemporalShiftConv(C, T, fold_div).double()  # TDN's learnable conv starts as the shift
    torch.testing.assert_close(conv(x), temporal_shift(x, T, fold_div), rtol=0, atol=0)


def test_unidirectional_shift_matches_definition():
    x = _x(2, 5, 16)
    y = unidirectional_shift(x, 5)
    fold = 2
    torch.testing.assert_close(y, loop_shift(x, 5, fold, -1, 0), rtol=0, atol=0)  # second fold: from t itself


def test_online_shift_equals_offline_on_every_prefix():
    N, T, C = 2, 6, 16
    x = _x(N, T, C).float()
    x5 = x.view(N, T, C, 3, 2)
    online = OnlineTemporalShift(n_segments=T)
    online.streaming = True
    streamed = [online(x5[:, t]) for t in range(T)]  # one frame per call, (N, C, H, W)
    for k in range(1, T + 1):
        offline = unidirectional_shift(x5[:, :k].reshape(N * k, C, 3, 2), k).view(N, k, C, 3, 2)
        torch.testing.assert_close(torch.stack(streamed[:k], 1), offline, rtol=0, atol=0)
    online.reset()  # a new stream starts from zeros
    assert (online(x5[:, 3])[:, :2] == 0).all()
    with pytest.raises(ValueError, match="reset"):
        online(torch.zeros(3, C, 3, 2))
    online.streaming = False
    torch.testing.assert_close(online(x), unidirectional_shift(x, T), rtol=0, atol=0)


def test_module_and_errors():
    x = _x(2, 4, 16)
    torch.testing.assert_close(TemporalShift(4)(x), temporal_shift(x, 4), rtol=0, atol=0)
    with pytest.raises(ValueError, match="n_segments"):
        temporal_shift(x, 3)  # 8 frames are not N * 3
    with pytest.raises(ValueError, match="fold_div"):
        temporal_shift(x, 4, fold_div=1)
    with pytest.raises(ValueError, match="x must be"):
        temporal_shift(torch.zeros(4), 4)
