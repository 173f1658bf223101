"""fit(): accumulation, EMA, exact resume, checkpoints, precision and its failures."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepnotes.train import EMA, CheckpointError, FitConfig, NonFiniteLossError, fit, load_checkpoint, save_checkpoint
from deepnotes.train.checkpoint import flatten_state, unflatten_state

# The subprocess tests' training script doubles as this module's model and data.
_spec = importlib.util.spec_from_file_location("train_script", Path(__file__).with_name("train_script.py"))
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


def run(steps, dropout=0.1, **kw):
    model = script.make_model(dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    res = fit(model, opt, script.make_data(), script.mse(0), max_steps=steps, batch_size=16, progress=False, **kw)
    return model, opt, res


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


def test_training_lowers_the_loss_and_counts_steps():
    _, _, res = run(60)
    assert res.step == 60 and len(res.losses) == 60
    assert sum(res.losses[-10:]) / 10 < 0.5 * sum(res.losses[:10]) / 10


def test_max_epochs_sets_the_step_count():
    _, _, res = run(None, max_epochs=2)
    assert res.step == 2 * (256 // 16)


def test_accumulation_equals_one_big_batch():
    m1 = script.make_model(0.0)
    fit(m1, torch.optim.SGD(m1.parameters(), lr=0.1), script.make_data(), script.mse(0), max_steps=10,
        batch_size=32, progress=False)
    m2 = script.make_model(0.0)
    fit(m2, torch.optim.SGD(m2.parameters(), lr=0.1), script.make_data(), script.mse(0), max_steps=10,
        batch_size=8, accumulate=4, progress=False)
    torch.testing.assert_close(flat(m1), flat(m2), rtol=1e-5, atol=1e-6)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full, _, _ = run(30, ema=None, schedule=lambda s: 1 - s / 30)
    # Stop at 12 (the checkpoint written at the end), then resume to 30 in a new model.
    run(12, checkpoint_dir=tmp_path, checkpoint_every=5, schedule=lambda s: 1 - s / 30)
    resumed, _, res = run(30, checkpoint_dir=tmp_path, checkpoint_every=5, schedule=lambda s: 1 - s / 30)
    assert res.resumed_from == 12 and res.step == 30 and len(res.losses) == 18
    assert torch.equal(flat(full), flat(resumed))  # dropout RNG, data order, Adam state all restored


def noisy_mse(generator):
    """A loss that draws from its own generator, as a denoising objective does."""
    def loss_fn(model, batch):
        x, y = batch
        noise = torch.randn(x.shape, generator=generator)
        return ((model(x + noise) - y) ** 2).mean()

    return loss_fn


def test_the_losss_generator_is_checkpointed_so_a_resumed_run_draws_the_same_noise(tmp_path):
    def train(steps, checkpoint_dir=None):
        model = script.make_model(dropout=0.0)
        g = torch.Generator().manual_seed(5)
        res = fit(model, torch.optim.AdamW(model.parameters(), lr=1e-2), script.make_data(), noisy_mse(g),
                  generator=g, max_steps=steps, batch_size=16, checkpoint_dir=checkpoint_dir, progress=False)
        return model, res

    full, _ = train(20)
    train(8, tmp_path)
    resumed, res = train(20, tmp_path)  # a fresh generator: its state comes from the checkpoint
    assert res.resumed_from == 8
    assert torch.equal(flat(full), flat(resumed))
    without, _ = train(20)  # and the noise matters: a generator ignored on resume would differ
    g_other = torch.Generator().manual_seed(6)
    other = script.make_model(dropout=0.0)
    fit(other, torch.optim.AdamW(other.parameters(), lr=1e-2), script.make_data(), noisy_mse(g_other),
        max_steps=20, batch_size=16, progress=False)
    assert torch.equal(flat(full), flat(without)) and not torch.equal(flat(full), flat(other))


def test_a_generator_cannot_resume_from_a_checkpoint_without_its_state(tmp_path):
    model = script.make_model(dropout=0.0)
    fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), script.mse(0), max_steps=2,
        batch_size=16, checkpoint_dir=tmp_path, progress=False)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(CheckpointError, match="generator"):
        fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), noisy_mse(g), generator=g,
            max_steps=4, batch_size=16, checkpoint_dir=tmp_path, progress=False)


def test_resume_restores_ema_and_truncates_the_metrics_log(tmp_path):
    def go(steps):
        model = script.make_model()
        ema = EMA(model, decay=0.9)
        fit(model, torch.optim.AdamW(model.parameters(), lr=1e-2), script.make_data(), script.mse(0),
            max_steps=steps, batch_size=16, ema=ema, checkpoint_dir=tmp_path / "ck", checkpoint_every=4,
            metrics_path=tmp_path / "m.jsonl", log_every=1, progress=False)
        return ema

    straight = EMA(script.make_model(), decay=0.9)
    m = script.make_model()
    fit(m, torch.optim.AdamW(m.parameters(), lr=1e-2), script.make_data(), script.mse(0), max_steps=20,
        batch_size=16, ema=straight, progress=False)
    go(8)
    # Pretend the process died after step 8 had logged steps 9-10 but not checkpointed them.
    with (tmp_path / "m.jsonl").open("a") as f:
        f.write(json.dumps({"step": 9, "loss": 0.0}) + "\n" + json.dumps({"step": 10, "loss": 0.0}) + "\n")
        f.write('{"step": 11, "lo')  # torn by the kill
    ema = go(20)
    for k in straight.shadow:
        assert torch.equal(straight.shadow[k], ema.shadow[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))


def test_resume_with_a_different_batch_size_is_refused(tmp_path):
    run(5, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size: checkpoint 16 vs now 8"):
        model = script.make_model()
        fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), script.mse(0), max_steps=10,
            batch_size=8, checkpoint_dir=tmp_path, progress=False)


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    run(5, checkpoint_dir=tmp_path)
    path = tmp_path / "last.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        run(10, checkpoint_dir=tmp_path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_checkpoint_round_trips_nested_state(tmp_path):
    state = {"a": torch.arange(3), "b": {0: {"m": torch.ones(2, 2)}, 1: [1, 2.5, None]}, "t": (1, "x"),
             "f": float("inf")}
    skeleton, tensors = flatten_state(state)
    assert set(tensors) == {"a", "b/0/m"}
    back = load_checkpoint(save_checkpoint(tmp_path / "c.safetensors", state))
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["b"][0]["m"], state["b"][0]["m"])
    assert back["b"][1] == [1, 2.5, None] and back["t"] == (1, "x") and math.isinf(back["f"])
    assert unflatten_state(skeleton, tensors)["t"] == (1, "x")
    assert not list(tmp_path.glob(".c.safetensors.*"))  # atomic write left no temp file


def test_optimizer_state_survives_a_checkpoint_into_torch_adamw(tmp_path):
    model, opt, _ = run(5)
    back = load_checkpoint(save_checkpoint(tmp_path / "o.safetensors", {"opt": opt.state_dict()}))
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fresh.load_state_dict(back["opt"])
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], fresh.state[p][key])


def test_nan_loss_in_fp32_stops_naming_the_step():
    model = script.make_model()
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss = script.mse(0)(model, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    with pytest.raises(NonFiniteLossError, match="at step 3"):
        fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), loss_fn, max_steps=10, batch_size=16,
            progress=False)


def test_nan_loss_in_fp16_skips_the_step_and_lowers_the_scale():
    pytest.importorskip("deepnotes.amp")
    from deepnotes.amp import DynamicLossScaler

    model = script.make_model(0.0)
    snapshots = []

    def loss_fn(model, batch):
        snapshots.append(flat(model).clone())
        loss = script.mse(0)(model, batch)
        return loss * float("nan") if len(snapshots) == 4 else loss

    scaler = DynamicLossScaler(init_scale=2.0**10)
    res = fit(model, torch.optim.AdamW(model.parameters(), lr=1e-3), script.make_data(), loss_fn, max_steps=6,
              batch_size=16, precision="fp16", scaler=scaler, progress=False)
    assert res.skipped_steps == 1
    assert res.scale == 2.0**9
    assert torch.equal(snapshots[3], snapshots[4])  # the NaN step changed nothing
    assert not torch.equal(snapshots[2], snapshots[3])


def test_bf16_training_tracks_fp32():
    _, _, fp32 = run(40, dropout=0.0)
    _, _, bf16 = run(40, dropout=0.0, precision="bf16")
    assert abs(sum(bf16.losses[-5:]) / sum(fp32.losses[-5:]) - 1) < 0.1


def test_grad_clip_bounds_the_update_and_reports_the_norm(tmp_path):
    import copy

    clip = 1e-3
    model = script.make_model(0.0)
    reference = copy.deepcopy(model)
    before = flat(model).clone()
    fit(model, torch.optim.SGD(model.parameters(), lr=1.0), script.make_data(), script.mse(0), max_steps=1,
        batch_size=16, shuffle=False, grad_clip=clip, metrics_path=tmp_path / "m.jsonl", log_every=1,
        progress=False)
    # The same step by hand: torch's clip_grad_norm_ on the first batch's gradient, then SGD with lr 1.
    x, y = script.make_data().tensors
    ((reference(x[:16]) - y[:16]) ** 2).mean().backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
    torch.optim.SGD(reference.parameters(), lr=1.0).step()
    torch.testing.assert_close(flat(model), flat(reference))
    assert (flat(model) - before).norm() <= clip * (1 + 1e-3)  # the clipped gradient (float32 differences)
    (line,) = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert line["grad_norm"] == pytest.approx(float(norm)) and line["grad_norm"] > clip  # pre-clip norm


def test_eval_fn_runs_every_k_steps_in_eval_mode():
    modes = []

    def eval_fn(model):
        modes.append(model.training)
        return {"val": 1.0}

    _, _, res = run(10, eval_fn=eval_fn, eval_every=4)
    assert [e["step"] for e in res.evals] == [4, 8, 10]
    assert modes == [False, False, False]


def test_ema_warmup_decay_matches_its_formula():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.99)
    want = 0.0
    for n in range(5):
        with torch.no_grad():
            model.weight.fill_(float(n + 1))
        d = min(0.99, (1 + n) / (10 + n))
        want = d * want + (1 - d) * (n + 1)
        ema.update(model)
    assert ema.shadow["weight"].item() == pytest.approx(want, rel=1e-6)
    with ema.average_parameters(model):
        assert model.weight.item() == pytest.approx(want, rel=1e-6)
    assert model.weight.item() == 5.0


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "fp8"}, "precision"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_steps": None}, "max_steps or max_epochs"),
    ({"grad_clip": -1.0}, "grad_clip"),
    ({"learning_rate": 1.0}, "unexpected keyword argument 'learning_rate'"),
])
def test_bad_configuration_is_rejected(kwargs, match):
    model = script.make_model()
    args = {"max_steps": 2, "batch_size": 4, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), script.mse(0), **args)


def test_too_little_data_for_one_step_is_rejected():
    model = script.make_model()
    data = TensorDataset(torch.randn(4, 8), torch.randn(4, 1))
    with pytest.raises(ValueError, match="too few for one step"):
        fit(model, torch.optim.AdamW(model.parameters()), data, script.mse(0), max_steps=1, batch_size=8)


def test_config_object_and_overrides_combine():
    model = script.make_model()
    res = fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), script.mse(0),
              config=FitConfig(batch_size=16, max_steps=100, progress=False), max_steps=3)
    assert res.step == 3


def test_every_config_field_is_an_explicit_keyword_of_fit():
    import dataclasses
    import inspect

    params = inspect.signature(fit).parameters
    for f in dataclasses.fields(FitConfig):
        assert f.name in params, f"fit() lacks the keyword {f.name}"
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY


def test_an_explicit_none_replaces_the_configs_value(tmp_path):
    model = script.make_model()
    config = FitConfig(batch_size=16, max_steps=2, progress=False, checkpoint_dir=tmp_path / "ckpt")
    fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), script.mse(0), config=config,
        checkpoint_dir=None)
    assert not (tmp_path / "ckpt").exists()
    fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), script.mse(0), config=config)
    assert (tmp_path / "ckpt" / "last.safetensors").is_file()


def test_sigterm_is_only_intercepted_when_there_is_a_checkpoint_to_write(tmp_path):
    import signal

    seen = []

    def loss_fn(model, batch):
        seen.append(signal.getsignal(signal.SIGTERM))
        return script.mse(0)(model, batch)

    before = signal.getsignal(signal.SIGTERM)
    for ckpt in (None, tmp_path):
        model = script.make_model()
        fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), loss_fn, max_steps=1, batch_size=16,
            checkpoint_dir=ckpt, progress=False)
    assert seen[0] is before and seen[1] is not before
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_loaded_checkpoint_is_independent_of_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.arange(1000.0)})
    state = load_checkpoint(path)
    save_checkpoint(path, {"w": torch.zeros(1000)})  # overwritten after loading
    path.write_bytes(path.read_bytes()[:100])  # then truncated (a mmap-backed tensor would SIGBUS here)
    assert torch.equal(state["w"], torch.arange(1000.0))


def test_a_flipped_bit_in_tensor_data_is_caught_and_named(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"model": {"weight": torch.ones(64)}})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model/weight.*checksum"):
        load_checkpoint(path)


def test_a_save_removes_temp_files_left_by_a_killed_save(tmp_path):
    (tmp_path / ".c.safetensors.abc123.tmp").write_bytes(b"")  # what kill -9 mid-save leaves
    save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def nan_loss(model, batch):
    return script.mse(0)(model, batch) * float("nan")


def test_fp16_with_a_disabled_scaler_stops_on_a_nan_loss_like_fp32():
    from deepnotes.amp import DynamicLossScaler

    model = script.make_model()
    with pytest.raises(NonFiniteLossError, match="at step 1"):
        fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), nan_loss, max_steps=5, batch_size=16,
            precision="fp16", scaler=DynamicLossScaler(enabled=False), progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN step was applied


def test_an_fp16_nan_storm_stops_after_max_skipped_steps_naming_step_and_scale(tmp_path):
    """In a subprocess, as a user would meet it: the run ends with the error instead of 'done'."""
    code = (
        "import torch, sys; sys.path.insert(0, %r); import train_script as s\n"
        "from deepnotes.train import fit\n"
        "m = s.make_model()\n"
        "fit(m, torch.optim.AdamW(m.parameters()), s.make_data(), lambda m, b: s.mse(0)(m, b) * float('nan'),\n"
        "    max_steps=500, batch_size=16, precision='fp16', max_skipped_steps=20, progress=False)\n"
    ) % str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "NonFiniteLossError" in proc.stderr and "skipped 20 steps in a row (steps 1-20)" in proc.stderr
    assert "scale down to" in proc.stderr


def test_torchs_grad_scaler_works_as_the_fp16_scaler():
    from deepnotes.amp import DynamicLossScaler

    runs = {}
    for name, scaler in [("torch", torch.amp.GradScaler("cpu", growth_interval=2)),
                         ("ours", DynamicLossScaler(growth_interval=2))]:
        model = script.make_model()
        res = fit(model, torch.optim.AdamW(model.parameters(), lr=1e-3), script.make_data(), script.mse(0),
                  max_steps=5, batch_size=16, precision="fp16", scaler=scaler, progress=False)
        runs[name] = (res, model.state_dict())
    (res_t, weights_t), (res_o, weights_o) = runs["torch"], runs["ours"]
    assert res_t.step == 5 and res_t.skipped_steps == res_o.skipped_steps
    assert res_t.scale == res_o.scale != 2.0**16  # the scale moved: the scaler was driven, not bypassed
    assert res_t.losses == res_o.losses
    for key in weights_o:
        torch.testing.assert_close(weights_t[key], weights_o[key], rtol=0, atol=0)


@pytest.mark.parametrize("kw, match", [
    (dict(scaler="sgd"), "scaler is only used with precision='fp16'"),
    (dict(precision="fp16", scaler=object()), "GradScaler's methods"),
])
def test_a_scaler_that_cannot_be_used_is_rejected_before_training(kw, match):
    from deepnotes.amp import DynamicLossScaler

    if kw.get("scaler") == "sgd":
        kw = dict(scaler=DynamicLossScaler())
    model = script.make_model()
    before = flat(model).clone()
    with pytest.raises((ValueError, TypeError), match=match):
        fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), script.mse(0), max_steps=2,
            batch_size=16, progress=False, **kw)
    assert torch.equal(flat(model), before)


@pytest.mark.parametrize("returned", [lambda loss: loss.detach(), lambda loss: float(loss.detach()), lambda loss: None,
                                      lambda loss: loss.expand(3)])
def test_loss_fn_must_return_a_scalar_tensor_with_grad(returned):
    model = script.make_model()
    with pytest.raises(TypeError, match="loss_fn must return"):
        fit(model, torch.optim.AdamW(model.parameters()), script.make_data(),
            lambda m, b: returned(script.mse(0)(m, b)), max_steps=2, batch_size=16, progress=False)


def test_unwritable_checkpoint_dir_or_metrics_path_fails_before_any_step(tmp_path):
    (tmp_path / "file").write_text("x")
    model = script.make_model()
    calls = []

    def loss_fn(m, b):
        calls.append(1)
        return script.mse(0)(m, b)

    for kw, match in ((dict(checkpoint_dir=tmp_path / "file"), "checkpoint_dir"),
                      (dict(metrics_path=tmp_path / "file" / "m.jsonl"), "metrics_path"),
                      (dict(metrics_path=tmp_path), "metrics_path")):
        with pytest.raises(ValueError, match=match):
            fit(model, torch.optim.AdamW(model.parameters()), script.make_data(), loss_fn, max_steps=2,
                batch_size=16, progress=False, **kw)
    assert calls == []


def test_a_step_skipped_by_torchs_grad_scaler_is_counted():
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        loss = script.mse(0)(model, batch)
        return loss * float("nan") if len(calls) == 2 else loss

    model = script.make_model()
    res = fit(model, torch.optim.AdamW(model.parameters(), lr=1e-3), script.make_data(), loss_fn, max_steps=4,
              batch_size=16, precision="fp16", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10), progress=False)
    assert res.skipped_steps == 1 and res.scale == 2.0**9


def test_resuming_with_another_optimizer_class_or_group_layout_is_refused(tmp_path):
    run(5, checkpoint_dir=tmp_path)  # AdamW, one group
    model = script.make_model()
    with pytest.raises(CheckpointError, match="AdamW state, this run's optimizer is SGD"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), script.make_data(), script.mse(0),
            max_steps=10, batch_size=16, checkpoint_dir=tmp_path, progress=False)
    model = script.make_model()
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[3].parameters())}]
    with pytest.raises(CheckpointError, match=r"sizes \[4\], this run's has \[2, 2\]"):
        fit(model, torch.optim.AdamW(groups, lr=1e-2), script.make_data(), script.mse(0), max_steps=10,
            batch_size=16, checkpoint_dir=tmp_path, progress=False)


def test_resuming_with_another_lr_or_dataset_warns_and_resume_lr_chooses(tmp_path):
    run(5, checkpoint_dir=tmp_path / "a")  # lr 1e-2
    run(5, checkpoint_dir=tmp_path / "b")
    for folder, choice, want in (("a", "checkpoint", 1e-2), ("b", "current", 5e-3)):
        model = script.make_model()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
        with pytest.warns(UserWarning, match=f"lr is \\[0.005\\].*resume_lr='{choice}'"):
            fit(model, opt, script.make_data(), script.mse(0), max_steps=6, batch_size=16, progress=False,
                checkpoint_dir=tmp_path / folder, resume_lr=choice)
        assert opt.param_groups[0]["lr"] == want
    model = script.make_model()
    with pytest.warns(UserWarning, match="train_data has 128 examples, the checkpoint's run had 256"):
        fit(model, torch.optim.AdamW(model.parameters(), lr=1e-2), script.make_data(n=128), script.mse(0),
            max_steps=7, batch_size=16, progress=False, checkpoint_dir=tmp_path / "a")


def test_the_progress_bar_shows_skipped_steps():
    import io

    from rich.console import Console

    from deepnotes.train.progress import _RichBar

    bar = _RichBar(total=3, done=0)
    bar.progress.live.console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with bar:
        bar.advance(0.5, 0)
        assert bar.progress.tasks[0].fields["skipped"] == ""
        bar.advance(0.4, 2)
    assert bar.progress.tasks[0].fields["skipped"] == "skipped 2"


def test_a_tensor_dataset_is_batched_by_indexing_with_the_same_batches_as_item_by_item():
    class ItemByItem(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            return self.inner[i]

    weights = []
    for data in (script.make_data(), ItemByItem(script.make_data())):
        model = script.make_model(dropout=0.0)
        fit(model, torch.optim.AdamW(model.parameters(), lr=1e-2), data, script.mse(0), max_steps=6, batch_size=16,
            progress=False)
        weights.append(flat(model))
    assert torch.equal(weights[0], weights[1])


def test_ema_updates_every_name_of_a_tied_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    model[1].weight = model[0].weight  # tied: two state_dict names, one parameter
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    assert torch.equal(ema.shadow["0.weight"], ema.shadow["1.weight"])
    torch.testing.assert_close(ema.shadow["0.weight"], model[0].weight.detach() - 0.5)
