import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _minari_tmp(tmp_path, monkeypatch):
    """Every test writes Minari datasets to its own temporary folder."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


@pytest.fixture
def mlp():
    """``mlp(x, [(w, b), ...])``: a plain-torch ReLU MLP (no activation after the last layer), the reference the
    hand-written update tests (test_sac.py, test_awac.py) run the agents' networks with."""
    def forward(x, layers):
        for i, (w, b) in enumerate(layers):
            x = F.linear(x, w, b)
            if i < len(layers) - 1:
                x = torch.relu(x)
        return x
    return forward


@pytest.fixture(scope="module")
def learning():
    """``benchmarks/learning.py`` imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("learning_benchmark", ROOT / "benchmarks" / "learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def examples(tmp_path):
    """A folder of fake example scripts (``bc.py``, ``fake.py``) that follow the learning benchmark's cell contract."""
    from test_learning_benchmark import FAKE_EXAMPLE

    folder = tmp_path / "examples"
    folder.mkdir()
    for algo in ("bc", "fake"):
        (folder / f"{algo}.py").write_text(FAKE_EXAMPLE)
    return folder


CUDA_AVAILABLE = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not CUDA_AVAILABLE, reason="no CUDA device (torch.cuda.is_available() is False)")])]
"""The devices device-parametrised tests run on: ``cpu`` always, ``cuda`` (marker ``cuda``) where torch sees one.
``benchmarks/gpu_check.py`` runs ``pytest -m cuda`` on a GPU machine."""


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device-parametrised test once per entry of :data:`DEVICES`, as ``resolve_device`` gives it (``cuda:0``,
    with its index, so that it equals ``tensor.device``)."""
    from cmbrl.components.devices import resolve_device

    return resolve_device(request.param)
