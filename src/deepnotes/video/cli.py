"""``deepnotes video train|test|flow``: action recognition on a user's own videos.

    deepnotes video train --data LIST --root DIR --model tsm --segments 8 --out RUN
    deepnotes video test RUN --data LIST --root DIR --clips 10 --crops 3 [--mode prob|score]
    deepnotes video flow VIDEO_LIST OUT_DIR [--root DIR] [--method farneback|dis]

``--data`` is an annotation list in mmaction2's formats (``path label`` for video files,
``--kind frames``: ``dir total_frames label`` for frame folders) or a UCF101 split folder
(classInd.txt, trainlist0N.txt, testlist0N.txt; ``--split N``). ``train`` writes into RUN:
``model.safetensors`` and ``model.json`` (model name, classes, segments, input size, modality and
the training recipe, so ``test`` rebuilds the model without the command line),
``checkpoints/last.safetensors`` (running it again with the same RUN resumes there) and
``metrics.jsonl``. Training flags map one to one onto VideoTraining's fields.
"""
from __future__ import annotations

from pathlib import Path

from ..usage import UsageError, writable_folder

__all__ = ["add_parser", "run", "MODELS"]

# Literal copies, so that building the parser imports no torch; a test holds them equal to the modules'.
MODELS = ("tsn", "tsm", "tdn", "tam", "c3d", "r3d", "r2plus1d")
THREE_D = ("c3d", "r3d", "r2plus1d")


def _data_flags(p, with_split: bool = True) -> None:
    p.add_argument("--data", type=Path, required=True,
                   help="annotation list (`path label` or, with --kind frames, `dir total_frames label`) "
                        "or a UCF101 split folder holding classInd.txt")
    p.add_argument("--root", type=Path, default=None, help="folder the list's paths are relative to")
    p.add_argument("--kind", choices=["video", "frames"], default="video")
    if with_split:
        p.add_argument("--split", type=int, default=1, help="UCF101 split number (1-3) when --data is a folder")
    p.add_argument("--backend", choices=["auto", "pyav", "opencv"], default="auto", help="video decoder")
    p.add_argument("--batch-size", type=int, default=16)


def add_parser(sub) -> None:
    """Adds ``video`` and its subcommands to the top-level subparsers ``sub``."""
    p = sub.add_parser("video", help="action recognition on your own videos (TSN, TSM, TDN, TAM, 3D CNNs)")
    cmds = p.add_subparsers(dest="video_command", required=True)

    train = cmds.add_parser("train", help="train a video classifier (fit() with checkpoints and resume)")
    _data_flags(train)
    train.add_argument("--classes", type=Path, default=None,
                       help="class names, one per line (or classInd.txt's `index name` lines); default: "
                            "the UCF101 folder's, else class0..classK-1 from the labels")
    train.add_argument("--model", choices=MODELS, default="tsm")
    train.add_argument("--segments", type=int, default=8, help="TSN segments (frames a 2D model sees)")
    train.add_argument("--clip-len", type=int, default=1, help="frames per segment (3D models: e.g. 8 with "
                                                               "--segments 1)")
    train.add_argument("--frame-interval", type=int, default=1, help="stride between a clip's frames")
    train.add_argument("--size", type=int, default=112, help="crop size (pixels)")
    train.add_argument("--modality", choices=["rgb", "flow"], default="rgb")
    train.add_argument("--flow-length", type=int, default=5, help="flow: L stacked flows, 2L input channels")
    # VideoTraining's fields, one flag each (defaults: VideoTraining's own)
    train.add_argument("--depth", type=int, choices=[10, 18, 34, 50], default=18)
    train.add_argument("--width", type=int, default=64, help="base channels of the ResNet (64: the papers')")
    train.add_argument("--dropout", type=float, default=0.0)
    train.add_argument("--steps", type=int, default=200, help="optimizer steps")
    train.add_argument("--epochs", type=int, default=None, help="passes over the data (the first limit reached wins)")
    train.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--warmup", type=int, default=0)
    train.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    train.add_argument("--grad-clip", type=float, default=20.0)
    train.add_argument("--label-smoothing", type=float, default=0.0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, required=True, help="folder for the model, checkpoints and log")

    test = cmds.add_parser("test", help="multi-view test of a trained model: top-1/5, mean-class accuracy")
    test.add_argument("model", type=Path, metavar="CHECKPOINT", help="a folder written by `video train`")
    _data_flags(test)
    test.add_argument("--clips", type=int, default=1, help="clips per video (3D: evenly spaced; 2D: segment sets)")
    test.add_argument("--crops", type=int, choices=[1, 3], default=1, help="1: centre crop, 3: three crops")
    test.add_argument("--mode", choices=["prob", "score"], default="prob",
                      help="average the views' softmax ('prob') or logits ('score')")
    test.add_argument("--confusion", type=Path, default=None, help="FILE.png: the confusion matrix figure")

    flow = cmds.add_parser("flow", help="extract optical flow for a list of videos (resumable)")
    flow.add_argument("videos", type=Path, metavar="VIDEO_LIST", help="annotation list of the videos")
    flow.add_argument("out", type=Path, metavar="OUT_DIR", help="one .npz (quantised flow) per video")
    flow.add_argument("--root", type=Path, default=None)
    flow.add_argument("--method", choices=["farneback", "dis"], default="farneback")


