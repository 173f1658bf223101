"""The fit loop every domain trains with: precision, clipping, accumulation, EMA,
exact-resume safetensors checkpoints, and torchrun DDP."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .ema import EMA
from .loop import CHECKPOINT_NAME, FitConfig, FitResult, NonFiniteLossError, fit

__all__ = [
    "fit",
    "FitConfig",
    "FitResult",
    "EMA",
    "NonFiniteLossError",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "CHECKPOINT_NAME",
]
