"""The artifact store: trained once, loaded after, keyed by what determines the weights, never unpickled,
and a corrupt entry retrained with a warning."""
import json
import pickle

import pytest
import torch

import deepnotes
from deepnotes.artifacts import ArtifactStore, Recipe, TiedView, fingerprint


def build():
    return torch.nn.Linear(4, 2)


def trainer(calls):
    def train(module):
        calls.append(1)
        with torch.no_grad():
            module.weight.copy_(torch.arange(8.0).view(2, 4))
            module.bias.fill_(0.5)
        return {"loss": [1.0, 0.5]}

    return train


def test_trained_once_then_loaded_with_its_info(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    recipe = Recipe("lin", {"d": 4}, seed=1, data="abc")
    m1, info1 = store.get(recipe, build, trainer(calls))
    m2, info2 = ArtifactStore(tmp_path).get(recipe, build, trainer(calls))
    assert calls == [1] and info1 == info2 == {"loss": [1.0, 0.5]}
    assert torch.equal(m1.weight, m2.weight) and torch.equal(m2.bias, torch.full((2,), 0.5))
    weights, meta = store.paths(recipe)
    assert weights.suffix == ".safetensors" and json.loads(meta.read_text())["recipe"]["name"] == "lin"


@pytest.mark.parametrize("change", [
    dict(config={"d": 5}), dict(seed=2), dict(data="abd"), dict(name="lin2"),
])
def test_the_key_changes_with_whatever_determines_the_weights(change):
    base = dict(name="lin", config={"d": 4}, seed=1, data="abc")
    assert Recipe(**base).key != Recipe(**{**base, **change}).key
    assert Recipe(**base).key == Recipe(**base).key


def test_the_key_changes_with_the_version(monkeypatch):
    before = Recipe("lin").key
    monkeypatch.setattr(deepnotes, "__version__", "999.0")
    assert Recipe("lin").key != before


def corrupt_truncate(weights, meta):
    weights.write_bytes(weights.read_bytes()[:20])


def corrupt_checksum(weights, meta):
    record = json.loads(meta.read_text())
    record["sha256"] = "0" * 64
    meta.write_text(json.dumps(record))


def corrupt_json(weights, meta):
    meta.write_text("{")


def corrupt_pickle(weights, meta):
    """A pickle where the weights should be: loading must not run it."""
    weights.write_bytes(pickle.dumps({"weight": torch.zeros(2, 4)}))
    record = json.loads(meta.read_text())
    import hashlib

    record["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta.write_text(json.dumps(record))


@pytest.mark.parametrize("corrupt", [corrupt_truncate, corrupt_checksum, corrupt_json, corrupt_pickle])
def test_a_corrupt_entry_is_retrained_with_a_warning(tmp_path, corrupt):
    store, calls = ArtifactStore(tmp_path), []
    recipe = Recipe("lin", {"d": 4})
    store.get(recipe, build, trainer(calls))
    corrupt(*store.paths(recipe))
    with pytest.warns(RuntimeWarning, match="unusable"):
        module, _ = store.get(recipe, build, trainer(calls))
    assert calls == [1, 1] and module.bias[0] == 0.5
    _, _ = store.get(recipe, build, trainer(calls))  # and the retrained entry is good again
    assert calls == [1, 1]


def test_an_entry_for_another_architecture_is_retrained(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    recipe = Recipe("lin", {"d": 4})
    store.get(recipe, build, trainer(calls))
    with pytest.warns(RuntimeWarning):
        store.get(recipe, lambda: torch.nn.Linear(4, 3), lambda m: calls.append(2) or {})
    assert calls == [1, 2]


def test_disabled_store_trains_every_time_and_writes_nothing(tmp_path):
    store, calls = ArtifactStore(tmp_path / "s", enabled=False), []
    store.get(Recipe("lin"), build, trainer(calls))
    store.get(Recipe("lin"), build, trainer(calls))
    assert calls == [1, 1] and not (tmp_path / "s").exists()


def test_bad_recipes_and_info_fail_early(tmp_path):
    with pytest.raises(ValueError, match="name"):
        Recipe("has space")
    with pytest.raises(TypeError, match="JSON"):
        Recipe("lin", {"f": object()})
    with pytest.raises(TypeError):
        ArtifactStore(tmp_path).get(Recipe("lin"), build, lambda m: {"x": object()})


def test_fingerprint_sees_tensor_bytes_dtype_and_shape():
    x = torch.arange(6.0)
    assert fingerprint(x) == fingerprint(x.clone())
    assert fingerprint(x) != fingerprint(x.view(2, 3)) != fingerprint(x.double())
    assert fingerprint(x) != fingerprint(x + 1e-6)


class _Tied(torch.nn.Module):
    """An embedding and an output projection sharing one matrix, as a tied language model."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.out = torch.nn.Linear(3, 5, bias=False)
        self.out.weight = self.embed.weight


def test_a_tied_module_is_stored_once_and_loads_with_its_tie(tmp_path):
    calls = []

    def train(view):
        calls.append(1)
        with torch.no_grad():
            view.inner.embed.weight.copy_(torch.arange(15.0).view(5, 3))
        return {}

    recipe = Recipe("tied", {}, seed=0, data="x")
    ArtifactStore(tmp_path).get(recipe, lambda: TiedView(_Tied()), train)
    view, _ = ArtifactStore(tmp_path).get(recipe, lambda: TiedView(_Tied()), train)
    assert calls == [1] and list(view.state_dict()) == ["embed.weight"]  # the alias is not saved
    assert torch.equal(view.inner.out.weight, torch.arange(15.0).view(5, 3))
    assert view.inner.out.weight is view.inner.embed.weight
    with pytest.raises(RuntimeError, match="does not fit"):
        view.load_state_dict({"other.weight": torch.zeros(5, 3)})


def test_an_interrupted_training_finds_its_checkpoints_and_they_go_once_the_entry_is_saved(tmp_path):
    store = ArtifactStore(tmp_path)
    recipe = Recipe("lin", {"d": 4}, seed=1, data="abc")
    work = store.work_dir(recipe)
    assert work.parent == tmp_path / "work" and recipe.key in work.name
    seen = []

    def interrupted(module):
        work.mkdir(parents=True)
        (work / "last.safetensors").write_bytes(b"step 7")
        raise KeyboardInterrupt

    def resumed(module):
        seen.append((work / "last.safetensors").read_bytes())
        return trainer([])(module)

    with pytest.raises(KeyboardInterrupt):
        store.get(recipe, build, interrupted)
    assert not store.paths(recipe)[1].exists()  # no entry from an interrupted training
    store.get(recipe, build, resumed)
    assert seen == [b"step 7"] and not work.exists() and store.paths(recipe)[1].exists()
    assert ArtifactStore(tmp_path, enabled=False).work_dir(recipe) is None
