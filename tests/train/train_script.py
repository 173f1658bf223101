"""A small deterministic training run, launched by the tests as a subprocess
(plain python, or torchrun for DDP). Writes the final weights to OUT/final.safetensors."""
import argparse
import os
import time

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from deepnotes.train import EMA, fit


def make_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def make_model(dropout=0.1):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(dropout), nn.Linear(32, 1))


def mse(sleep):
    def loss_fn(model, batch):
        if sleep:
            time.sleep(sleep)
        x, y = batch
        return ((model(x) - y) ** 2).mean()

    return loss_fn


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--no-checkpoint", action="store_true")
    args = p.parse_args()
    model = make_model(args.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, decay=0.9)
    result = fit(model, opt, make_data(), mse(args.sleep), ema=ema, max_steps=args.steps, batch_size=args.batch,
                 checkpoint_dir=None if args.no_checkpoint else f"{args.out}/ckpt",
                 checkpoint_every=args.checkpoint_every, metrics_path=f"{args.out}/metrics.jsonl", log_every=1,
                 progress=False)
    if result.stopped == "done":
        if os.environ.get("RANK", "0") == "0":
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{args.out}/final.safetensors")
    print(f"stopped={result.stopped} step={result.step} resumed_from={result.resumed_from}")


if __name__ == "__main__":
    main()
