"""ResNet backbones: torchvision's parameter counts, ResNet-50's ~4.1G multiply-adds, 3x3x3 = 3 x 3x3, hooks."""
import pytest
import torch
from torch import nn

from deepnotes.video.models.resnet import BlockHooks, ResNet, r2plus1d_mid_channels
from deepnotes.video.profiling import count_multiply_adds

pytestmark = pytest.mark.usefixtures("one_thread")


def _meta_resnet(depth, **kw):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return ResNet(depth, **kw)


@pytest.mark.parametrize("depth,params", [(18, 11_689_512), (50, 25_557_032)])
def test_torchvision_parameter_counts(depth, params):
    # torchvision resnet18 / resnet50 with the 1000-class fc (a closed-form property of the architecture)
    m = _meta_resnet(depth, num_classes=1000)
    assert sum(p.numel() for p in m.parameters()) == params


@pytest.mark.parametrize("depth,gmacs", [(18, 1.82), (50, 4.1)])
def test_imagenet_multiply_adds(depth, gmacs):
    # ResNet-50 ~4.1G multiply-adds at 224^2 (mmaction2 / references section 7), ResNet-18 ~1.8G
    m = _meta_resnet(depth, num_classes=1000)
    macs, by_op = count_multiply_adds(m.forward_features, torch.empty(1, 3, 224, 224, device="meta"))
    assert macs == pytest.approx(gmacs * 1e9, rel=0.01)
    assert set(by_op) == {"aten.convolution"}


def test_3x3x3_conv_has_three_times_params_and_flops_of_3x3():
    C, T, H, W = 4, 5, 6, 7
    c2, c3 = nn.Conv2d(C, C, 3, padding=1, bias=False), nn.Conv3d(C, C, 3, padding=1, bias=False)
    assert c3.weight.numel() == 3 * c2.weight.numel() == 3 * C * C * 9
    macs2, _ = count_multiply_adds(c2, torch.zeros(T, C, H, W))  # the 2D conv on each of T frames
    macs3, _ = count_multiply_adds(c3, torch.zeros(1, C, T, H, W))
    assert macs2 == T * H * W * C * C * 9 and macs3 == 3 * macs2


def test_inflated_resnet_convs_are_three_times_the_2d_ones():
    def conv_params(m, kernel):
        return sum(c.weight.numel() for c in m.modules()
                   if isinstance(c, (nn.Conv2d, nn.Conv3d)) and c.kernel_size == kernel)
    r2, r3 = _meta_resnet(18, base_width=8), _meta_resnet(18, base_width=8, conv="3d")
    assert conv_params(r3, (3, 3, 3)) == 3 * conv_params(r2, (3, 3)) > 0


def test_r2plus1d_mid_channels():
    # torchvision's R(2+1)D-18: 64 -> 64 blocks use 144 mid-channels, and then params match the 3D conv
    assert r2plus1d_mid_channels(64, 64) == 144
    assert 64 * 144 * 9 + 144 * 64 * 3 == 64 * 64 * 27
    for cin, cout in [(8, 16), (16, 16), (3, 8)]:
        m = r2plus1d_mid_channels(cin, cout)
        assert cin * m * 9 + m * cout * 3 <= 27 * cin * cout < cin * (m + 1) * 9 + (m + 1) * cout * 3


@pytest.mark.parametrize("conv", ["2d", "3d", "2plus1d"])
@pytest.mark.parametrize("depth", [10, 50])
def test_forward_shapes_and_zero_init(conv, depth):
    m = ResNet(depth, in_channels=2, base_width=4, conv=conv, num_classes=3)
    x = torch.randn(2, 2, 16, 16) if conv == "2d" else torch.randn(2, 2, 3, 16, 16)
    assert m(x).shape == (2, 3)
    assert m.forward_features(x).shape == (2, m.feature_dim)
    assert m.feature_dim == 4 * 8 * (4 if depth == 50 else 1)
    assert all((blk.last_bn.weight == 0).all() for blk in m.blocks())
    m = ResNet(depth, base_width=4, conv=conv, zero_init_residual=False)
    assert all((blk.last_bn.weight == 1).all() for blk in m.blocks())


def test_hooks_are_called_once_per_block_and_keep_their_init():
    specs = []

    def hook(spec):
        specs.append(spec)
        pre = nn.Conv2d(spec.in_channels, spec.in_channels, 1, bias=False)
        nn.init.constant_(pre.weight, 0.5)
        return BlockHooks(pre=pre, mid=nn.Identity())

    m = ResNet(34, base_width=4, block_hook=hook)
    assert [s.stage for s in specs] == [0] * 3 + [1] * 4 + [2] * 6 + [3] * 3
    assert [(s.in_channels, s.mid_channels) for s in specs[2:5]] == [(4, 4), (4, 8), (8, 8)]
    assert all((blk.pre.weight == 0.5).all() for blk in m.blocks())  # not re-drawn by the ResNet's init


def test_errors():
    with pytest.raises(ValueError, match="depth"):
        ResNet(20)
    with pytest.raises(ValueError, match="conv"):
        ResNet(18, conv="4d")
    with pytest.raises(ValueError, match="5 dims"):
        ResNet(10, base_width=4, conv="3d").forward_features(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="num_classes=None"):
        ResNet(10, base_width=4)(torch.zeros(1, 3, 16, 16))
