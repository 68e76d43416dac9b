"""cmbrl.components.calibration: the MuJoCo ground truth, the penalties' scores, determinism, the example."""
import itertools
import math
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from cmbrl import DynamicsEnsemble, make_dataset
from cmbrl.components.calibration import (CALIBRATION_ENVS, auroc, calibration_data, calibration_metrics,
                                          morel_halt_threshold, plot_reliability, simulate_transitions, spearman)
from cmbrl.components.penalties import max_pairwise_diff

ENVS = sorted(CALIBRATION_ENVS)


def real_transitions(env_id: str, steps: int = 60, seed: int = 0):
    """A recorded trajectory of the real env under random actions (resets after termination)."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    rows = {"observation": [], "action": [], "next_observation": [], "reward": [], "terminated": [], "x": []}
    for _ in range(steps):
        action = env.action_space.sample()
        rows["x"].append(env.unwrapped.data.qpos[0])
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, next_obs, reward, terminated)):
            rows[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    return {k: torch.as_tensor(np.asarray(v)) for k, v in rows.items()}


@pytest.mark.parametrize("env_id", ENVS)
def test_simulator_reproduces_recorded_real_transitions(env_id):
    rec = real_transitions(env_id)
    truth = simulate_transitions(env_id, rec["observation"], rec["action"])
    clip = CALIBRATION_ENVS[env_id]
    expected_valid = (torch.ones(len(rec["x"]), dtype=torch.bool) if clip is None
                      else rec["observation"][:, -(rec["observation"].shape[1] + 1) // 2:].abs().amax(-1) < clip)
    assert torch.equal(truth["valid"], expected_valid) and truth["valid"].sum() >= 10
    valid = truth["valid"]
    # exact up to float rounding: x differs (world coordinates round differently), nothing else does
    torch.testing.assert_close(truth["next", "observation"][valid], rec["next_observation"][valid], atol=1e-9, rtol=0)
    torch.testing.assert_close(truth["next", "reward"][valid, 0], rec["reward"][valid].double(), atol=1e-9, rtol=0)
    assert torch.equal(truth["next", "terminated"][valid, 0], rec["terminated"][valid])
    assert truth["next", "observation"][~valid].isnan().all()


@pytest.mark.parametrize("env_id", ENVS)
def test_x_position_omitted_by_the_observation_does_not_change_the_step(env_id):
    rec = real_transitions(env_id, steps=40, seed=1)
    runs = [simulate_transitions(env_id, rec["observation"], rec["action"], x_position=x) for x in (0.0, 7.3, -120.0)]
    for other in runs[1:]:
        assert torch.equal(other["valid"], runs[0]["valid"])
        valid = other["valid"]
        for key in (("next", "observation"), ("next", "reward")):
            torch.testing.assert_close(other[key][valid], runs[0][key][valid], atol=1e-9, rtol=0)
        assert torch.equal(other["next", "terminated"], runs[0]["next", "terminated"])


def test_velocity_at_the_observation_clip_is_invalid_and_bad_inputs_raise():
    rec = real_transitions("Hopper-v5", steps=3)
    obs = rec["observation"].clone()
    obs[1, -1] = 10.0  # Hopper-v5 clips qvel to ±10 in the observation: the state is unknown
    obs[2, 0] = math.nan
    assert simulate_transitions("Hopper-v5", obs, rec["action"])["valid"].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="Ant-v5"):
        simulate_transitions("Ant-v5", obs, rec["action"])
    with pytest.raises(ValueError, match=r"\(B, 11\)"):
        simulate_transitions("Hopper-v5", obs[:, :10], rec["action"])


class OracleEnsemble(DynamicsEnsemble):
    """A toy ensemble whose members predict the simulator's truth, member i shifted by ``i · offset`` on ``rows``."""

    def __init__(self, env_id, rows, offset=1.0, num_members=4):
        super().__init__(11, 3, num_members=num_members, num_elites=3, hidden_sizes=(4,), weight_decay=(0, 0))
        self.env_id, self.rows, self.offset = env_id, rows, offset

    def forward(self, observation, action, members="all", chunk_size=None):
        truth = simulate_transitions(self.env_id, observation, action)
        target = torch.cat([truth["next", "observation"], truth["next", "reward"]], -1).float().nan_to_num()
        shift = torch.zeros(observation.shape[0], 12)
        shift[self.rows] = self.offset
        mean = torch.stack([target + (i + 1) * shift for i in range(self.num_members)])
        index = self._member_index(members)
        mean = mean if index is None else mean[index]
        return mean, torch.full_like(mean, 0.1)


