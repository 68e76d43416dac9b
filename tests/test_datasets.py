"""Tests for cmbrl.components.datasets: Minari -> TensorDict conversion, collection and the recipe registry."""
from __future__ import annotations

import dataclasses

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from cmbrl.agents.sac import make_sac_actor
from cmbrl.components.datasets import (
    DATASET_RECIPES,
    DatasetRecipe,
    collect_dataset,
    load_dataset,
    load_policy,
    make_dataset,
)
from minari.data_collector import EpisodeBuffer
from tensordict import TensorDict

HOPPER_RECIPE = "cmbrl/hopper/medium-v0"


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    """Points Minari at an empty temporary root, as Minari's own tests do."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def policy_file(tmp_path):
    """A randomly initialised Hopper SAC actor saved in the checkpoint format of the recipes."""
    torch.manual_seed(0)
    actor = make_sac_actor(11, 3, hidden_sizes=(32, 32))
    path = tmp_path / "random_sac.pt"
    torch.save({"actor": actor.state_dict(), "observation_dim": 11, "action_dim": 3, "hidden_sizes": [32, 32],
                "eval_return": 0.0}, path)
    return path


def uniform_policy(seed: int):
    rng = np.random.default_rng(seed)
    return lambda observation: rng.uniform(-1.0, 1.0, size=3).astype(np.float32)


def test_load_dataset_matches_minari():
    num_steps = 1500
    dataset = collect_dataset("test/hopper/uniform-v0", "Hopper-v5", uniform_policy(0), num_steps, seed=3,
                              ref_min_score=-20.272305, ref_max_score=3234.3, description="uniform actions",
                              algorithm_name="uniform")
    episodes = list(minari.load_dataset("test/hopper/uniform-v0").iterate_episodes())
    td = load_dataset("test/hopper/uniform-v0")

    assert td.batch_size == (num_steps,) and dataset.total_steps == num_steps
    for key, shape, dtype in [("observation", (num_steps, 11), torch.float32),
                              ("action", (num_steps, 3), torch.float32),
                              (("next", "observation"), (num_steps, 11), torch.float32),
                              (("next", "reward"), (num_steps, 1), torch.float32),
                              (("next", "terminated"), (num_steps, 1), torch.bool),
                              (("next", "truncated"), (num_steps, 1), torch.bool),
                              (("next", "done"), (num_steps, 1), torch.bool)]:
        assert td[key].shape == shape and td[key].dtype == dtype, key

    def cat(arrays, dtype):
        return torch.as_tensor(np.concatenate(arrays), dtype=dtype)

    for episode in episodes:  # Minari's invariant
        assert len(episode.observations) == len(episode.actions) + 1 == len(episode.rewards) + 1
    torch.testing.assert_close(td["observation"], cat([e.observations[:-1] for e in episodes], torch.float32))
    torch.testing.assert_close(td["next", "observation"], cat([e.observations[1:] for e in episodes], torch.float32))
    torch.testing.assert_close(td["action"], cat([e.actions for e in episodes], torch.float32))
    torch.testing.assert_close(td["next", "reward"][:, 0], cat([e.rewards for e in episodes], torch.float32))
    assert torch.equal(td["next", "terminated"][:, 0], cat([e.terminations for e in episodes], torch.bool))
    assert torch.equal(td["next", "truncated"][:, 0], cat([e.truncations for e in episodes], torch.bool))
    assert torch.equal(td["next", "done"], td["next", "terminated"] | td["next", "truncated"])

    # Random Hopper falls over: many terminated episodes, and the last one is cut at num_steps -> truncated.
    ends = torch.cumsum(torch.tensor([len(e) for e in episodes]), 0) - 1
    assert len(episodes) > 1 and td["next", "terminated"].any()
    assert td["next", "done"][:, 0].nonzero()[:, 0].tolist() == ends.tolist()
    assert td["next", "truncated"][-1].item() and not td["next", "terminated"][-1].item()
    # Within an episode the next observation is the following step's observation.
    within = torch.ones(num_steps - 1, dtype=torch.bool)
    within[ends[:-1]] = False
    torch.testing.assert_close(td["next", "observation"][:-1][within], td["observation"][1:][within])

    returns = np.array([e.rewards.sum() for e in episodes])
    np.testing.assert_allclose(minari.get_normalized_score(dataset, returns),
                               (returns + 20.272305) / (3234.3 + 20.272305))
    assert dataset.storage.metadata["description"].startswith("uniform actions")
    assert "transitions: 1,500" in dataset.storage.metadata["description"]
    card = dataset.storage.metadata["dataset_card"]
    assert (card["num_transitions"], card["seed"]) == (1500, 3)


def test_collect_dataset_is_seeded_and_refuses_to_overwrite():
    first = collect_dataset("test/hopper/a-v0", "Hopper-v5", uniform_policy(1), 200, seed=7)
    second = collect_dataset("test/hopper/b-v0", "Hopper-v5", uniform_policy(1), 200, seed=7)
    assert first.total_steps == second.total_steps == 200
    assert (load_dataset("test/hopper/a-v0") == load_dataset("test/hopper/b-v0")).all()
    assert next(first.iterate_episodes()).observations[0].tolist() == gym.make("Hopper-v5").reset(seed=7)[0].tolist()

    with pytest.raises(FileExistsError, match="test/hopper/a-v0"):
        collect_dataset("test/hopper/a-v0", "Hopper-v5", uniform_policy(1), 200, seed=7)
    collect_dataset("test/hopper/a-v0", "Hopper-v5", uniform_policy(2), 50, seed=8, overwrite=True)
    assert load_dataset("test/hopper/a-v0").batch_size == (50,)


def test_collect_dataset_rejects_bad_arguments(minari_root):
    with pytest.raises(ValueError, match="num_steps"):
        collect_dataset("test/hopper/c-v0", "Hopper-v5", uniform_policy(0), 0)
    with pytest.raises(ValueError, match="ref_max_score"):
        collect_dataset("test/hopper/c-v0", "Hopper-v5", uniform_policy(0), 10, ref_min_score=0.0)
    with pytest.raises(ValueError, match="shape"):
        collect_dataset("test/hopper/c-v0", "Hopper-v5", lambda observation: np.zeros(2), 10)
    with pytest.raises(ValueError, match="Malformed"):
        collect_dataset("test/hopper/no version", "Hopper-v5", uniform_policy(0), 10)
    assert not (minari_root / "test" / "hopper" / "c-v0").exists()  # nothing half-written is left behind


def test_missing_dataset_raises_file_not_found(monkeypatch):
    attempts = []

    def offline(dataset_id, force_download=False):
        attempts.append(dataset_id)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(minari, "download_dataset", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("nowhere/absent-v0", download=False)
    message = str(error.value)
    assert "nowhere/absent-v0" in message and HOPPER_RECIPE in message and "network" in message
    assert attempts == []

    collect_dataset("test/hopper/local-v0", "Hopper-v5", uniform_policy(0), 10)
    for download in (None, True):  # official ids are downloaded by default
        with pytest.raises(FileNotFoundError, match="no route to host") as error:
            load_dataset("mujoco/hopper/medium-v0", download=download)
        assert "test/hopper/local-v0" in str(error.value)  # lists the local datasets
    assert attempts == ["mujoco/hopper/medium-v0"] * 2
    with pytest.raises(FileNotFoundError, match="never downloaded"):  # a typo in a cmbrl id is not downloaded
        load_dataset("cmbrl/hopper/mediun-v0")
    assert len(attempts) == 2


def test_non_finite_value_raises():
    env = gym.make("Hopper-v5")
    observation, _ = env.reset(seed=0)
    observations, actions = [observation], []
    for _ in range(5):
        action = env.action_space.sample()
        observation, *_ = env.step(action)
        observations.append(observation)
        actions.append(action)
    rewards = [1.0, 1.0, float("nan"), 1.0, 1.0]
    buffer = EpisodeBuffer(id=0, observations=observations, actions=actions, rewards=rewards,
                           terminations=[False] * 5, truncations=[False] * 4 + [True])
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers("test/hopper/nan-v0", [buffer], env="Hopper-v5")
    with pytest.raises(ValueError, match=r"episode 0: key 'rewards'.*step 2"):
        load_dataset("test/hopper/nan-v0")


def test_load_policy_samples_stochastically_and_is_seeded(policy_file):
    observation = gym.make("Hopper-v5").reset(seed=0)[0]
    policy = load_policy(policy_file, seed=0)
    actions = np.stack([policy(observation) for _ in range(4)])
    assert actions.shape == (4, 3) and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1.0) and not np.allclose(actions[0], actions[1])
    np.testing.assert_array_equal(load_policy(policy_file, seed=0)(observation), actions[0])
    with pytest.raises(ValueError, match=r"\(11,\)"):
        policy(observation[:5])


def test_numpy_policy_matches_the_torchrl_actor(policy_file):
    """The fast numpy policy draws from the same tanh-Gaussian as the TorchRL actor it was saved from."""
    checkpoint = torch.load(policy_file, weights_only=True)
    actor = make_sac_actor(11, 3, checkpoint["hidden_sizes"])
    actor.load_state_dict(checkpoint["actor"])
    observation = gym.make("Hopper-v5").reset(seed=0)[0]
    with torch.no_grad():
        dist = actor.get_dist(TensorDict({"observation": torch.as_tensor(observation, dtype=torch.float32)}))
    loc, scale = dist.base_dist.base_dist.loc.numpy(), dist.base_dist.base_dist.scale.numpy()
    eps = np.random.default_rng(5).standard_normal(3)  # float64 noise (generator v2)
    action = load_policy(policy_file, seed=5)(observation)
    np.testing.assert_allclose(action, np.tanh(loc + scale * eps), rtol=1e-5, atol=2e-6)
    grid = action.astype(np.float64) * 1e6  # on the 1e-6 grid (then float32)
    np.testing.assert_allclose(grid, np.rint(grid), atol=0.1)


def test_make_dataset_hopper_recipe(policy_file):
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    dataset = make_dataset(HOPPER_RECIPE, num_steps=300, seed=1, policy_file=policy_file)
    assert torch.equal(torch.get_rng_state(), global_state)  # the policy seed does not leak
    assert dataset.total_steps == 300
    metadata = dataset.storage.metadata
    assert (metadata["ref_min_score"], metadata["ref_max_score"]) == (-20.272305, 3234.3)
    for text in (HOPPER_RECIPE, "random_sac.pt", "transitions: 300", "seed: 1", "normalised score"):
        assert text in metadata["description"]
    minari.get_normalized_score(dataset, np.array([1000.0]))

    with pytest.raises(FileExistsError, match=HOPPER_RECIPE):
        make_dataset(HOPPER_RECIPE, num_steps=300, seed=1, policy_file=policy_file)
    td = load_dataset(HOPPER_RECIPE)  # loads the existing dataset, does not regenerate 100k steps
    assert td.batch_size == (300,)

    make_dataset(HOPPER_RECIPE, num_steps=300, seed=1, policy_file=policy_file, overwrite=True)
    assert (load_dataset(HOPPER_RECIPE) == td).all()  # same seed, same data
    make_dataset(HOPPER_RECIPE, num_steps=300, seed=2, policy_file=policy_file, overwrite=True)
    assert not torch.equal(load_dataset(HOPPER_RECIPE)["action"], td["action"])


def test_make_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match=HOPPER_RECIPE):
        make_dataset("cmbrl/unknown/recipe-v0")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        make_dataset(HOPPER_RECIPE, num_steps=10, policy_file=tmp_path / "missing.pt")


def test_load_dataset_generates_registered_recipe(monkeypatch, policy_file):
    recipe = dataclasses.replace(DATASET_RECIPES[HOPPER_RECIPE], policy_file=str(policy_file), num_steps=120)
    assert isinstance(recipe, DatasetRecipe)
    monkeypatch.setitem(DATASET_RECIPES, "cmbrl/test/tiny-v0", recipe)
    td = load_dataset("cmbrl/test/tiny-v0")
    assert td.batch_size == (120,)
    assert "cmbrl/test/tiny-v0" in minari.list_local_datasets()
