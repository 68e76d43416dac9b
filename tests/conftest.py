import pytest
import torch
import torch.nn.functional as F


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