def hopper_pairs(n=40):
    rec = real_transitions("Hopper-v5", steps=n, seed=2)
    keep = simulate_transitions("Hopper-v5", rec["observation"], rec["action"])["valid"]
    return rec["observation"][keep].float(), rec["action"][keep].float()


def test_perfect_model_has_zero_true_error():
    obs, act = hopper_pairs()
    data = calibration_data(OracleEnsemble("Hopper-v5", rows=[], offset=0.0), "Hopper-v5", obs, act)
    assert data["valid"].all()
    assert data["error"].max() < 1e-4  # float32 predictions of float64 truth
    assert data["disagreement"].max() == 0


def test_disagreement_penalties_rank_the_known_rows_first():
    obs, act = hopper_pairs()
    known = [3, 11, 17, 28]
    data = calibration_data(OracleEnsemble("Hopper-v5", rows=known), "Hopper-v5", obs, act,
                            penalties=["max_pairwise_diff", "max_center_distance", "ensemble_std", "max_aleatoric"])
    assert set(torch.topk(data["error"], len(known)).indices.tolist()) == set(known)
    metrics = calibration_metrics(data, worst_fraction=len(known) / obs.shape[0],
                                  halt_thresholds={"half": 0.5, "huge": 100.0})
    for name in ("max_pairwise_diff", "max_center_distance", "ensemble_std"):
        assert set(torch.topk(data["uncertainty", name], len(known)).indices.tolist()) == set(known)
        assert metrics["penalties"][name]["auroc"] == 1.0 and metrics["penalties"][name]["spearman"] > 0
    # the members' std is the same everywhere: the aleatoric penalty cannot tell the rows apart
    assert metrics["penalties"]["max_aleatoric"]["auroc"] == 0.5
    assert math.isnan(metrics["penalties"]["max_aleatoric"]["spearman"])
    assert metrics["halting"]["half"]["precision"] == 1.0 and metrics["halting"]["half"]["recall"] == 1.0
    assert metrics["halting"]["huge"]["recall"] == 0.0 and math.isnan(metrics["halting"]["huge"]["precision"])


def test_user_callables_are_scored_next_to_the_catalogue():
    obs, act = hopper_pairs(20)

    def negative_disagreement(mean, std, member):
        return -max_pairwise_diff(mean, std, member)

    data = calibration_data(OracleEnsemble("Hopper-v5", rows=[2, 5]), "Hopper-v5", obs, act,
                            penalties=["max_pairwise_diff", negative_disagreement])
    metrics = calibration_metrics(data, worst_fraction=0.1)
    assert metrics["penalties"]["negative_disagreement"]["auroc"] == 0.0
    with pytest.raises(ValueError, match="unknown penalty"):
        calibration_data(OracleEnsemble("Hopper-v5", rows=[]), "Hopper-v5", obs, act, penalties=["nope"])
    with pytest.raises(ValueError, match="worst_fraction"):
        calibration_metrics(data, worst_fraction=1.5)


def test_spearman_and_auroc_match_their_definitions():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, generator=gen), torch.randn(200, generator=gen)
    y = x + y
    rx, ry = x.argsort().argsort().double(), y.argsort().argsort().double()
    assert spearman(x, y) == pytest.approx(np.corrcoef(rx.numpy(), ry.numpy())[0, 1], abs=1e-12)
    assert spearman(x, -x) == pytest.approx(-1.0)
    label = y > y.quantile(0.9)
    pairs = [(1.0 if x[i] > x[j] else 0.5 if x[i] == x[j] else 0.0)
             for i, j in itertools.product(torch.nonzero(label).flatten(), torch.nonzero(~label).flatten())]
    assert auroc(x, label) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert auroc(torch.zeros(10), torch.arange(10) > 7) == 0.5


