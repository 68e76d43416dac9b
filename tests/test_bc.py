"""BC: learning on a toy regression, bounds, seeding, input errors, checkpoints, and a smoke run of examples/bc.py."""
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from cmbrl import BC, collect_dataset

ROOT = Path(__file__).resolve().parents[1]


def toy_data(n=512, obs_dim=5, act_dim=3, seed=0):
    """Observations N(0, 1), actions tanh(obs @ W): a deterministic expert a BC policy can represent."""
    g = torch.Generator().manual_seed(seed)
    observation = torch.randn(n, obs_dim, generator=g)
    weight = torch.randn(obs_dim, act_dim, generator=g)
    return TensorDict({"observation": observation, "action": torch.tanh(observation @ weight)}, [n])


def mse(agent, data):
    with torch.no_grad():
        return float(((agent.policy(data.select("observation").clone())["action"] - data["action"]) ** 2).mean())


def test_update_reduces_mse_on_toy_dataset():
    data = toy_data()
    agent = BC(5, 3, hidden_sizes=(64, 64), lr=1e-3, seed=0)
    expert_actions = data["action"].clone()
    initial = mse(agent, data)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        metrics = agent.update(data[torch.randint(0, 512, (64,), generator=g)])
    assert set(metrics) == {"loss_bc"} and isinstance(metrics["loss_bc"], float)
    final = mse(agent, data)
    assert initial > 0.1 and final < 0.05 * initial, (initial, final)
    assert torch.equal(data["action"], expert_actions)  # BCLoss writes its prediction into a copy, not our batch


def test_loss_bc_is_the_mean_squared_error_before_the_step():
    data = toy_data(n=32)
    agent = BC(5, 3, seed=0)
    expected = mse(agent, data)
    assert agent.update(data)["loss_bc"] == pytest.approx(expected, rel=1e-5)


def test_actions_stay_within_asymmetric_bounds():
    low, high = torch.tensor([-2.0, 0.0, 0.5]), torch.tensor([-1.0, 3.0, 0.6])
    agent = BC(5, 3, action_low=low, action_high=high, seed=0)
    observation = 1e3 * torch.randn(256, 5)  # saturate the tanh
    actions = agent.policy(TensorDict({"observation": observation}, [256]))["action"]
    assert ((actions >= low) & (actions <= high)).all()
    assert torch.equal(agent.policy.spec["action"].space.low, low)
    numpy_actions = agent.act(observation.numpy().astype(np.float64))
    assert numpy_actions.shape == (256, 3) and numpy_actions.dtype == np.float32
    np.testing.assert_allclose(numpy_actions, actions.detach().numpy())
    assert agent.act(observation[0].numpy()).shape == (3,)
    # the scaling is right: regressing onto the upper corner moves actions from mid-box to near it (tanh saturates,
    # so the bound itself is only approached; dimensions with a narrow range learn slower under the MSE)
    data = TensorDict({"observation": torch.randn(64, 5), "action": high.expand(64, 3).clone()}, [64])
    for _ in range(200):
        agent.update(data)
    assert (agent.act(data["observation"].numpy()) > (high - 0.2 * (high - low)).numpy()).all()


def test_observation_standardisation_is_part_of_the_policy():
    mean, std = torch.tensor([10.0, -5.0, 0.0, 1.0, 2.0]), torch.tensor([2.0, 0.5, 1.0, 3.0, 1.0])
    plain, standardised = BC(5, 3, seed=0), BC(5, 3, observation_mean=mean, observation_std=std, seed=0)
    observation = torch.randn(8, 5)
    np.testing.assert_allclose(standardised.act((observation * std + mean).numpy()), plain.act(observation.numpy()),
                               rtol=1e-5, atol=1e-6)


def test_seeded_init_is_reproducible_and_leaves_the_global_rng_alone():
    rng_state = torch.get_rng_state()
    a, b, c = BC(5, 3, seed=1), BC(5, 3, seed=1), BC(5, 3, seed=2)
    assert torch.equal(torch.get_rng_state(), rng_state)
    params = [dict(agent.policy.named_parameters()) for agent in (a, b, c)]
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])
    assert not all(torch.equal(params[0][k], params[2][k]) for k in params[0])


