"""examples/finetune.py: offline AWAC (5 critics), online with swappable explorers, resumed with a longer budget."""
import json
import sys
from pathlib import Path

import pytest
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

    import explorer_choices  # the offline agent's O3F choices against its own samples, on data states
    agent_path = str(out / "offline" / "agent.pt")
    same = explorer_choices.main([agent_path, "--num-states", "40", "--num-candidates", "8", "--sigma", "0"])
    assert same["distance"] == 0 and abs(same["gain"]) < 1e-5  # σ = 0: every candidate is the policy's own sample
    assert same["saturated_choice"] == same["saturated_policy"]
    assert abs(same["spread_choice"] - same["spread_policy"]) < 1e-5
    spread = explorer_choices.main([agent_path, "--num-states", "40", "--num-candidates", "8", "--sigma", "0.5"])
    assert spread["distance"] > 0 and 0 <= spread["saturated_choice"] <= 1 and spread["spread_choice"] >= 0


def _explorers_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("finetune_explorers", ROOT / "benchmarks" / "finetune_explorers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finetune_cell(out, dataset, seed, evaluations, episodes):
    """A fine-tuning cell's result.json as examples/finetune.py writes it (only the fields the script reads)."""
    runs = {name: {"args": {"dataset": dataset, "seed": seed},
                   "history": [{"step": s, "normalized_score": v, "return": 10 * v} for s, v in points],
                   "episodes": [{"step": s, "normalized_score": v, "return": 10 * v} for s, v in episodes[name]]}
            for name, points in evaluations.items()}
    path = out / "finetune" / dataset.replace("/", "_") / f"seed{seed}" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"normalized_score": 0.0, "runs": runs}))


def test_finetune_explorers_summarises_seeds_and_joins_saved_ones(tmp_path):
    script = _explorers_script()
    dataset = "cmbrl/hopper/medium-v0"
    _finetune_cell(tmp_path / "a", dataset, 0,
                   {"o3f": [(0, 30), (5, 20), (10, 40)], "none": [(0, 30), (5, 35), (10, 33)]},
                   {"o3f": [(2, 10), (4, 20), (8, 30)], "none": [(3, 50)]})
    _finetune_cell(tmp_path / "b", dataset, 1,
                   {"o3f": [(0, 50), (5, 45), (10, 60)], "none": [(0, 50), (5, 40), (10, 70)]},
                   {"o3f": [(6, 40)], "none": []})
    saved = tmp_path / "saved"
    script.main([str(tmp_path / "b"), "--save", str(saved)])  # seed 1 saved by an "earlier session"
    summary = script.main([str(tmp_path / "a"), "--include", str(saved / "explorers.csv"), "--save", str(saved),
                           "--late", "2"])
    o3f, none = summary[dataset]["o3f"], summary[dataset]["none"]
    assert o3f["seeds"] == [0, 1] and o3f["steps"] == [0, 5, 10]
    assert list(o3f["mean"]) == [40.0, 32.5, 50.0] and list(o3f["std"]) == [10.0, 12.5, 10.0]
    assert o3f["drop"] == -7.5  # seed 0: 20 - 30, seed 1: 45 - 50
    assert none["drop"] == -3.5  # seed 0 stays above step 0 (lowest 33 - 30 = +3); seed 1: 40 - 50
    assert o3f["late_per_seed"] == [30.0, 52.5] and o3f["late"] == 41.25  # last 2 steps: (20+40)/2, (45+60)/2
    assert none["late_per_seed"] == [34.0, 55.0] and none["late"] == 44.5
    assert o3f["online_halves"] == [15.0, 35.0]  # steps <= 5: 10, 20; after: 30, 40
    assert o3f["windows"] == [(5, 15.0), (10, 35.0)]
    with open(saved / "explorers.csv") as f:
        assert len(f.readlines()) == 1 + 12 + 5  # header, 12 evaluations, 5 episodes
    md = (saved / "explorers.md").read_text()
    assert "| o3f | 0/1 | 40.0 ± 10.0 | 32.5 ± 12.5 | 50.0 ± 10.0 | -7.5 | 41.2 | 15.0 / 35.0 |" in md
    assert "| none | 0/1 | 40.0 ± 10.0 | 37.5 ± 2.5 | 51.5 ± 18.5 | -3.5 | 44.5 | 50.0 / – |" in md
    assert "mean of last 2" in md
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "a"), "--save", str(saved), "--late", "0"])
    assert (saved / "explorers_cmbrl_hopper_medium-v0.png").stat().st_size > 0
