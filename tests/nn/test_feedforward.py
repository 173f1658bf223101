"""FeedForward: plain and gated blocks, matched parameter counts (Shazeer 2020, LLaMA's 2/3 d_ff)."""
import pytest
import torch
import torch.nn.functional as F

from deepnotes.nn import FeedForward
from deepnotes.nn.activations import FeedForward as FeedForwardFromActivations
from deepnotes.nn.feedforward import gated_hidden


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("activation", ["glu", "reglu", "geglu", "swiglu", "bilinear_glu"])
def test_gated_variants_keep_the_plain_parameter_count(activation):
    d_model, d_ff = 48, 192  # d_ff divisible by 3: exact match
    plain = FeedForward(d_model, d_ff, "relu")
    gated = FeedForward(d_model, d_ff, activation)
    assert gated.d_hidden == 128 == gated_hidden(d_ff)
    assert n_params(plain) == 2 * d_model * d_ff == n_params(gated) == 3 * d_model * 128
    # Without the 2/3 scaling the gated block has 1.5x the parameters.
    assert n_params(FeedForward(d_model, d_ff, activation, match_params=False)) == 3 * d_model * d_ff


def test_d_ff_not_divisible_by_three_stays_within_one_row():
    plain, gated = FeedForward(64, 256, "gelu"), FeedForward(64, 256, "swiglu")
    assert gated.d_hidden == 170  # floor(2 * 256 / 3), LLaMA's int(2 * hidden / 3)
    assert 0 <= n_params(plain) - n_params(gated) <= 3 * 64


def test_forward_equals_the_equations():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=gen, dtype=torch.float64)
    ffn = FeedForward(16, 48, "swiglu", bias=True).double()
    w, v = ffn.w_in.weight.chunk(2, dim=0)  # [W | V]
    bw, bv = ffn.w_in.bias.chunk(2)
    want = F.linear(F.silu(F.linear(x, w, bw)) * F.linear(x, v, bv), ffn.w_out.weight, ffn.w_out.bias)
    torch.testing.assert_close(ffn(x), want, rtol=1e-12, atol=1e-12)
    plain = FeedForward(16, 48, "gelu").double()
    torch.testing.assert_close(plain(x), F.linear(F.gelu(F.linear(x, plain.w_in.weight)), plain.w_out.weight),
                               rtol=1e-12, atol=1e-12)


def test_callable_activation_shapes_and_backward():
    ffn = FeedForward(8, 32, torch.tanh, dropout=0.1)
    x = torch.randn(3, 7, 8, requires_grad=True)
    y = ffn(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_reexported_from_activations_and_errors():
    assert FeedForwardFromActivations is FeedForward
    with pytest.raises(ValueError, match="activation"):
        FeedForward(8, 32, "swish-glu")
    with pytest.raises(ValueError, match="d_ff"):
        FeedForward(8, 0)
    with pytest.raises(ValueError, match="d_model=8"):
        FeedForward(8, 32)(torch.randn(2, 9))