def test_bad_input_raises_clear_errors():
    agent = BC(5, 3, seed=0)
    with pytest.raises(ValueError, match=r"missing \['action'\]"):
        agent.update(TensorDict({"observation": torch.randn(4, 5)}, [4]))
    with pytest.raises(ValueError, match=r"missing \['observation'\]"):
        agent.update(TensorDict({"obs": torch.randn(4, 5), "action": torch.zeros(4, 3)}, [4]))
    # TorchRL's BCLoss would broadcast a (4, 1) action against the (4, 3) prediction with only a warning
    with pytest.raises(ValueError, match=r"'action' must have shape \(B, 3\) = \(4, 3\), got \(4, 1\)"):
        agent.update(TensorDict({"observation": torch.randn(4, 5), "action": torch.zeros(4, 1)}, [4]))
    with pytest.raises(ValueError, match=r"'observation' must have shape \(B, 5\) = \(4, 5\), got \(4, 6\)"):
        agent.update(TensorDict({"observation": torch.randn(4, 6), "action": torch.zeros(4, 3)}, [4]))
    with pytest.raises(ValueError, match=r"batch size \(B,\), got \(2, 2\)"):
        agent.update(TensorDict({"observation": torch.randn(2, 2, 5), "action": torch.zeros(2, 2, 3)}, [2, 2]))
    with pytest.raises(TypeError, match="floating point, got torch.int64"):
        agent.update(TensorDict({"observation": torch.randn(4, 5), "action": torch.zeros(4, 3, dtype=torch.long)},
                                [4]))
    with pytest.raises(TypeError, match="got dict"):
        agent.update({"observation": torch.randn(4, 5), "action": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match=r"shape \(5,\) or \(B, 5\), got \(4,\)"):
        agent.act(np.zeros(4))
    with pytest.raises(ValueError, match="action_low must be below action_high"):
        BC(5, 3, action_low=[-1.0, 1.0, -1.0], action_high=1.0)
    with pytest.raises(ValueError, match=r"action_high must be a scalar or have shape \(3,\), got shape \(2,\)"):
        BC(5, 3, action_high=[1.0, 1.0])
    with pytest.raises(ValueError, match="observation_std must be positive"):
        BC(5, 3, observation_std=torch.zeros(5))
    with pytest.raises(ValueError, match="positive ints, got 0"):
        BC(0, 3)


def test_float64_batches_are_accepted():
    data = toy_data(n=16)
    assert math.isfinite(BC(5, 3, seed=0).update(data.double())["loss_bc"])


def test_state_dict_round_trip_restores_actions_and_optimizer():
    data = toy_data(n=64)
    mean, std = data["observation"].mean(0), data["observation"].std(0) + 1e-3
    a = BC(5, 3, observation_mean=mean, observation_std=std, seed=0)
    for _ in range(3):
        a.update(data)
    b = BC(5, 3, seed=1)  # other weights, no standardisation: both must come from the checkpoint
    b.load_state_dict(a.state_dict())
    observation = data["observation"].numpy()
    np.testing.assert_array_equal(b.act(observation), a.act(observation))
    # Adam's moments came along (copied, not shared with a): the next step is identical too
    assert a.update(data) == b.update(data)
    np.testing.assert_array_equal(b.act(observation), a.act(observation))


def test_policy_runs_in_a_torchrl_rollout():
    from torchrl.envs import GymEnv

    env = GymEnv("Pendulum-v1")  # float32 observations (3,), actions (1,) in [-2, 2]
    spec = env.action_spec
    agent = BC(3, 1, action_low=spec.space.low, action_high=spec.space.high, seed=0)
    rollout = env.rollout(5, agent.policy)
    assert rollout["action"].shape == (5, 1) and (rollout["action"].abs() <= 2).all()
    env.close()


@pytest.fixture
def tiny_dataset():
    rng = np.random.default_rng(0)
    collect_dataset("test/hopper/tiny-v0", "Hopper-v5", lambda observation: rng.uniform(-1, 1, 3), 2000,
                    ref_min_score=-20.272305, ref_max_score=3234.3)
    return "test/hopper/tiny-v0"


def test_example_main_writes_finite_results(tiny_dataset, tmp_path):
    spec = importlib.util.spec_from_file_location("bc_example", ROOT / "examples" / "bc.py")
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(example)
    args = example.Args(dataset=tiny_dataset, num_steps=50, eval_episodes=1, out=str(tmp_path / "bc"), log_every=25)
    result = example.main(args)
    written = json.loads((tmp_path / "bc" / "test_hopper_tiny-v0_seed0.json").read_text())
    assert written == result
    assert set(written) == {"dataset", "seed", "num_steps", "batch_size", "return_mean", "return_std",
                            "normalized_score", "wall_time_s"}
    assert written["dataset"] == tiny_dataset and written["num_steps"] == 50 and written["batch_size"] == 256
    assert all(math.isfinite(written[k]) for k in ("return_mean", "return_std", "normalized_score", "wall_time_s"))
    expected_score = 100 * (written["return_mean"] + 20.272305) / (3234.3 + 20.272305)  # D4RL hopper references
    assert written["normalized_score"] == pytest.approx(expected_score)
    losses = (tmp_path / "bc" / "logs" / "bc_test_hopper_tiny-v0_seed0" / "scalars" / "loss_bc.csv").read_text()
    assert [line.split(",")[0] for line in losses.splitlines()] == ["25", "50"]
    # one seed, one result: init, minibatches and evaluation episodes are all seeded
    again = example.main(dataclasses.replace(args, out=str(tmp_path / "bc2")))
    assert again["return_mean"] == result["return_mean"]
    with pytest.raises(ValueError, match="eval_episodes >= 1"):
        example.main(dataclasses.replace(args, eval_episodes=0))



def test_bc_table_runs_seeds_resumes_and_writes_the_table(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location("bc_table_example", ROOT / "examples" / "bc_table.py")
    table_example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = table_example
    spec.loader.exec_module(table_example)
    argv = ["--datasets", tiny_dataset, "--seeds", "0", "1", "--num-steps", "20", "--eval-episodes", "1",
            "--out", str(tmp_path / "table")]
    table = table_example.main(argv)
    results = [json.loads((tmp_path / "table" / f"test_hopper_tiny-v0_seed{s}.json").read_text()) for s in (0, 1)]
    row = table.splitlines()[-1]
    assert row.startswith(f"| {tiny_dataset} | 2,000 |")
    assert f"{results[0]['normalized_score']:.1f} / {results[1]['normalized_score']:.1f}" in row
    (tmp_path / "table" / "test_hopper_tiny-v0_seed0.json").write_text(
        json.dumps({**results[0], "normalized_score": 55.5}))  # a finished seed is read back, not rerun
    assert "55.5 /" in table_example.main(argv)
    assert (tmp_path / "table" / "table.md").read_text().startswith("| dataset |")
