"""Video action recognition (notes 1 and 2): decoding, annotation lists, TSN/dense sampling,
transforms, a map-style VideoDataset, the synthetic OrderShapes task, optical flow, metrics;
2D backbones with temporal modules (TSN, TSM, TDN, TAM), 3D CNNs, two-stream fusion and profiling.

Clips are float tensors (N, C, T, H, W); 2D models fold T into the batch.

    io.py           decode_video (PyAV, OpenCV fallback), write_video (.mp4), VideoDecodeError
    annotations.py  Sample, read_annotations (mmaction2 lists), read_ucf101_split
    sampling.py     sample_segments (TSN), sample_clips (dense, mmaction2 SampleFrames), sample_views
    transforms.py   resize_short, multi_scale_crop, random_flip, center_crop, three_crop, to_tensor
    dataset.py      VideoDataset: train (C, T, H, W) / test (V, C, T, H, W) views, corrupt files skipped
    synthetic.py    OrderShapes: order / scene / mixed variants, write_videos -> .mp4 + list
    flow.py         compute_flow (Farneback, DIS), stack_flows, quantize/dequantize, extract_flows
    metrics.py      top_k_accuracy, mean_class_accuracy, confusion_matrix, average_views
    models/         build_model, MODELS; temporal_shift, TemporalShift, OnlineTemporalShift
    fusion.py       fuse_scores, SVMFusion
    profiling.py    profile: params, multiply-adds per view, CPU latency
    train.py        VideoTraining, train_video_model, evaluate_video, trained_video_model

Names are imported lazily from their modules, so `import deepnotes.video` stays cheap (and a
module that is missing fails only when one of its names is used).
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "io": ["decode_video", "write_video", "VideoDecodeError", "video_info", "BACKENDS"],
    "annotations": ["Sample", "read_annotations", "read_ucf101_split", "write_annotations"],
    "sampling": ["sample_segments", "sample_clips", "sample_views"],
    "transforms": ["resize_short", "multi_scale_crop", "random_flip", "center_crop", "three_crop", "to_tensor",
                   "frames_from_numpy", "IMAGENET_MEAN", "IMAGENET_STD"],
    "dataset": ["VideoDataset"],
    "synthetic": ["OrderShapes", "ORDER_CLASSES", "SHAPES", "VARIANTS"],
    "flow": ["compute_flow", "stack_flows", "quantize_flow", "dequantize_flow", "extract_flows", "load_flow",
             "FlowExtraction", "FLOW_METHODS"],
    "metrics": ["top_k_accuracy", "mean_class_accuracy", "confusion_matrix", "average_views"],
    "models": ["build_model", "MODELS"],
    "models.temporal": ["temporal_shift", "TemporalShift", "OnlineTemporalShift"],
    "fusion": ["fuse_scores", "SVMFusion"],
    "profiling": ["profile", "count_multiply_adds", "FLOPS_UNIT"],
    "train": ["VideoTraining", "train_video_model", "evaluate_video", "trained_video_model"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
