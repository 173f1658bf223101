r"""Note 2: two-stream networks — a spatial stream on RGB, a temporal stream on stacked optical flow.

Simonyan & Zisserman's two streams see different things: the spatial ConvNet one RGB frame
(appearance), the temporal ConvNet L optical flows stacked as 2L channels
x₁, y₁, x₂, y₂, … (motion); their softmax scores are fused late by averaging,

    p_fused = ½ (softmax(z_spatial) + softmax(z_temporal)).

Measured here, on OrderShapes' mixed variant, whose classes are defined either by appearance
(motion random) or by motion (appearance random):

* per seed, a spatial stream (TSN with one segment: the middle RGB frame) and a temporal stream
  (TSN with one segment on the T − 1 Farnebäck flows of the clip, 2(T − 1) channels, stored
  quantised to uint8 with bound 20 px and divided by it) of the same ResNet, trained by fit() on
  the same clips; the data and the flow are computed once per run and shared by the seeds;
* accuracy on the appearance classes, the motion classes and overall, for each stream and for the
  averaged fusion (video.fusion.fuse_scores, 'prob'); the claims are decided on paired differences
  over seeds (95% t-interval): spatial − temporal on appearance classes > 0, temporal − spatial on
  motion classes > 0, fused − the better stream overall > 0.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .base import Check, Context, NoteExperiment, Part, Result, Table
from .parallel import Plan, run_plans
from .stats import mean_ci, paired_ci

__all__ = ["TwoStream", "Setup", "setup_for", "flow_inputs", "rgb_inputs", "flow_to_rgb", "group_accuracy",
           "train_streams", "FLOW_BOUND", "GROUPS"]

FLOW_BOUND = 20.0  # px: the flow quantisation bound (video.flow.quantize_flow), used to scale the input
GROUPS = ("appearance", "motion")
STREAMS = ("spatial", "temporal", "fused")


@dataclass(frozen=True)
class Setup:
    n_train: int
    n_test: int
    frames: int
    size: int
    training: object  # deepnotes.video.train.VideoTraining (model "tsn", one segment)
    seeds: int


def setup_for(ctx: Context) -> Setup:
    from ..video.train import VideoTraining

    # Dropout 0.5 before the classifier, as TSN's RGB stream: without it the spatial stream memorises
    # the training frames (train loss 0.1) and its test accuracy on the colour classes varies by seed.
    training = VideoTraining(model="tsn", depth=10, width=ctx.pick(8, 8, tiny=4), n_segments=1,
                             steps=ctx.pick(300, 600, tiny=3), batch_size=ctx.pick(32, 32, tiny=4), lr=1e-2,
                             warmup=ctx.pick(10, 20, tiny=0), dropout=0.5)
    return Setup(n_train=ctx.pick(1024, 2048, tiny=16), n_test=ctx.pick(256, 512, tiny=16), frames=8, size=32,
                 training=training, seeds=ctx.pick(3, 5, tiny=2))


# --- inputs -----------------------------------------------------------------------------------------

def _uint8_frames(clip: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) float in [0, 1] or uint8 -> (T, H, W, 3) uint8, compute_flow's input."""
    x = clip.permute(1, 2, 3, 0)  # (C, T, H, W) -> (T, H, W, C)
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.numpy()


def flow_inputs(clips: torch.Tensor, method: str = "farneback") -> torch.Tensor:
    """The temporal stream's input of clips (N, 3, T, H, W): (N, 2(T−1), 1, H, W), the T − 1 flows of
    each clip stacked x₁, y₁, x₂, y₂, … and divided by FLOW_BOUND."""
    from ..video.flow import compute_flow, stack_flows

    N, _, T, H, W = clips.shape
    out = torch.empty(N, 2 * (T - 1), 1, H, W)
    for n in range(N):
        flow = compute_flow(_uint8_frames(clips[n]), method=method)  # (T-1, H, W, 2)
        out[n, :, 0] = torch.as_tensor(np.asarray(stack_flows(flow, 0, T - 1)), dtype=torch.float32) / FLOW_BOUND
    return out


