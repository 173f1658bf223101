"""Greedy and typical acceptance (deepnotes.medusa.acceptance) against loops and closed forms."""
import math

import pytest
import torch

from deepnotes.medusa import accept_greedy, accept_typical


def loop_greedy(candidates, logits):
    """Reference semantics by loops: longest row whose tokens equal the argmax after the previous one."""
    best, best_len = 0, 0
    for p in range(candidates.shape[0]):
        length = 1
        for i in range(1, candidates.shape[1]):
            if int(candidates[p, i]) < 0 or int(candidates[p, i]) != int(logits[p, i - 1].argmax()):
                break
            length += 1
        if length > best_len:
            best, best_len = p, length
    return best, best_len


@pytest.mark.parametrize("seed", range(5))
def test_greedy_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    P, L, V = 7, 5, 4  # tiny V so that matches happen
    logits = torch.randn(P, L, V, generator=g)
    candidates = torch.randint(0, V, (P, L), generator=g)
    candidates[:, 1:] = torch.where(torch.rand(P, L - 1, generator=g) < 0.6, logits[:, :-1].argmax(-1),
                                    candidates[:, 1:])
    candidates[3, 3:] = -1  # a short path, padded
    best, length = accept_greedy(candidates, logits)
    assert (int(best), int(length)) == loop_greedy(candidates, logits)


def test_root_always_accepted_and_padding_never():
    logits = torch.zeros(2, 3, 5)
    logits[..., 0] = 10.0  # argmax 0 everywhere, the others improbable
    candidates = torch.tensor([[4, 3, 3], [4, -1, -1]])
    for rule in (accept_greedy, accept_typical):
        best, length = rule(candidates, logits, temperature=1.0)
        assert int(length) == 1  # nothing matches, the root stands
    # the reference pads with token 0, which would "match" argmax 0 here; -1 padding cannot
    candidates = torch.tensor([[4, 0, -1]])
    assert int(accept_greedy(candidates, logits[:1])[1]) == 2


def test_typical_one_hot_reduces_to_greedy():
    g = torch.Generator().manual_seed(0)
    P, L, V = 6, 4, 8
    base = torch.randn(P, L, V, generator=g)
    one_hot = 60.0 * torch.nn.functional.one_hot(base.argmax(-1), V).float()
    candidates = torch.randint(0, V, (P, L), generator=g)
    candidates[:, 1:] = torch.where(torch.rand(P, L - 1, generator=g) < 0.7, base[:, :-1].argmax(-1),
                                    candidates[:, 1:])
    greedy = accept_greedy(candidates, base)
    assert [int(x) for x in accept_typical(candidates, one_hot, temperature=1.0)][1] == int(greedy[1])
    # temperature 0 is the one-hot limit: exactly greedy on any logits
    assert [int(x) for x in accept_typical(candidates, base, temperature=0.0)] == [int(x) for x in greedy]


def entropy(q):
    return -sum(x * math.log(x) for x in q if x > 0)


def test_typical_thresholds_epsilon_and_alpha():
    # low entropy: H = 0.87 < ln(0.3 / 0.09) = 1.20, so the threshold is epsilon = 0.09
    q = [0.6, 0.31, 0.089, 0.001]
    assert entropy(q) < math.log(0.3 / 0.09)
    logits = torch.log(torch.tensor([q, q], dtype=torch.float64)).unsqueeze(1).repeat(1, 2, 1).float()
    accepted = [int(accept_typical(torch.tensor([[0, t]]), logits[:1], temperature=1.0)[1]) for t in range(4)]
    assert accepted == [2, 2, 1, 1]  # 0.089 < 0.09 is rejected
    q = [0.6, 0.309, 0.091 - 1e-6, 1e-6]
    logits = torch.log(torch.tensor([q, q])).unsqueeze(0)
    assert int(accept_typical(torch.tensor([[0, 2]]), logits, temperature=1.0)[1]) == 2  # 0.091 > 0.09
    # high entropy: 20 near-uniform tokens, H ~ 2.99, threshold alpha * exp(-H) ~ 0.0151 < epsilon
    q = torch.full((20,), 0.05, dtype=torch.float64)
    q[0], q[1] = 0.0151 + 0.0005, 0.05 + 0.05 - 0.0156
    thr = 0.3 * math.exp(-entropy(q.tolist()))
    assert thr < 0.09 and q[0] > thr
    logits = torch.log(q).float().view(1, 1, 20).repeat(1, 2, 1)
    assert int(accept_typical(torch.tensor([[0, 0]]), logits, temperature=1.0)[1]) == 2
    q[0], q[1] = thr - 0.0005, q[1] + q[0] - (thr - 0.0005)
    logits = torch.log(q).float().view(1, 1, 20).repeat(1, 2, 1)
    assert int(accept_typical(torch.tensor([[0, 0]]), logits, temperature=1.0)[1]) == 1
    # other hyperparameters move the cut: min(0.5, 2 e^-H) = 0.5 rejects the 0.31 token
    q = [0.6, 0.31, 0.089, 0.001]
    logits = torch.log(torch.tensor([q, q])).unsqueeze(0)
    assert int(accept_typical(torch.tensor([[0, 1]]), logits, temperature=1.0, posterior_threshold=0.5,
                              posterior_alpha=2.0)[1]) == 1


def test_typical_temperature_flattens():
    logits = torch.log(torch.tensor([[[0.97, 0.03], [0.5, 0.5]]]))
    candidates = torch.tensor([[0, 1]])
    assert int(accept_typical(candidates, logits, temperature=1.0)[1]) == 1  # q = 0.03 < min(0.09, 0.3 e^-H)
    assert int(accept_typical(candidates, logits, temperature=4.0)[1]) == 2  # q^(1/4), renormalised: ~0.3


def test_typical_ties_go_to_higher_likelihood():
    q = torch.tensor([0.5, 0.3, 0.2])
    logits = torch.log(q).view(1, 1, 3).repeat(3, 2, 1)
    candidates = torch.tensor([[0, 2], [0, 0], [0, 1]])  # all accepted with length 2
    best, length = accept_typical(candidates, logits, temperature=1.0)
    assert (int(best), int(length)) == (1, 2)


@pytest.mark.parametrize("kwargs, match", [({"temperature": -1.0}, "temperature"),
                                           ({"posterior_threshold": 0.0}, "posterior_threshold"),
                                           ({"posterior_alpha": 0.0}, "posterior_alpha")])
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        accept_typical(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 3), **kwargs)


def test_bad_shapes_raise():
    for rule in (accept_greedy, accept_typical):
        with pytest.raises(ValueError, match="logits"):
            rule(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, 5))
        with pytest.raises(ValueError, match="candidates"):
            rule(torch.zeros(2, 3), torch.zeros(2, 3, 5))