def _samples(args, subset: str):
    """(samples, class names or None) of --data; a UsageError for a missing or malformed list."""
    from .annotations import read_annotations, read_ucf101_split

    if not args.data.exists():
        raise UsageError(f"--data {args.data}: no such file or folder")
    try:
        if args.data.is_dir():
            if not (args.data / "classInd.txt").is_file():
                raise UsageError(f"--data {args.data}: a folder must be a UCF101 split folder with classInd.txt")
            samples, classes = read_ucf101_split(args.data, split=args.split, subset=subset, root=args.root)
            return samples, list(classes)
        return read_annotations(args.data, root=args.root, kind=args.kind), None
    except (ValueError, OSError) as err:
        raise UsageError(f"--data {args.data}: {err}") from None


def _class_names(path: Path | None, found, samples) -> list[str]:
    if path is not None:
        if not path.is_file():
            raise UsageError(f"--classes {path}: no such file")
        lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
        names = [parts[-1] for parts in lines]  # `name` or classInd's `index name`
        if not names:
            raise UsageError(f"--classes {path}: no class names")
        return names
    if found:
        return found
    return [f"class{k}" for k in range(max(s.label for s in samples) + 1)]


def _positive(args, *flags: str) -> None:
    for flag in flags:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be positive, got {value}")


def _train(args, console) -> int:
    from dataclasses import fields

    from .dataset import VideoDataset
    from .train import VideoTraining, build_video_model, save_video_model, train_video_model

    _positive(args, "segments", "clip-len", "frame-interval", "size", "flow-length", "steps", "epochs", "batch-size",
              "width")
    out = writable_folder(args.out, "--out")
    samples, found = _samples(args, "train")
    if not samples:
        raise UsageError(f"--data {args.data}: the list is empty")
    classes = _class_names(args.classes, found, samples)
    bad = [s for s in samples if not 0 <= s.label < len(classes)]
    if bad:
        raise UsageError(f"--data: label {bad[0].label} of {bad[0].path} is outside the {len(classes)} classes")
    in_channels = 2 * args.flow_length if args.modality == "flow" else 3
    frames = args.segments * args.clip_len
    values = {f.name: getattr(args, f.name) for f in fields(VideoTraining) if hasattr(args, f.name)}
    try:
        training = VideoTraining(**{**values, "model": args.model, "n_segments": frames, "in_channels": in_channels})
        model = build_video_model(training, len(classes), seed=args.seed)
        data = VideoDataset(samples, n_segments=args.segments, clip_len=args.clip_len,
                            frame_interval=args.frame_interval, train=True, size=args.size, backend=args.backend,
                            modality=args.modality, flow_length=args.flow_length, seed=args.seed)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    if len(data) < training.batch_size:
        raise UsageError(f"--data has {len(data)} videos, fewer than --batch-size {training.batch_size}")
    console.print(f"training {args.model} (ResNet-{args.depth}, width {args.width}) on {len(data)} videos, "
                  f"{len(classes)} classes, {frames} frames of {args.size}px")
    info = train_video_model(model, data, training, seed=args.seed + 1, checkpoint_dir=out / "checkpoints",
                             metrics_path=out / "metrics.jsonl", progress=None)
    skipped = getattr(data, "skipped_count", 0)
    save_video_model(out, model, training, classes, size=args.size, modality=args.modality,
                     flow_length=args.flow_length, segments=args.segments, clip_len=args.clip_len,
                     frame_interval=args.frame_interval, kind=args.kind, seed=args.seed, final_loss=info["final_loss"])
    if skipped:
        console.print(f"[yellow]unreadable videos skipped: {skipped}[/]")
    console.print(f"final loss {info['final_loss']:.4f} after {info['steps']} steps; model: {out}")
    return 0


