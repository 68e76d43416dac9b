"""Tests for the D4RL-recipe datasets: registry, random / policy / replay / combine generation, cards, the load cache,
the ``python -m cmbrl.datasets`` CLI and the shipped behaviour policies."""
from __future__ import annotations

import importlib.resources
import os

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from cmbrl.agents.sac import make_sac_actor
from cmbrl.components.datasets import (DATASET_RECIPES, ENVS, DatasetRecipe, dataset_card, format_card,
                                       load_dataset, load_policy, load_replay_schedule, make_dataset,
                                       resolve_dataset_id)
from cmbrl.datasets.__main__ import main as cli

DATA = importlib.resources.files("cmbrl.components") / "data"
NAMES = ("random", "medium", "medium-replay", "expert", "medium-expert")


def episode_returns(td):
    """Returns of the episodes in a flat transition TensorDict (split at done), and whether each ended in the env."""
    done = td["next", "done"][:, 0]
    ends = torch.nonzero(done).flatten().tolist()
    rewards = td["next", "reward"][:, 0].double()
    starts = [0] + [end + 1 for end in ends[:-1]]
    return [rewards[s:e + 1].sum().item() for s, e in zip(starts, ends)], len(ends)


def test_registry_has_the_fifteen_d4rl_datasets():
    expected = {f"cmbrl/{env}/{name}-v0" for env in ENVS for name in NAMES}
    assert set(DATASET_RECIPES) == expected
    for dataset_id, recipe in DATASET_RECIPES.items():
        env = dataset_id.split("/")[1]
        assert (recipe.env_id, recipe.ref_min_score, recipe.ref_max_score) == ENVS[env]
        assert recipe.env_id.endswith("-v5")
    assert DATASET_RECIPES["cmbrl/walker2d/random-v0"].num_steps == 1_000_000
    assert DATASET_RECIPES["cmbrl/hopper/medium-expert-v0"].sources == ("cmbrl/hopper/medium-v0",
                                                                        "cmbrl/hopper/expert-v0")


def test_recipe_validation_and_names():
    with pytest.raises(ValueError, match="kind"):
        DatasetRecipe("Hopper-v5", "mixed", 10, 0.0, 1.0, "")
    with pytest.raises(ValueError, match="policy_file"):
        DatasetRecipe("Hopper-v5", "policy", 10, 0.0, 1.0, "")
    with pytest.raises(ValueError, match="num_steps"):
        DatasetRecipe("Hopper-v5", "replay", 10, 0.0, 1.0, "", policy_file="x.pt")
    assert resolve_dataset_id("halfcheetah-medium-replay") == "cmbrl/halfcheetah/medium-replay-v0"
    assert resolve_dataset_id("mujoco/hopper/expert-v0") == "mujoco/hopper/expert-v0"
    with pytest.raises(ValueError, match="hopper-medium-expert"):
        resolve_dataset_id("hopper-meduim")
    with pytest.raises(ValueError, match="registered"):
        make_dataset("cmbrl/hopper/simple-v0")
    with pytest.raises(ValueError, match="fixed size"):
        make_dataset("cmbrl/hopper/medium-replay-v0", num_steps=10)


@pytest.mark.parametrize("env", sorted(ENVS))
def test_small_random_and_policy_datasets_per_env(env):
    """End to end for each env: random and medium generation, Minari round trip, the card matches the data."""
    env_id, ref_min, ref_max = ENVS[env]
    for name, steps in (("random", 300), ("medium", 1200)):
        dataset_id = f"cmbrl/{env}/{name}-v0"
        dataset = make_dataset(dataset_id, num_steps=steps, seed=4)
        td = load_dataset(dataset_id)
        assert td.batch_size == (steps,) == (dataset.total_steps,)
        assert dataset.spec.env_spec.id == env_id
        card = dataset_card(dataset_id)
        returns, num_episodes = episode_returns(td)
        assert (card["num_transitions"], card["num_episodes"], card["seed"]) == (steps, num_episodes, 4)
        # the last episode is cut at num_steps and left out of the return statistics, unless it ended in the env
        assert card["num_complete_episodes"] in (num_episodes, num_episodes - 1)
        complete = returns[:card["num_complete_episodes"]] or returns
        np.testing.assert_allclose(card["return_mean"], np.mean(complete), rtol=1e-5)
        np.testing.assert_allclose(card["return_max"], np.max(complete), rtol=1e-5)
        expected = 100 * (card["return_mean"] - ref_min) / (ref_max - ref_min)
        np.testing.assert_allclose(card["normalized_score_mean"], expected)
        np.testing.assert_allclose(100 * minari.get_normalized_score(dataset, np.array([card["return_mean"]])),
                                   [expected])
        assert card["return_min"] <= card["return_mean"] <= card["return_max"]
        assert format_card(card) in dataset.storage.metadata["description"]
    actions = load_dataset(f"cmbrl/{env}/random-v0")["action"]
    assert actions.abs().max() <= 1.0 and actions.std(0).min() > 0.4  # uniform on [-1, 1]: std 0.577
    assert dataset_card(f"cmbrl/{env}/medium-v0")["behavior_policies"][0]["file"] == f"{env}_medium_sac.pt"