def test_morel_threshold_is_the_data_largest_disagreement_over_kappa():
    ensemble = DynamicsEnsemble(11, 3, num_members=4, num_elites=3, hidden_sizes=(16,), weight_decay=(0, 0), seed=0)
    obs, act = torch.randn(50, 11), torch.rand(50, 3) * 2 - 1
    with torch.no_grad():
        mean, std = ensemble(obs, act)
    largest = max_pairwise_diff(mean, std, torch.zeros(50, dtype=torch.long)).max().item()
    assert morel_halt_threshold(ensemble, obs, act) == pytest.approx(largest)
    assert morel_halt_threshold(ensemble, obs, act, pessimism_coef=4.0) == pytest.approx(largest / 4)
    with pytest.raises(ValueError, match="pessimism_coef"):
        morel_halt_threshold(ensemble, obs, act, pessimism_coef=0.0)


def test_metrics_and_figures_are_deterministic_for_a_seed(tmp_path):
    ensemble = DynamicsEnsemble(11, 3, num_members=4, num_elites=3, hidden_sizes=(16,), weight_decay=(0, 0), seed=0)
    obs, act = hopper_pairs(30)
    truth = simulate_transitions("Hopper-v5", obs, act)

    def report(seed, name=None):
        data = calibration_data(ensemble, "Hopper-v5", obs, act, truth=truth, seed=seed,
                                penalties=["combined", "max_pairwise_diff"])
        metrics = calibration_metrics(data, num_bins=4, halt_thresholds={"k1": 0.1})
        if name is None:
            return data, metrics, None
        plot_reliability(tmp_path / name, {"data": metrics, "again": metrics}, "toy")
        return data, metrics, (tmp_path / name).read_bytes()

    (d1, m1, png1), (d2, m2, png2), (d3, _, _) = report(0, "a.png"), report(0, "b.png"), report(1)
    assert m1 == m2 and png1 == png2 and len(png1) > 1000
    assert torch.equal(d1["member"], d2["member"]) and not torch.equal(d1["member"], d3["member"])
    assert set(d1["member"].tolist()) <= set(ensemble.elite_indices.tolist())
    assert sum(m1["penalties"]["combined"]["bins"]["count"]) == m1["num_valid"] == 30


def test_calibration_example_smoke(tmp_path):
    import importlib.util
    from pathlib import Path

    from cmbrl import load_dataset

    make_dataset("cmbrl/halfcheetah/medium-v0", num_steps=400, seed=0)  # never terminates: all three sets
    ensemble = DynamicsEnsemble(17, 6, num_members=3, num_elites=2, hidden_sizes=(32,), weight_decay=(0, 0), seed=0)
    ensemble.fit(load_dataset("cmbrl/halfcheetah/medium-v0"), max_epochs=5, seed=0)
    ensemble.save(tmp_path / "ensemble_cmbrl_halfcheetah_medium-v0_n400_seed0.pt")  # found by fit_or_load_ensemble
    spec = importlib.util.spec_from_file_location(
        "calibration_example", Path(__file__).resolve().parents[1] / "examples" / "calibration.py")
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses resolve annotations through the module
    spec.loader.exec_module(example)
    results = example.main(example.Args(dataset="halfcheetah-medium", ensemble_dir=str(tmp_path), num_pairs=60,
                                        long_horizon=7, penalties="combined,max_pairwise_diff",
                                        out=str(tmp_path / "out")))
    assert list(results) == ["data", "model h=5", "model 5..7"]
    name = "halfcheetah_medium-v0_n400"
    assert (tmp_path / "out" / f"{name}.png").stat().st_size > 0
    text = (tmp_path / "out" / f"{name}.md").read_text()
    assert "| combined | max_pairwise_diff |" in text and "MOReL κ=1" in text
    summary = example.main(example.Args(summary=1, out=str(tmp_path / "out")))
    assert summary == {} and "Reward error only" in (tmp_path / "out" / "summary.md").read_text()


def test_ranking_agreement_with_the_reference_order():
    from cmbrl.components.calibration import CALIBRATION_PENALTIES, ranking_agreement

    def fake(scores):
        return {"penalties": {name: {"spearman": s, "auroc": s} for name, s in zip(CALIBRATION_PENALTIES, scores)}}

    assert ranking_agreement(fake([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])) == pytest.approx(1.0)
    assert ranking_agreement(fake([0.4, 0.5, 0.6, 0.7, 0.8, 0.9]), score="auroc") == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="lack"):
        ranking_agreement({"penalties": {}})