def _test(args, console) -> int:
    from .dataset import VideoDataset
    from .train import evaluate_video, load_video_model

    _positive(args, "clips", "batch-size")
    try:
        model, meta = load_video_model(args.model)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    if args.confusion is not None and args.confusion.suffix != ".png":
        raise UsageError(f"--confusion {args.confusion}: expected a .png file name")
    samples, _ = _samples(args, "test")
    if not samples:
        raise UsageError(f"--data {args.data}: the list is empty")
    classes = meta["classes"]
    try:
        data = VideoDataset(samples, n_segments=meta["segments"], clip_len=meta["clip_len"],
                            frame_interval=meta["frame_interval"], num_clips=args.clips, crops=args.crops, train=False,
                            size=meta["size"], backend=args.backend, modality=meta["modality"],
                            flow_length=meta["flow_length"], seed=0)
        out = evaluate_video(model, data, mode=args.mode, batch_size=args.batch_size, num_classes=len(classes))
    except ValueError as err:
        raise UsageError(str(err)) from None
    views = args.clips * args.crops
    console.print(f"{meta['model']} on {len(out['labels'])} videos, {views} views each ({args.clips} clips x "
                  f"{args.crops} crops, '{args.mode}' averaging)")
    console.print(f"top-1 {out['top1']:.4f}  top-5 {out['top5']:.4f}  mean-class {out['mean_class']:.4f}")
    skipped = getattr(data, "skipped_count", 0)
    if skipped:
        console.print(f"[yellow]unreadable videos skipped: {skipped}[/]")
    if args.confusion is not None:
        writable_folder(args.confusion.parent if str(args.confusion.parent) else Path("."), "--confusion's folder")
        save_confusion(out["confusion"], classes, args.confusion)
        console.print(f"confusion matrix: {args.confusion}")
    return 0


def save_confusion(confusion, classes, path: Path) -> None:
    """The confusion matrix (rows: true class) as a row-normalised heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = confusion.float()
    rates = c / c.sum(1, keepdim=True).clamp_min(1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(2 + 0.35 * k, 1.5 + 0.35 * k))
    im = ax.imshow(rates.numpy(), vmin=0, vmax=1, cmap="Blues")
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _flow(args, console) -> int:
    from .flow import extract_flows

    if not args.videos.is_file():
        raise UsageError(f"VIDEO_LIST {args.videos}: no such file")
    out = writable_folder(args.out, "OUT_DIR")
    try:
        result = extract_flows(args.videos, out, root=args.root, method=args.method, progress=console.is_terminal)
    except ValueError as err:
        raise UsageError(str(err)) from None
    console.print(f"optical flow ({args.method}): {result.computed} computed, {result.skipped} already done, "
                  f"{len(result.failed)} unreadable; list: {result.list_path}")
    for path in result.failed:
        console.print(f"[yellow]unreadable: {path}[/]")
    return 0


def run(args, console) -> int:
    return {"train": _train, "test": _test, "flow": _flow}[args.video_command](args, console)
