"""q, k, v (grad-requiring) and an upstream gradient dO for attention tests, from one seeded generator."""
import torch


def attention_inputs(B, H, Hkv, Sq, Sk, D, dtype=torch.float32, seed=0):
    """q (B, H, Sq, D), k and v (B, Hkv, Sk, D) requiring grad, dO (B, H, Sq, D)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq, D, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(B, Hkv, Sk, D, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(B, Hkv, Sk, D, generator=g, dtype=dtype).requires_grad_()
    do = torch.randn(B, H, Sq, D, generator=g, dtype=dtype)
    return q, k, v, do
