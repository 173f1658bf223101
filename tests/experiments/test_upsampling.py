"""Note 7 experiment: tiny-scale wiring, and closed forms of its measures."""
import pytest
import torch

from deepnotes.experiments.upsampling import (LAYERS, LEARNED, checkerboard_index, make_upsampler, psnr,
                                              render_digits)


def test_tiny_run_is_wired(run_tiny):
    result, ctx = run_tiny("upsampling")
    labels = [c.label for c in result.checks]
    assert labels == ["parity vs torch", "tconv k3s2 checkerboard", "resize-conv checkerboard",
                      "ICNR sub-pixel checkerboard"] + [f"SR {up} gain (dB)" for up in LEARNED]
    m = result.metrics
    assert {"psnr_nearest", "psnr_bilinear", "psnr_bicubic", "psnr_tconv_k4_s2", "psnr_resize_conv",
            "psnr_sub_pixel_icnr", "checkerboard_tconv_k3_s2", "checkerboard_sub_pixel_no_icnr"} <= set(m)
    assert all(0.0 <= m[k] <= 1.0 for k in m if k.startswith("checkerboard"))
    assert result.checks[4].value == pytest.approx(m["psnr_tconv_k4_s2"] - max(m["psnr_nearest"], m["psnr_bilinear"],
                                                                               m["psnr_bicubic"]))
    assert sorted(f.name for f in ctx.figures) == ["checkerboard", "super-resolution"]
    assert len(result.tables) == 3


def test_checkerboard_index_of_a_constant_image_is_zero():
    assert checkerboard_index(torch.full((2, 3, 16, 16), 0.7)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("pattern", ["ij", "i", "j"])
def test_checkerboard_index_of_a_pure_stride_pattern_is_one(pattern):
    i, j = torch.meshgrid(torch.arange(16), torch.arange(18), indexing="ij")
    e = {"ij": i + j, "i": i, "j": j}[pattern]
    y = ((-1.0) ** e).expand(1, 2, 16, 18)
    assert checkerboard_index(y) == pytest.approx(1.0, abs=1e-12)


def test_checkerboard_index_of_a_half_and_half_mix():
    i, j = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    y = (1.0 + (-1.0) ** (i + j)).view(1, 1, 16, 16)  # equal energy at 0 and at (pi, pi)
    assert checkerboard_index(y) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("kind", LAYERS)
def test_make_upsampler_doubles_the_size_and_draws_only_from_the_generator(kind):
    a = make_upsampler(kind, 4, 3, torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global state must not matter
    b = make_upsampler(kind, 4, 3, torch.Generator().manual_seed(5))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert a(torch.randn(2, 4, 5, 7)).shape == (2, 3, 10, 14)


def test_resize_conv_and_icnr_have_no_checkerboard_on_a_constant_input():
    flat = torch.ones(1, 8, 12, 12, dtype=torch.float64)
    for kind in ("resize-conv", "sub-pixel ICNR"):
        layer = make_upsampler(kind, 8, 8, torch.Generator().manual_seed(0)).double()
        with torch.no_grad():
            assert checkerboard_index(layer(flat)) <= 1e-20


def test_make_upsampler_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown kind"):
        make_upsampler("bilinear", 4, 4, torch.Generator())


def test_psnr_closed_form_and_rendered_digits():
    target = torch.full((3, 1, 4, 4), 0.5)
    assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    hr = render_digits()
    assert hr.shape == (1797, 1, 32, 32) and 0.0 <= float(hr.min()) and float(hr.max()) <= 1.0