def rgb_inputs(clips: torch.Tensor) -> torch.Tensor:
    """The spatial stream's input: the middle frame of each clip, (N, 3, T, H, W) -> (N, 3, 1, H, W)."""
    x = clips[:, :, clips.shape[2] // 2: clips.shape[2] // 2 + 1]
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """A flow field (H, W, 2) as colour: hue = direction, brightness = magnitude / max_magnitude
    (default: the field's own maximum), full saturation. Returns (H, W, 3) floats in [0, 1]."""
    from matplotlib.colors import hsv_to_rgb

    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be (H, W, 2), got shape {flow.shape}")
    dx, dy = flow[..., 0], flow[..., 1]
    mag = np.hypot(dx, dy)
    top = max_magnitude if max_magnitude is not None else (mag.max() if mag.max() > 0 else 1.0)
    hue = (np.arctan2(dy, dx) % (2 * np.pi)) / (2 * np.pi)
    hsv = np.stack([hue, np.ones_like(hue), np.clip(mag / top, 0, 1)], axis=-1)
    return hsv_to_rgb(hsv)


def group_accuracy(pred: torch.Tensor, labels: torch.Tensor, groups: list[str]) -> dict[str, float]:
    """Accuracy over all clips and over the clips of each class group."""
    right = (pred == labels).float()
    out = {"overall": float(right.mean())}
    for g in GROUPS:
        mask = torch.as_tensor([x == g for x in groups])
        out[g] = float(right[mask].mean()) if mask.any() else float("nan")
    return out


# --- the data, once; one seed per worker process --------------------------------------------------

def prepare(setup: Setup, data_seed: int) -> dict:
    """Both streams' inputs for the train and test splits, computed once and shared by the seeds:
    the middle RGB frame as uint8 and the stacked flow quantised to uint8 with bound FLOW_BOUND, as
    two-stream pipelines store flow offline (video.flow.quantize_flow: within half a quantum,
    FLOW_BOUND/255 px, of the float flow)."""
    from ..video.flow import quantize_flow
    from ..video.synthetic import OrderShapes

    out = {}
    for k, (split, n) in enumerate((("train", setup.n_train), ("test", setup.n_test))):
        d = OrderShapes(n, frames=setup.frames, size=setup.size, seed=data_seed + k, variant="mixed", split=split)
        mid = setup.frames // 2
        out[split] = {"rgb": d.clips[:, :, mid:mid + 1].clone(),  # uint8 (N, 3, 1, H, W)
                      "flow": quantize_flow(flow_inputs(d.clips) * FLOW_BOUND, FLOW_BOUND),  # uint8 (N, 2(T-1), 1, H, W)
                      "labels": d.labels.clone()}
        if split == "test":
            out["groups"] = [d.group(int(y)) for y in d.labels]
            motion = [i for i, g in enumerate(out["groups"]) if g == "motion"][:4]
            out["examples"] = {"frames": [_uint8_frames(d.clips[i]) for i in motion],
                               "classes": [d.classes[int(d.labels[i])] for i in motion], "index": motion}
    out["classes"] = len(d.classes)
    return out


def _inputs(prepared: dict, stream: str, split: str) -> torch.Tensor:
    from ..video.flow import dequantize_flow

    part = prepared[split]
    if stream == "spatial":
        return part["rgb"].float() / 255
    return torch.from_numpy(dequantize_flow(part["flow"], FLOW_BOUND)) / FLOW_BOUND


def train_streams(store, seed: int, setup: Setup, prepared: dict) -> dict:
    """Trains (or loads) both streams from one seed and tests them and their average fusion."""
    from ..artifacts import fingerprint
    from ..video.fusion import fuse_scores
    from ..video.train import evaluate_video, trained_video_model

    y, y_test = prepared["train"]["labels"], prepared["test"]["labels"]
    scores, out = {}, {"seed": seed, "loaded": []}
    for stream in ("spatial", "temporal"):
        hits = store.hits
        x, x_test = _inputs(prepared, stream, "train"), _inputs(prepared, stream, "test")
        training = replace(setup.training, in_channels=x.shape[1])
        model, info = trained_video_model(store, training, (x, y), num_classes=prepared["classes"], seed=seed,
                                          name=f"two-stream-{stream}", data_key=fingerprint(x, y))
        # 'score' over one view: the logits, which fuse_scores turns into softmax probabilities
        scores[stream] = evaluate_video(model, (x_test, y_test), mode="score", batch_size=64)["scores"]
        out[f"{stream}_final_loss"] = info.get("final_loss")
        out["loaded"].append(store.hits > hits)
    scores["fused"] = fuse_scores([scores["spatial"], scores["temporal"]], mode="prob")  # mean of the softmaxes
    for stream in STREAMS:
        for key, value in group_accuracy(scores[stream].argmax(1), y_test, prepared["groups"]).items():
            out[f"{stream}_{key}"] = value
    return out


# --- parts and figures ------------------------------------------------------------------------------

def streams_plan(ctx: Context, setup: Setup) -> tuple[Plan, dict]:
    counts = ctx.artifacts.counts()
    data_seed = ctx.seed + 17

    def finish(out: list) -> Part:
        ctx.artifacts.add_counts(counts, [loaded for r in out for loaded in r["loaded"]])
        col = {f"{s}_{k}": [r[f"{s}_{k}"] for r in out] for s in STREAMS for k in ("overall",) + GROUPS}
        better = [max(a, b) for a, b in zip(col["spatial_overall"], col["temporal_overall"])]
        app = paired_ci(col["spatial_appearance"], col["temporal_appearance"], statistic="spatial − temporal")
        mot = paired_ci(col["temporal_motion"], col["spatial_motion"], statistic="temporal − spatial")
        fus = paired_ci(col["fused_overall"], better, statistic="fused − better stream")
        checks = [
            Check.ci_above("appearance classes: spatial − temporal stream accuracy, paired over seeds (95% CI) > 0",
                           app, 0.0, label="appearance: spatial − temporal"),
            Check.ci_above("motion classes: temporal − spatial stream accuracy, paired over seeds (95% CI) > 0",
                           mot, 0.0, label="motion: temporal − spatial"),
            Check.ci_above("overall: averaged fusion − the better single stream, paired over seeds (95% CI) > 0",
                           fus, 0.0, label="fused − best stream"),
        ]
        metrics = {f"{k}_accuracy": float(np.mean(v)) for k, v in col.items()}
        metrics.update(appearance_gap=app.mean, motion_gap=mot.mean, fusion_gain=fus.mean)
        rows = []
        for s in STREAMS:
            cells = []
            for k in GROUPS + ("overall",):
                i = mean_ci(col[f"{s}_{k}"])
                cells.append(f"{i.mean:.3f} ± {i.half_width:.3f}" if np.isfinite(i.half_width) else f"{i.mean:.3f}")
            rows.append([s, *cells])
        table = Table(f"OrderShapes mixed ({setup.n_test} test clips): accuracy by class group, mean ± 95% CI "
                      f"half-width over {len(out)} seeds", ["stream", "appearance classes", "motion classes",
                                                           "overall"], rows)
        return Part(metrics, checks, [table], data={"out": out, "col": col})

    prepared = prepare(setup, data_seed)
    plan = Plan([(train_streams, (ctx.artifacts, ctx.seed + 1000 * k, setup, prepared)) for k in range(setup.seeds)],
                finish)
    return plan, prepared


def plot_flows(ctx: Context, prepared: dict) -> None:
    import matplotlib.pyplot as plt

    ex = prepared["examples"]
    if not ex["frames"]:
        return
    n = len(ex["frames"])
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n), constrained_layout=True, squeeze=False)
    flows = _inputs(prepared, "temporal", "test")[ex["index"], :, 0] * FLOW_BOUND  # (n, 2L, H, W) in px
    for row, (frames, flow, name) in enumerate(zip(ex["frames"], flows.numpy(), ex["classes"])):
        T = frames.shape[0]
        mid = (T - 1) // 2
        field = np.stack([flow[2 * mid], flow[2 * mid + 1]], axis=-1)  # x_mid, y_mid -> (H, W, 2)
        axes[row, 0].imshow(frames[0])
        axes[row, 1].imshow(frames[-1])
        axes[row, 2].imshow(flow_to_rgb(field))
        step = max(1, field.shape[0] // 10)
        yy, xx = np.mgrid[0:field.shape[0]:step, 0:field.shape[1]:step]
        axes[row, 3].imshow(frames[mid], alpha=0.5)
        # angles="xy" in the image's own axes (y pointing down): dy > 0 is drawn downwards, as it moves
        axes[row, 3].quiver(xx, yy, field[::step, ::step, 0], field[::step, ::step, 1], color="r", angles="xy")
        for col, title in enumerate(("first frame", "last frame", f"flow {mid + 1} (colour)", "flow (arrows)")):
            axes[row, col].set(xticks=[], yticks=[], title=title if row == 0 else "")
        axes[row, 0].set_ylabel(name, fontsize=9)
    ctx.save_figure(fig, "flows", "Farnebäck flow of motion-class test clips: hue is direction, brightness magnitude.")


def plot_accuracy(ctx: Context, part: Part) -> None:
    import matplotlib.pyplot as plt

    col = part.data["col"]
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    keys = GROUPS + ("overall",)
    for j, s in enumerate(STREAMS):
        means = [np.mean(col[f"{s}_{k}"]) for k in keys]
        ax.bar(np.arange(len(keys)) + (j - 1) * 0.27, means, width=0.27, label=s)
    ax.set_xticks(range(len(keys)), [f"{k} classes" if k != "overall" else k for k in keys])
    ax.set(ylabel="accuracy", ylim=(0, 1.05), title="Two streams and their averaged fusion")
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "accuracy", "Mean over seeds on OrderShapes' mixed variant.")


class TwoStream(NoteExperiment):
    slug = "two-stream"
    single_threaded = True  # small models: one thread is faster and core-count independent

    def measure(self, ctx: Context) -> Result:
        setup = setup_for(ctx)
        ctx.progress(0.05, "optical flow, then both streams")
        plan, prepared = streams_plan(ctx, setup)
        (part,) = run_plans([plan], workers=ctx.pick(None, None, tiny=1))
        ctx.progress(0.9, "plots")
        plot_flows(ctx, prepared)
        plot_accuracy(ctx, part)
        m = part.metrics
        summary = (f"Appearance classes: spatial {m['spatial_appearance_accuracy']:.2f} vs temporal "
                   f"{m['temporal_appearance_accuracy']:.2f}; motion classes: temporal {m['temporal_motion_accuracy']:.2f} "
                   f"vs spatial {m['spatial_motion_accuracy']:.2f}; overall fused {m['fused_overall_accuracy']:.2f} vs "
                   f"spatial {m['spatial_overall_accuracy']:.2f} and temporal {m['temporal_overall_accuracy']:.2f}.")
        return Result(metrics=m, checks=part.checks, tables=part.tables, summary=summary)
