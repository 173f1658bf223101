"""MedusaModel (deepnotes.medusa.heads): identity start, per-layer weights, persistence, bad bases."""
import pytest
import torch
from medusa_models import tiny_gpt2, tiny_llama

from deepnotes.medusa import MedusaModel, MedusaOutput


@pytest.fixture(params=["llama", "gpt2"])
def base(request, one_thread):
    return tiny_llama(seed=3) if request.param == "llama" else tiny_gpt2(seed=3)


def test_heads_at_init_reproduce_base_logits(base):
    model = MedusaModel(base, num_heads=3, num_layers=2).eval()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = base(ids).logits
        out = model(ids)
    assert isinstance(out, MedusaOutput)
    assert out.head_logits.shape == (3, 2, 9, 64) and out.hidden_states.shape == (2, 9, 32)
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=1e-6)
    for k in range(3):  # W = 0, b = 0: every block is the identity, every projection a copy of lm_head
        torch.testing.assert_close(out.head_logits[k], ref, rtol=0, atol=1e-6)
    assert model(ids, output_heads=False).head_logits is None


def test_forward_with_cache_matches_full_pass(base):
    model = MedusaModel(base, num_heads=2).eval()
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        first = model(ids[:, :8], use_cache=True)
        rest = model(ids[:, 8:], past_key_values=first.past_key_values, use_cache=True)
    assert rest.past_key_values.get_seq_length() == 12
    torch.testing.assert_close(rest.logits, full.logits[:, 8:], rtol=0, atol=1e-5)
    torch.testing.assert_close(rest.head_logits, full.head_logits[:, :, 8:], rtol=0, atol=1e-5)


def test_layers_and_heads_own_their_weights(base):
    model = MedusaModel(base, num_heads=2, num_layers=3)
    params = [p for head in model.heads for block in head.blocks for p in block.parameters()]
    assert len({id(p) for p in params}) == len(params) == 2 * 3 * 2  # the reference's [ResBlock] * n shares them
    projections = [head.proj.weight for head in model.heads]
    assert projections[0].data_ptr() != projections[1].data_ptr() != base.get_output_embeddings().weight.data_ptr()
    with torch.no_grad():
        model.heads[0].blocks[0].linear.weight.fill_(1.0)
    assert model.heads[0].blocks[1].linear.weight.abs().sum() == 0
    assert model.heads[1].blocks[0].linear.weight.abs().sum() == 0


def test_tied_base_gets_an_untied_copy():
    base = tiny_llama(seed=0, tie=True)
    model = MedusaModel(base, num_heads=1)
    with torch.no_grad():
        model.heads[0].proj.weight.add_(1.0)
    assert not torch.equal(model.heads[0].proj.weight, base.lm_head.weight)


def test_freeze_base_leaves_only_heads_trainable(base):
    model = MedusaModel(base, num_heads=2).freeze_base()
    assert not any(p.requires_grad for p in model.base.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    ids = torch.randint(0, 64, (1, 6))
    out = model(ids)
    out.head_logits.sum().backward()
    assert all(p.grad is None for p in model.base.parameters())
    assert model.heads[1].proj.weight.grad is not None


def test_save_and_load_round_trip(base, tmp_path):
    from transformers import AutoModelForCausalLM

    model = MedusaModel(base, num_heads=2, num_layers=2).eval()
    with torch.no_grad():
        for p in model.heads.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model.save_pretrained(tmp_path / "m")
    loaded = MedusaModel.from_pretrained(tmp_path / "m").eval()
    assert (loaded.num_heads, loaded.num_layers) == (2, 2)
    ids = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        a, b = model(ids), loaded(ids)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    torch.testing.assert_close(a.head_logits, b.head_logits, rtol=0, atol=0)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()  # still a plain transformers folder
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, a.logits, rtol=0, atol=0)


def test_bad_input_raises():
    llama = tiny_llama(seed=0)
    with pytest.raises(ValueError, match="base"):
        MedusaModel(llama.model)  # a backbone has no lm_head
    with pytest.raises(ValueError, match="num_heads"):
        MedusaModel(llama, num_heads=0)
    with pytest.raises(ValueError, match="num_layers"):
        MedusaModel(llama, num_layers=1.5)
    with pytest.raises(ValueError, match="directory"):
        MedusaModel.from_pretrained("/nonexistent/medusa")


def test_shared_projection_heads_feed_the_bases_lm_head(base, tmp_path):
    model = MedusaModel(base, num_heads=3, num_layers=2, shared_projection=True).eval()
    assert all(head.proj is None for head in model.heads)
    assert sum(p.numel() for p in model.heads.parameters()) == 3 * 2 * (32 * 32 + 32)  # blocks only, no V x D copy
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = base(ids).logits
        for k in range(3):  # identity blocks: every head is the base's next-token predictor
            torch.testing.assert_close(model(ids).head_logits[k], ref, rtol=0, atol=1e-6)
        model.heads[1].blocks[0].linear.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        out = model(ids)
        h = out.hidden_states
        torch.testing.assert_close(out.head_logits[1], base.get_output_embeddings()(model.heads[1].blocks(h)),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(model.head_logits(h[0, -1], 2), out.head_logits[:2, 0, -1], rtol=0, atol=1e-6)
    model.save_pretrained(tmp_path / "m")
    loaded = MedusaModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.shared_projection and all(head.proj is None for head in loaded.heads)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).head_logits, out.head_logits, rtol=0, atol=0)
