"""ScoreMLP and ScoreUNet: shapes, time labels, gradients, determinism, a small overfit, bad input."""
import math

import pytest
import torch

from deepnotes.diffusion.nets import ScoreMLP, ScoreUNet, TimeEmbedding, sinusoidal_embedding
from deepnotes.nn.init import rng_scope
from deepnotes.nn.upsampling import ResizeConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_unet(resolution: int = 8, **kw) -> ScoreUNet:
    kw = {"channels": 8, "embed_dim": 16, **kw}
    return ScoreUNet(resolution=resolution, generator=gen(0), **kw)


NETS = {
    "mlp2": (lambda: ScoreMLP(generator=gen(0)), (5, 2)),
    "mlp3-sinusoidal": (lambda: ScoreMLP(dim=3, hidden=32, depth=2, embedding="sinusoidal", generator=gen(0)), (5, 3)),
    "unet8": (lambda: small_unet(8), (3, 1, 8, 8)),
    "unet16": (lambda: small_unet(16, channel_mult=(1, 2, 2), num_res_blocks=2), (3, 1, 16, 16)),
    "unet16-rgb": (lambda: small_unet(16, in_channels=3), (2, 3, 16, 16)),
}


@pytest.mark.parametrize("name", NETS)
def test_shape_scalar_and_batched_t_and_gradients(name):
    build, shape = NETS[name]
    net = build()
    x = torch.randn(*shape, generator=gen(1))
    t = torch.full((shape[0],), 0.3)
    out = net(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.allclose(net(x, 0.3), out) and torch.allclose(net(x, torch.tensor(0.3)), out)
    assert not torch.allclose(net(x, 0.7), out)  # the label matters
    x.requires_grad_(True)
    net(x, t).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_default_unet_sizes():
    for R in (8, 16):
        net = ScoreUNet(resolution=R, generator=gen(0))
        x = torch.randn(2, 1, R, R)
        assert net(x, torch.tensor([0.1, 0.9])).shape == (2, 1, R, R)
    assert any(isinstance(m, ResizeConv2d) for m in net.modules())  # upsampling through deepnotes.nn


def test_deterministic_under_rng_scope_and_generator():
    def build():
        with rng_scope(gen(5)):
            return ScoreMLP(hidden=16, depth=1)

    a, b = build(), build()
    c = ScoreMLP(hidden=16, depth=1, generator=gen(6))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert "time.W" in sa  # the Fourier frequencies travel with the weights
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["inp.weight"], sc["inp.weight"])
    state = torch.get_rng_state()
    u1, u2 = small_unet(), small_unet()
    assert torch.equal(state, torch.get_rng_state())  # generator=: the global generator is restored
    assert all(torch.equal(v, u2.state_dict()[k]) for k, v in u1.state_dict().items())
    d = ScoreMLP(hidden=16, depth=1, generator=gen(7))
    d.load_state_dict(sa)
    x = torch.randn(4, 2)
    assert torch.equal(d(x, 0.5), a(x, 0.5))


def test_embeddings_closed_forms():
    e = sinusoidal_embedding(torch.tensor([0.0, 1.0]), 8)
    assert torch.equal(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    w = torch.tensor([10000 ** (-k / 4) for k in range(4)])
    assert torch.allclose(e[1], torch.cat([torch.sin(w), torch.cos(w)]))
    assert sinusoidal_embedding(torch.tensor([2.0]), 7).shape == (1, 7)
    with rng_scope(gen(0)):
        te = TimeEmbedding(8, 4, "fourier", fourier_scale=16.0, log_input=True)
    sigma = torch.tensor([0.01, 1.0, 50.0])
    arg = 2 * math.pi * torch.log(sigma)[:, None] * te.W[None, :]
    assert torch.allclose(te.embed(sigma), torch.cat([torch.sin(arg), torch.cos(arg)], 1))
    with pytest.raises(ValueError, match="t > 0"):
        te.embed(torch.tensor([0.0]))


def test_float64_network():
    net = ScoreMLP(hidden=16, generator=gen(0)).double()
    x = torch.randn(3, 2, dtype=torch.float64)
    assert net(x, torch.tensor([0.1, 0.2, 0.3])).dtype == torch.float64


def test_index_and_sigma_labels():
    x = torch.randn(4, 2)
    ddpm = ScoreMLP(hidden=16, embedding="sinusoidal", generator=gen(0))
    assert ddpm(x, torch.tensor([0, 10, 500, 999])).shape == (4, 2)  # integer DDPM indices
    ve = ScoreMLP(hidden=16, log_input=True, generator=gen(0))
    assert torch.isfinite(ve(x, torch.tensor([0.01, 0.5, 5.0, 50.0]))).all()


def test_mlp_overfits_a_fixed_target():
    # a Gaussian-like score field -x (1 + t) on a fixed batch: the loss falls by three orders of magnitude
    g = gen(0)
    x, t = torch.randn(128, 2, generator=g), torch.rand(128, generator=g)
    target = -x * (1 + t[:, None])
    net = ScoreMLP(hidden=64, depth=2, embed_dim=32, generator=gen(1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss = (net(x, t) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3 * first


@pytest.mark.parametrize("kwargs,match", [
    ({"dim": 0}, "dim"), ({"hidden": 2.5}, "hidden"), ({"depth": 0}, "depth"), ({"embed_dim": 7}, "embed_dim"),
    ({"activation": "swiglu"}, "activation"), ({"activation": "rrelu"}, "activation"),
    ({"activation": "nope"}, "activation"),
    ({"embedding": "learned"}, "embedding"), ({"fourier_scale": 0}, "fourier_scale"),
])
def test_mlp_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScoreMLP(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"in_channels": 0}, "in_channels"), ({"channels": -1}, "channels"), ({"channel_mult": ()}, "channel_mult"),
    ({"channel_mult": (1, 0)}, "channel_mult"), ({"num_res_blocks": 0}, "num_res_blocks"),
    ({"resolution": 10, "channel_mult": (1, 2, 2)}, "resolution"), ({"embed_dim": 0}, "embed_dim"),
])
def test_unet_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScoreUNet(**kwargs)


def test_bad_forward_inputs():
    mlp, unet = ScoreMLP(hidden=8, generator=gen(0)), small_unet(8)
    with pytest.raises(ValueError, match=r"x must be \(B, 2\)"):
        mlp(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match="t must be"):
        mlp(torch.randn(4, 2), torch.rand(4, 1))
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 8, 8\)"):
        unet(torch.randn(2, 1, 16, 16), 0.5)
    with pytest.raises(ValueError, match="t must be"):
        unet(torch.randn(2, 1, 8, 8), torch.rand(3))
