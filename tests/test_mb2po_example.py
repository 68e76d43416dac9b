"""examples/awac.py and examples/mb2po.py: the MB2PO model buffer, and smoke runs with tiny budgets that resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from cmbrl import make_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import mb2po  # noqa: E402


@pytest.fixture
def small_hopper_dataset(tmp_path):
    make_dataset("cmbrl/hopper/medium-v0", num_steps=2_000, seed=0)
    return "cmbrl/hopper/medium-v0"


def run(script: str, *argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "examples" / script), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)


def test_model_buffer_holds_exactly_the_last_n_iterations():
    per_iteration, n = 30, 4
    buffer = mb2po.make_model_buffer(per_iteration, n)
    for iteration in range(n + 3):
        buffer.extend(TensorDict({"iteration": torch.full((per_iteration,), iteration)}, [per_iteration]))
        held = buffer.storage.get(torch.arange(len(buffer)))["iteration"]
        expected = list(range(max(0, iteration - n + 1), iteration + 1))
        assert sorted(held.unique().tolist()) == expected
        assert len(buffer) == per_iteration * len(expected)
        assert all((held == i).sum().item() == per_iteration for i in expected)
    with pytest.raises(ValueError, match="got 0, 4"):
        mb2po.make_model_buffer(0, 4)


def test_awac_example_resumes_with_a_longer_budget(small_hopper_dataset, tmp_path):
    out = tmp_path / "awac"
    common = ["--dataset", small_hopper_dataset, "--eval-every", "20", "--eval-episodes", "1", "--progress", "0",
              "--out", str(out)]
    first = run("awac.py", "--num-steps", "20", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    assert torch.load(out / "checkpoint_seed0.pt", weights_only=False)["step"] == 20
    second = run("awac.py", "--num-steps", "40", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    record = json.loads((out / "result.json").read_text())
    assert [h["step"] for h in record["history"]] == [20, 40]  # resumed at 20, not restarted
    for key in ("q_data", "mc_return", "advantage", "weight_mean", "weight_max", "loss_actor", "loss_qvalue"):
        assert key in record["history"][-1], key
    assert (out / "agent.pt").exists() and (out / "learning_curve_seed0.png").stat().st_size > 0
    refused = run("awac.py", "--num-steps", "40", "--temperature", "1.0", *common)
    assert refused.returncode != 0 and "other settings" in refused.stderr


def test_mb2po_example_trains_stage_one_then_fine_tunes_and_resumes(small_hopper_dataset, tmp_path):
    out = tmp_path / "mb2po"
    cmd = ["--dataset", small_hopper_dataset, "--awac-steps", "20", "--iterations", "2", "--updates-per-iteration",
           "10", "--rollout-batch-size", "50", "--eval-every", "1", "--eval-episodes", "1",
           "--ensemble-max-epochs", "1", "--progress", "0", "--out", str(out)]
    result = run("mb2po.py", *cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage one: no" in result.stdout and (out / "awac" / "agent.pt").exists()
    record = json.loads((out / "result.json").read_text())
    assert [h["step"] for h in record["history"]] == [0, 10, 20]  # step 0 is the AWAC policy it starts from
    assert record["awac_normalized_score"] == record["history"][0]["normalized_score"]
    for key in ("model_reward", "model_penalty", "model_terminated", "q_data", "advantage", "weight_mean"):
        assert key in record["history"][-1], key
    assert "λ=5.0, h=5, ω=0.5" in result.stdout  # MOPO's hopper-medium λ and h; the documented ω
    # the first iteration's rollouts decide the falling warning, as in MOPO (the shared rollout_stats)
    first = (out / "logs" / "mb2po_seed0" / "scalars" / "model_penalised_reward.csv").read_text().splitlines()[0]
    assert first.startswith("10,")
    assert ("will learn to fall" in result.stderr) == (float(first.split(",")[1]) < 0)
    again = run("mb2po.py", *cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage one: no" not in again.stdout and "fit dynamics ensemble" not in again.stderr
    assert torch.load(out / "checkpoint_seed0.pt", weights_only=False)["iteration"] == 2
    refused = run("mb2po.py", *cmd, "--real-ratio", "0.25")
    assert refused.returncode != 0 and "other settings" in refused.stderr
    bad = run("mb2po.py", *cmd, "--real-ratio", "1.0")
    assert bad.returncode != 0 and "got 1.0" in bad.stderr
