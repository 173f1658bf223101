import os
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
# Stand-in experiments must be importable by name: the runner starts each note in a fresh process.
sys.path.insert(0, str(Path(__file__).parent / "support"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: OpenMP thread teams only add synchronisation (and thrash on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