def test_replay_recipe_follows_the_schedule(tmp_path, monkeypatch):
    torch.manual_seed(0)
    actor = make_sac_actor(11, 3, hidden_sizes=(16, 16))
    bundle = {"env_id": "Hopper-v5", "observation_dim": 11, "action_dim": 3, "hidden_sizes": [16, 16],
              "schedule": [{"frames": 0, "num_steps": 70, "actor": None, "eval_return": None},
                           {"frames": 70, "num_steps": 50,
                            "actor": {k: v.half() for k, v in actor.state_dict().items()}, "eval_return": 12.0}]}
    torch.save(bundle, tmp_path / "bundle.pt")
    schedule = load_replay_schedule(tmp_path / "bundle.pt", seed=0)
    assert [n for _, n, _ in schedule] == [70, 50] and schedule[1][2] == {"frames": 70, "num_steps": 50,
                                                                          "eval_return": 12.0}
    dataset = make_dataset("cmbrl/hopper/medium-replay-v0", policy_file=tmp_path / "bundle.pt", seed=1)
    td = load_dataset("cmbrl/hopper/medium-replay-v0")
    assert td.batch_size == (120,)
    assert td["next", "done"][69, 0] and td["next", "done"][119, 0]  # each segment ends its episode
    # the second segment starts from a reset state, not where the first stopped
    assert not torch.equal(td["observation"][70], td["next", "observation"][69])
    card = dataset.storage.metadata["dataset_card"]
    assert [policy["frames"] for policy in card["behavior_policies"]] == [0, 70]
    assert card["recipe"] == "replay" and card["num_transitions"] == 120


def test_medium_expert_is_medium_then_expert():
    make_dataset("cmbrl/walker2d/medium-v0", num_steps=400, seed=0)
    make_dataset("cmbrl/walker2d/expert-v0", num_steps=300, seed=0)
    dataset = make_dataset("cmbrl/walker2d/medium-expert-v0")
    medium, expert = load_dataset("cmbrl/walker2d/medium-v0"), load_dataset("cmbrl/walker2d/expert-v0")
    combined = load_dataset("cmbrl/walker2d/medium-expert-v0")
    assert combined.batch_size == (700,)
    assert (combined[:400] == medium).all() and (combined[400:] == expert).all()
    metadata = dataset.storage.metadata
    assert (metadata["ref_min_score"], metadata["ref_max_score"]) == ENVS["walker2d"][1:]
    card = metadata["dataset_card"]
    cards = [dataset_card("cmbrl/walker2d/medium-v0"), dataset_card("cmbrl/walker2d/expert-v0")]
    assert card["num_episodes"] == sum(c["num_episodes"] for c in cards)
    assert card["return_max"] == max(c["return_max"] for c in cards)
    assert [p["file"] for p in card["behavior_policies"]] == ["walker2d_medium_sac.pt", "walker2d_expert_sac.pt"]


def test_load_cache_is_used_and_invalidated():
    make_dataset("cmbrl/hopper/random-v0", num_steps=200, seed=0)
    first = load_dataset("cmbrl/hopper/random-v0")
    cache = minari.storage.datasets_root_dir.get_dataset_path("cmbrl/hopper/random-v0") / "cmbrl_cache"
    assert (cache / "stamp.json").is_file()
    assert (load_dataset("cmbrl/hopper/random-v0") == first).all()
    make_dataset("cmbrl/hopper/random-v0", num_steps=150, seed=1, overwrite=True)
    second = load_dataset("cmbrl/hopper/random-v0")
    assert second.batch_size == (150,) and not torch.equal(second["action"][:10], first["action"][:10])


def test_cli_make_is_idempotent_and_prints_cards(capsys):
    assert cli(["make", "hopper-random", "--num-steps", "120", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "generated in" in out and "Dataset card: cmbrl/hopper/random-v0" in out and "transitions: 120" in out
    data_file = minari.storage.datasets_root_dir.get_dataset_path("cmbrl/hopper/random-v0") / "data" / "main_data.hdf5"
    mtime = os.stat(data_file).st_mtime_ns
    assert cli(["make", "cmbrl/hopper/random-v0", "--num-steps", "999"]) == 0
    out = capsys.readouterr().out
    assert "exists" in out and "transitions: 120" in out and os.stat(data_file).st_mtime_ns == mtime
    assert cli(["card", "hopper-random"]) == 0 and "seed: 2" in capsys.readouterr().out
    assert cli(["list"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("\n") == 15 and "cmbrl/hopper/random-v0" in listing
    assert cli(["make", "hopper-randon"]) == 2
    assert "Unknown dataset name 'hopper-randon'" in capsys.readouterr().err
    assert cli(["card", "walker2d-expert"]) == 2  # not generated
    assert "walker2d/expert-v0" in capsys.readouterr().err


@pytest.mark.parametrize("env", sorted(ENVS))
def test_shipped_policies_load_and_act(env):
    env_id = ENVS[env][0]
    gym_env = gym.make(env_id)
    observation, _ = gym_env.reset(seed=0)
    for name in ("medium", "expert"):
        checkpoint = torch.load(DATA / f"{env}_{name}_sac.pt", weights_only=True)
        assert checkpoint["env_id"] == env_id and checkpoint["stochastic_return"] > ENVS[env][1]
        policy = load_policy(DATA / f"{env}_{name}_sac.pt", seed=0)
        for _ in range(20):
            action = policy(observation)
            assert action.shape == gym_env.action_space.shape and gym_env.action_space.contains(action)
            observation, *_ = gym_env.step(action)
    medium = torch.load(DATA / f"{env}_medium_sac.pt", weights_only=True)
    expert = torch.load(DATA / f"{env}_expert_sac.pt", weights_only=True)
    assert medium["stochastic_return"] < expert["stochastic_return"] and medium["frames"] <= expert["frames"]
    schedule = load_replay_schedule(DATA / f"{env}_replay_sac.pt")
    assert sum(n for _, n, _ in schedule) == medium["frames"]  # the replay buffer up to the medium policy
    assert schedule[0][2]["frames"] == 0 and schedule[-1][2]["frames"] < medium["frames"]
    assert np.all(np.isfinite(schedule[-1][0](observation)))
