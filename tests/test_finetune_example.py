"""examples/finetune.py: offline AWAC (5 critics), online with swappable explorers, resumed with a longer budget."""
import json
import sys
from pathlib import Path

import torch

from cmbrl import make_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import finetune  # noqa: E402


def test_finetune_runs_explorers_switches_and_resumes(tmp_path):
    make_dataset("cmbrl/hopper/medium-v0", num_steps=2_000, seed=0)
    out = tmp_path / "ft"
    args = finetune.Args(offline_steps=10, num_steps=8, eval_every=4, eval_episodes=1, num_candidates=8,
                         explorers="none,o3f", switch_explorer_at=6, switch_to="gaussian", threads=1, progress=0,
                         out=str(out))
    finetune.main(args)
    offline = torch.load(out / "offline" / "agent.pt", weights_only=False)
    assert offline["agent_kwargs"]["num_qvalue_nets"] == 5 and offline["agent_kwargs"]["target_subset_size"] == 2
    for name in ("none", "o3f"):
        assert torch.load(out / name / "checkpoint_seed0.pt", weights_only=False)["step"] == 8
    result = finetune.main(finetune.dataclasses.replace(args, num_steps=12))  # resumes at 8, not from scratch
    assert json.loads((out / "result.json").read_text())["normalized_score"] == result["normalized_score"]
    for name, run in result["runs"].items():
        assert [h["step"] for h in run["history"]] == [0, 4, 8, 12]
        assert [h["explorer"] for h in run["history"]] == [name, name, "gaussian", "gaussian"]
        assert run["history"][0]["normalized_score"] == result["runs"]["none"]["history"][0]["normalized_score"]
        assert set(run) >= {"normalized_score", "history", "episodes", "args", "wall_time_s"}
    assert isinstance(result["runs"]["o3f"]["history"][1]["explorer_gain"], float)  # f(chosen) - f(policy's action)
    assert result["runs"]["none"]["history"][1]["explorer_gain"] is None
    assert (out / "online_curves_seed0.png").stat().st_size > 0
