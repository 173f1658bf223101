"""Every video model: shapes, backward, no NaN, flow input, and each model's defining property."""
import pytest
import torch
from torch import nn

from deepnotes.video.models import MODELS, THREE_D, TWO_D, build_model
from deepnotes.video.models.tam import TAM
from deepnotes.video.models.tdn import LongTermTDM

pytestmark = pytest.mark.usefixtures("one_thread")

N, T, S, K, BW = 2, 4, 16, 5, 8  # clips, frames, frame size, classes, base width


def _build(name, in_channels=3, seed=0, **kw):
    if name != "c3d":
        kw.setdefault("zero_init_residual", False)  # blocks that start as the identity would hide bugs
    return build_model(name, K, T, in_channels=in_channels, depth=18 if name != "tam" else 10, base_width=BW,
                       generator=torch.Generator().manual_seed(seed), **kw)


def _clip(C=3, T_=T, seed=1, n=N):
    return torch.randn(n, C, T_, S, S, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_channels", [3, 4])  # RGB, and stacked flow with L = 2 (2L channels)
def test_shapes_backward_no_nan(name, in_channels):
    model = _build(name, in_channels)
    x = _clip(in_channels).requires_grad_()
    logits = model(x)
    assert logits.shape == (N, K) and torch.isfinite(logits).all()
    assert isinstance(model.head, nn.Linear) and model.head.out_features == K
    feats = model.forward_features(x)
    assert feats.shape == (N, model.head.in_features)
    logits.logsumexp(1).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) > 0 and all(torch.isfinite(g).all() for g in grads)
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", TWO_D)
def test_2d_models_need_t_equal_n_segments(name):
    model = _build(name)
    with pytest.raises(ValueError, match=r"T=6 .*n_segments=4"):
        model(_clip(T_=6))
    with pytest.raises(ValueError, match="in_channels=3"):
        model(_clip(C=2))


@pytest.mark.parametrize("name", THREE_D)
def test_3d_models_take_any_t_and_expose_temporal_convs(name):
    model = _build(name).eval()
    assert model(_clip(T_=1)).shape == model(_clip(T_=7)).shape == (N, K)
    temporal = [m for m in model.modules() if isinstance(m, nn.Conv3d) and m.kernel_size[0] == 3]
    assert len(temporal) >= 8


def test_tsn_is_order_blind_and_tsm_is_not():
    x = _clip()
    tsn, tsm = _build("tsn").eval(), _build("tsm").eval()
    with torch.no_grad():
        torch.testing.assert_close(tsn(x.flip(2)), tsn(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(tsm(x.flip(2)), tsm(x), rtol=1e-4, atol=1e-5)


def test_tsm_has_tsn_parameters():
    tsn, tsm = _build("tsn", seed=3), _build("tsm", seed=3)
    assert [p.shape for p in tsn.parameters()] == [p.shape for p in tsm.parameters()]
    sd_tsn, sd_tsm = tsn.state_dict(), tsm.state_dict()
    assert list(sd_tsn) == list(sd_tsm)  # the shift adds no parameter and no buffer
    assert all(torch.equal(sd_tsn[k], sd_tsm[k]) for k in sd_tsn)  # same generator -> same weights


def test_online_tsm_streams_like_the_offline_model():
    model = _build("tsm", online=True).eval()
    x = _clip()
    with torch.no_grad():
        offline = model.head(model.frame_features(x))  # (N, T, K) per-frame logits
        model.reset_stream()
        streamed = torch.stack([model.stream(x[:, :, t]) for t in range(T)], 1)
    torch.testing.assert_close(streamed, offline, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="online=True"):
        _build("tsm").stream(x[:, :, 0])


def test_tdn_windows_and_clip_len_5():
    model = _build("tdn")
    frames = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1).expand(1, 3, T, S, S)
    win = model.windows(frames)[0, :, :, 0, 0, 0]  # (n_segments, 5) frame indices
    assert win.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]
    tdn5 = _build("tdn", clip_len=5)
    assert tdn5(_clip(T_=5 * T)).shape == (N, K)
    with pytest.raises(ValueError, match="T=4"):
        tdn5(_clip())
    with pytest.raises(ValueError, match="clip_len"):
        _build("tdn", clip_len=3)


def test_long_term_tdm_is_the_identity_without_differences():
    m = LongTermTDM(32, n_segments=1).eval()  # T = 1: no neighbours, gate sigmoid(0) - 0.5 = 0
    x = torch.randn(3, 32, 4, 4)
    torch.testing.assert_close(m(x), x)


def test_tam_matches_its_formula():
    C = 16
    m = TAM(C, n_segments=T).eval()
    x = torch.randn(N * T, C, 3, 3, generator=torch.Generator().manual_seed(4))
    x5 = x.view(N, T, C, 3, 3).transpose(1, 2)  # (N, C, T, H, W)
    s = x5.mean(dim=(3, 4))
    with torch.no_grad():
        k = m.global_branch(s.reshape(N * C, T)).view(N, C, 3)
        a = m.local_branch(s)
        out = m(x).view(N, T, C, 3, 3).transpose(1, 2)
    assert (k >= 0).all() and torch.allclose(k.sum(-1), torch.ones(N, C))  # softmax: an averaging kernel
    y = nn.functional.pad(x5 * a[..., None, None], (0, 0, 0, 0, 1, 1))  # zero frames at both ends
    ref = sum(k[:, :, j, None, None, None] * y[:, :, j:j + T] for j in range(3))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["tsm", "tam", "r2plus1d"])
def test_bottleneck_depth_50(name):
    model = build_model(name, K, T, depth=50, base_width=4)
    assert model(_clip(n=1 if name != "tam" else 2)).shape[1] == K
    assert model.head.in_features == 4 * 8 * 4


def test_build_model_arguments():
    a = build_model("tsm", K, T, base_width=BW, generator=torch.Generator().manual_seed(7))
    b = build_model("tsm", K, T, base_width=BW, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert build_model("tsn", K, T, depth=10, width=0.125).head.in_features == 8 * 8
    with pytest.raises(ValueError, match="unknown video model 'i3d'"):
        build_model("i3d", K, T)
    with pytest.raises(ValueError, match="depth"):
        build_model("tsn", K, T, depth=20)
    with pytest.raises(ValueError, match="n_segments"):
        build_model("tsn", K, 0)
    with pytest.raises(ValueError, match="dropout"):
        build_model("r3d", K, T, dropout=1.5)
