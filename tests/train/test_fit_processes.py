"""fit() across processes: killed runs resume exactly, and torchrun DDP equals one process."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = str(Path(__file__).with_name("train_script.py"))


def launch(out, *extra):
    return subprocess.Popen([sys.executable, SCRIPT, "--out", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def logged_step(out):
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except json.JSONDecodeError:  # caught mid-write
        return 0


def kill_after(proc, out, step, sig, timeout=120):
    deadline = time.time() + timeout
    while logged_step(out) < step:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {step}: {proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("training did not reach the kill step in time")
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc


def final_weights(out):
    return load_file(str(Path(out) / "final.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    proc = launch(out, "--no-checkpoint")
    assert proc.wait(timeout=120) == 0, proc.stdout.read()
    return final_weights(out)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_from_its_checkpoint_with_the_same_final_weights(tmp_path, uninterrupted, sig):
    proc = kill_after(launch(tmp_path, "--sleep", "0.03"), tmp_path, 12, sig)
    assert not (tmp_path / "final.safetensors").exists()
    if sig == signal.SIGTERM:
        # Graceful: the step in flight finishes and is checkpointed, then the signal ends the process.
        assert proc.returncode == -signal.SIGTERM, proc.stdout.read()
    resumed = launch(tmp_path)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    assert "resumed_from=" in out and "resumed_from=None" not in out
    resumed_from = int(out.split("resumed_from=")[1].split()[0])
    if sig == signal.SIGKILL:
        assert resumed_from >= 10 and resumed_from % 5 == 0  # a periodic checkpoint (every 5), at or after 10
    else:
        assert resumed_from >= 12  # checkpointed at the signal, past the last periodic one (10)
    got = final_weights(tmp_path)
    for k, v in uninterrupted.items():
        assert torch.equal(v, got[k]), k


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed beside this interpreter")
def test_torchrun_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    proc = launch(single, "--batch", "32", "--dropout", "0", "--steps", "20")
    assert proc.wait(timeout=120) == 0, proc.stdout.read()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", SCRIPT, "--out", str(ddp), "--batch", "16",
                          "--dropout", "0", "--steps", "20"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    a, b = final_weights(single), final_weights(ddp)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    # Only rank 0 wrote the log: one line per step, no duplicates.
    steps = [json.loads(x)["step"] for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
