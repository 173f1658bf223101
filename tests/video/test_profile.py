"""profile(): multiply-adds per view from closed forms, TSM = TSN, x T scaling, head in/out, latency."""
import pytest
from torch import nn

from deepnotes.video.models import build_model
from deepnotes.video.profiling import FLOPS_UNIT, profile

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny3D(nn.Module):
    """A 3x3x3 conv and a linear head: every multiply-add is a closed form."""

    def __init__(self, cin=2, cout=4, k=3):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1, bias=False)
        self.head = nn.Linear(cout, k)

    def forward_features(self, x):
        return self.conv(x).flatten(2).mean(-1)

    def forward(self, x):
        return self.head(self.forward_features(x))


def test_closed_form_multiply_adds_head_excluded_and_included():
    model = Tiny3D()
    T, H, W = 4, 8, 8
    out = profile(model, (2, T, H, W), runs=0)
    assert out["flops"] == 4 * 2 * 27 * T * H * W  # C_out C_in k^3 per output position
    assert out["flops_unit"] == FLOPS_UNIT == "multiply-adds per view"
    assert out["head_included"] is False and out["params"] == 4 * 2 * 27 and out["params_total"] == 216 + 15
    with_head = profile(model, (2, T, H, W), include_head=True, runs=0)
    assert with_head["flops"] == out["flops"] + 4 * 3 and with_head["params"] == 216 + 15
    assert with_head["head_included"] is True
    # per view: a batch (N, ...) shape gives the same count, N only sets the latency batch
    assert profile(model, (5, 2, T, H, W), runs=0)["flops"] == out["flops"]


def test_tsm_costs_exactly_what_tsn_costs():
    shape = (3, 4, 16, 16)
    tsn, tsm = (profile(build_model(n, 5, 4, depth=10, base_width=8), shape, runs=0) for n in ("tsn", "tsm"))
    assert tsm["params"] == tsn["params"] and tsm["flops"] == tsn["flops"] > 0


@pytest.mark.parametrize("name", ["tsn", "tsm"])
def test_2d_flops_scale_exactly_with_t(name):
    per_frame = profile(build_model(name, 5, 1, depth=10, base_width=8), (3, 1, 16, 16), runs=0)["flops"]
    for T in (3, 8):
        clip = profile(build_model(name, 5, T, depth=10, base_width=8), (3, T, 16, 16), runs=0)["flops"]
        assert clip == T * per_frame


def test_latency_is_measured_per_batch_and_training_mode_is_restored():
    model = build_model("tsm", 5, 4, depth=10, base_width=4).train()
    out = profile(model, (3, 4, 16, 16), runs=2, warmup=1, batch_sizes=(1, 2))
    assert set(out["latency_ms"]) == {1, 2} and all(v > 0 for v in out["latency_ms"].values())
    assert out["latency_ms_per_clip"][2] == pytest.approx(out["latency_ms"][2] / 2)
    assert model.training
    assert set(profile(model, (2, 3, 4, 16, 16), runs=1, warmup=0)["latency_ms"]) == {1, 2}


def test_errors():
    model = Tiny3D()
    with pytest.raises(ValueError, match="input_shape"):
        profile(model, (2, 8, 8))
    with pytest.raises(TypeError, match="forward_features"):
        profile(nn.Conv3d(2, 2, 1), (2, 1, 4, 4), runs=0)
    with pytest.raises(ValueError, match="batch_sizes"):
        profile(model, (2, 1, 4, 4), batch_sizes=(0,))
