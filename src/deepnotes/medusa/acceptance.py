r"""Acceptance rules for Medusa tree candidates; one signature so they swap.

Each of the P root→leaf paths is a candidate row x₀ x₁ … x_{L−1}, where x₀ is the root (the
base's own next token, always accepted) and ``logits[p, i]`` are the base logits after x_i on
that path, i.e. the distribution of x_{i+1}. Position i+1 is accepted when every earlier one was
and

    greedy:   x_{i+1} = argmax_v logits[p, i, v]
    typical:  q(x_{i+1}) > min(ε, δ · exp(−H(q))),   q = softmax(logits[p, i] / T),
              H(q) = −Σ_v q_v log q_v,  ε = posterior_threshold (0.09), δ = posterior_alpha (0.3)

(Medusa §2.3.1). The accepted length of a row counts the root, so it lies in [1, L]. The best
row is the longest; typical acceptance breaks ties by the log-likelihood Σ log q(x_{i+1}) of the
accepted prefix. As T → 0, q is one-hot with H = 0, the threshold is min(ε, δ) and the typical
rule reduces to greedy; T = 0 therefore means greedy. Candidates < 0 are padding (paths shorter
than the deepest one) and are never accepted. The reference pads with token 0, which a short
path can "accept" when 0 happens to be the argmax; negative padding cannot.
"""
from __future__ import annotations

import torch

__all__ = ["accept_greedy", "accept_typical", "ACCEPTANCE", "best_greedy", "greedy_ok", "accepted_lengths"]


def _check(candidates: torch.Tensor, logits: torch.Tensor, temperature: float, posterior_threshold: float,
           posterior_alpha: float) -> None:
    if not isinstance(candidates, torch.Tensor) or candidates.dim() != 2 or candidates.dtype.is_floating_point:
        raise ValueError(f"candidates: expected an integer (P, L) tensor, got "
                         f"{getattr(candidates, 'shape', type(candidates))}")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != candidates.shape:
        raise ValueError(f"logits: expected (P, L, V) matching candidates {tuple(candidates.shape)}, got "
                         f"{tuple(getattr(logits, 'shape', ()))}")
    check_rule_parameters(temperature, posterior_threshold, posterior_alpha)


def check_rule_parameters(temperature: float, posterior_threshold: float, posterior_alpha: float) -> None:
    """ValueError naming the first of temperature (>= 0), ε (in (0, 1]) and δ (> 0) out of range."""
    if not temperature >= 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    if not 0 < posterior_threshold <= 1:
        raise ValueError(f"posterior_threshold: expected in (0, 1], got {posterior_threshold}")
    if not posterior_alpha > 0:
        raise ValueError(f"posterior_alpha: expected > 0, got {posterior_alpha}")


def accepted_lengths(ok: torch.Tensor) -> torch.Tensor:
    """(P, L-1) bool "position i+1 passes its test" -> (P,) accepted length, root counted."""
    return 1 + torch.cumprod(ok.to(torch.long), dim=1).sum(dim=1)


def greedy_ok(candidates: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """(P, L) candidates and (P, L) base argmax after each position -> (P, L-1) matches."""
    return candidates[:, 1:] == predicted[:, :-1]


def best_greedy(candidates: torch.Tensor, predicted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy rule given the base argmax per position (the fast path's entry): (best, length) 0-d tensors."""
    lengths = accepted_lengths(greedy_ok(candidates, predicted))
    best = torch.argmax(lengths)
    return best, lengths[best]


def accept_greedy(candidates: torch.Tensor, logits: torch.Tensor, temperature: float = 0.0,
                  posterior_threshold: float = 0.09, posterior_alpha: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Longest prefix equal to the base's argmax: (P, L) candidates, (P, L, V) logits -> (best path, length).

    temperature / posterior_* are accepted (and ignored) so that all rules share one signature.
    Returns 0-d long tensors; length ∈ [1, L] counts the root.
    """
    _check(candidates, logits, temperature, posterior_threshold, posterior_alpha)
    return best_greedy(candidates, logits.argmax(dim=-1))


def accept_typical(candidates: torch.Tensor, logits: torch.Tensor, temperature: float = 0.0,
                   posterior_threshold: float = 0.09, posterior_alpha: float = 0.3
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Typical acceptance q(x) > min(ε, δ e^{−H}): (P, L) candidates, (P, L, V) logits -> (best path, length).

    temperature 0 is the one-hot limit, identical to greedy. Returns 0-d long tensors; length ∈ [1, L].
    """
    _check(candidates, logits, temperature, posterior_threshold, posterior_alpha)
    if temperature == 0:
        return best_greedy(candidates, logits.argmax(dim=-1))
    logq = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)  # (P, L-1, V)
    entropy = -(logq.exp() * logq).sum(-1)  # (P, L-1)
    nxt = candidates[:, 1:]
    valid = nxt >= 0
    logq_x = logq.gather(-1, nxt.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (P, L-1)
    threshold = torch.minimum(torch.full_like(entropy, posterior_threshold), posterior_alpha * torch.exp(-entropy))
    ok = valid & (logq_x.exp() > threshold)
    lengths = accepted_lengths(ok)
    longest = lengths.max()
    # log-likelihood of each row's accepted part (root excluded: it is shared), -inf off the longest rows
    keep = torch.arange(ok.shape[1], device=ok.device) < (lengths - 1).unsqueeze(1)
    loglik = torch.where(keep, logq_x, torch.zeros_like(logq_x)).sum(1)
    loglik = torch.where(lengths == longest, loglik, torch.full_like(loglik, -torch.inf))
    best = torch.argmax(loglik)
    return best, lengths[best]


ACCEPTANCE = {"greedy": accept_greedy, "typical": accept_typical}
