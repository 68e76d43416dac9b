"""Offline datasets: Minari datasets as flat TorchRL transition TensorDicts, and a small generation recipe registry.

:func:`load_dataset` reads a local Minari dataset episode by episode into one TensorDict of ``N`` transitions with
TorchRL's keys (``"observation"``, ``"action"``, ``("next", "observation")``, ``("next", "reward")``,
``("next", "terminated")``, ``("next", "truncated")``, ``("next", "done")``). TorchRL's own
``MinariExperienceReplay`` is not used: in torchrl 0.14.1 it writes all-zero data.

Datasets that cannot be downloaded (this project often runs without network) are generated locally:
:func:`collect_dataset` rolls a policy out in a Gymnasium env and writes a Minari dataset, and
:data:`DATASET_RECIPES` names the datasets cmbrl knows how to build (:func:`make_dataset`); :func:`load_dataset`
generates a registered recipe the first time it is asked for.

Reference: Fu et al., "D4RL: Datasets for Deep Data-Driven Reinforcement Learning", arXiv:2004.07219 (the
``medium`` recipe and the reference returns used for normalised scores); Minari, https://minari.farama.org.
"""
from __future__ import annotations

import contextlib
import importlib.resources
import io
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import torch
from minari.data_collector import EpisodeBuffer
from minari.storage.datasets_root_dir import get_dataset_path
from tensordict import TensorDict
from tqdm.auto import tqdm

__all__ = ["Policy", "DatasetRecipe", "DATASET_RECIPES", "load_dataset", "collect_dataset", "make_dataset",
           "load_policy"]

Policy = Callable[[np.ndarray], np.ndarray]
"""A behaviour policy: ``observation (O,) float64 -> action (A,)``, as Gymnasium passes them."""


@dataclass(frozen=True)
class DatasetRecipe:
    """How cmbrl generates a dataset that cannot be downloaded.

    Attributes:
        env_id: Gymnasium id of the environment, e.g. ``"Hopper-v5"`` (its own ``TimeLimit`` applies).
        policy_file: behaviour-policy checkpoint (see :func:`load_policy`): a file name in ``cmbrl/components/data/``
            or an absolute path.
        num_steps: number of environment steps (= transitions) in the dataset.
        ref_min_score, ref_max_score: episode returns that normalise to 0 and 1 in
            :func:`minari.get_normalized_score` (random and expert policy, reward units).
        description: what the dataset is; stored in the Minari metadata.

    Examples:
        >>> recipe = DATASET_RECIPES["cmbrl/hopper/medium-v0"]
        >>> recipe.env_id, recipe.num_steps
        ('Hopper-v5', 100000)
    """

    env_id: str
    policy_file: str
    num_steps: int
    ref_min_score: float
    ref_max_score: float
    description: str


DATASET_RECIPES: dict[str, DatasetRecipe] = {
    "cmbrl/hopper/medium-v0": DatasetRecipe(
        env_id="Hopper-v5",
        policy_file="hopper_medium_sac.pt",
        num_steps=100_000,
        ref_min_score=-20.272305,  # D4RL hopper random-policy return
        ref_max_score=3234.3,  # D4RL hopper expert return
        description=(
            "D4RL-style hopper-medium on Hopper-v5: transitions of a stochastic SAC policy stopped early at medium "
            "performance (D4RL: about a third of expert). Scores normalise with D4RL's hopper reference returns."
        ),
    ),
}
"""Datasets cmbrl can generate, by Minari dataset id (see :class:`DatasetRecipe`)."""


def load_dataset(dataset_id: str, *, download: bool = False, progress: bool = False) -> TensorDict:
    """Loads a Minari dataset as one flat TensorDict of transitions.

    Lookup order: the local Minari root (``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``); then, if
    ``dataset_id`` is in :data:`DATASET_RECIPES`, the dataset is generated with :func:`make_dataset` (default
    recipe settings, seed 0); then, if ``download``, the Farama server.

    Args:
        dataset_id: Minari id, e.g. ``"cmbrl/hopper/medium-v0"`` or ``"mujoco/hopper/medium-v0"``.
        download: try :func:`minari.download_dataset` when the dataset is neither local nor a cmbrl recipe.
            Default False.
        progress: show tqdm bars (generation and loading). Default False.

    Returns:
        TensorDict with batch size ``(N,)``, ``N`` the number of transitions (steps) over all episodes, in episode
        order: ``"observation" (N, O)``, ``"action" (N, A)``, ``("next", "observation") (N, O)``,
        ``("next", "reward") (N, 1)`` (float32), ``("next", "terminated") (N, 1)``,
        ``("next", "truncated") (N, 1)`` and ``("next", "done") (N, 1)`` (bool, ``done = terminated | truncated``).
        Multi-dimensional observations or actions are flattened to ``O`` or ``A``.

    Raises:
        FileNotFoundError: the dataset is not local, not a recipe, and was not (or could not be) downloaded. The
            message lists the local datasets and the cmbrl recipes.
        ValueError: an observation, action or reward is NaN or infinite (the message names the episode and the key),
            an episode does not have one more observation than actions, or the dataset has no transitions.
        TypeError: observations or actions are not arrays (Dict / Tuple spaces are not supported).
    """
    dataset = _open_dataset(dataset_id, download=download, progress=progress)
    observations, actions, next_observations, rewards, terminations, truncations = [], [], [], [], [], []
    episodes = dataset.iterate_episodes()
    for episode in tqdm(episodes, total=dataset.total_episodes, disable=not progress, desc=f"loading {dataset_id}",
                        unit="episode"):
        if not isinstance(episode.observations, np.ndarray) or not isinstance(episode.actions, np.ndarray):
            raise TypeError(
                f"Dataset '{dataset_id}' episode {episode.id}: observations and actions must be arrays (Box or Discrete "
                f"spaces), got {type(episode.observations).__name__} and {type(episode.actions).__name__}."
            )
        num_steps = len(episode.rewards)
        if len(episode.observations) != num_steps + 1 or len(episode.actions) != num_steps:
            raise ValueError(
                f"Dataset '{dataset_id}' episode {episode.id}: expected {num_steps + 1} observations and {num_steps} "
                f"actions for {num_steps} rewards, got {len(episode.observations)} and {len(episode.actions)}."
            )
        for key, value in (("observations", episode.observations), ("actions", episode.actions),
                           ("rewards", episode.rewards)):
            bad = ~np.isfinite(value)
            if bad.any():
                step = int(np.argwhere(bad)[0][0])
                raise ValueError(
                    f"Dataset '{dataset_id}' episode {episode.id}: key '{key}' has a non-finite value (NaN or inf) "
                    f"at step {step}."
                )
        episode_observations = episode.observations.reshape(num_steps + 1, -1).astype(np.float32)
        observations.append(episode_observations[:-1])
        next_observations.append(episode_observations[1:])
        actions.append(episode.actions.reshape(num_steps, -1).astype(np.float32))
        rewards.append(np.asarray(episode.rewards, dtype=np.float32).reshape(num_steps, 1))
        terminations.append(np.asarray(episode.terminations, dtype=bool).reshape(num_steps, 1))
        truncations.append(np.asarray(episode.truncations, dtype=bool).reshape(num_steps, 1))

    def cat(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.cat([torch.from_numpy(array) for array in arrays])

    terminated, truncated = cat(terminations), cat(truncations)
    num_transitions = terminated.shape[0]
    if num_transitions == 0:
        raise ValueError(f"Dataset '{dataset_id}' has no transitions ({dataset.total_episodes} episodes).")
    return TensorDict(
        {
            "observation": cat(observations),
            "action": cat(actions),
            "next": {
                "observation": cat(next_observations),
                "reward": cat(rewards),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        batch_size=[num_transitions],
    )


def collect_dataset(
    dataset_id: str,
    env_id: str,
    policy: Policy,
    num_steps: int,
    *,
    seed: int = 0,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    description: str | None = None,
    algorithm_name: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> minari.MinariDataset:
    """Rolls ``policy`` out in ``gymnasium.make(env_id)`` for exactly ``num_steps`` steps and writes a Minari dataset.

    Episodes end on termination or on the env's own truncation (its ``TimeLimit``, 1000 steps for MuJoCo); the last
    episode is cut at ``num_steps`` and then marked truncated. The env is reset with ``seed`` before the first
    episode and unseeded afterwards; its action space is seeded with ``seed`` too. The policy's own randomness is the
    caller's to seed. A summary (``num_steps``, ``seed``, number of episodes, mean / min / max return of the episodes
    that ended in the env) is appended to the description.

    Args:
        dataset_id: Minari id of the new dataset, ``(namespace/)name-v<version>``.
        env_id: Gymnasium id, e.g. ``"Hopper-v5"``.
        policy: ``observation (O,) float64 -> action (A,)``; actions are stored as the action space's dtype.
        num_steps: environment steps (= transitions) to collect, ``>= 1``.
        seed: env reset and action-space seed. Default 0.
        ref_min_score, ref_max_score: returns that normalise to 0 and 1 (reward units). Give both or neither:
            with only one, Minari would roll out a random policy for 100 episodes or drop the scores.
        description: dataset description; the collection summary is appended.
        algorithm_name: name of the behaviour policy's algorithm, stored in the metadata.
        overwrite: delete an existing dataset with this id first. Default False.
        progress: show a tqdm bar over steps. Default False.

    Returns:
        The written :class:`minari.MinariDataset` (HDF5 storage).

    Raises:
        FileExistsError: a dataset ``dataset_id`` exists and ``overwrite`` is False.
        ValueError: malformed ``dataset_id``, ``num_steps < 1``, only one reference score, or the policy returns an
            action of the wrong shape or a non-finite action.
    """
    _check_dataset_id(dataset_id)
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    if (ref_min_score is None) != (ref_max_score is None):
        raise ValueError(
            f"Give both ref_min_score and ref_max_score or neither, got ref_min_score={ref_min_score}, "
            f"ref_max_score={ref_max_score}."
        )
    _prepare_dataset_path(dataset_id, overwrite=overwrite)

    env = gym.make(env_id)
    env.action_space.seed(seed)
    buffers: list[EpisodeBuffer] = []
    returns: list[float] = []
    ended_in_env: list[bool] = []
    observation, _ = env.reset(seed=seed)
    episode = _new_episode(observation)
    episode_seed: int | None = seed
    try:
        for step in tqdm(range(num_steps), disable=not progress, desc=f"collecting {dataset_id}", unit="step"):
            action = np.asarray(policy(observation), dtype=env.action_space.dtype)
            if action.shape != env.action_space.shape:
                raise ValueError(
                    f"policy returned an action of shape {action.shape}, {env_id} expects {env.action_space.shape}."
                )
            if not np.isfinite(action).all():
                raise ValueError(f"policy returned a non-finite action {action} at step {step}.")
            observation, reward, terminated, truncated, _ = env.step(action)
            episode["observations"].append(observation)
            episode["actions"].append(action)
            episode["rewards"].append(float(reward))
            episode["terminations"].append(bool(terminated))
            episode["truncations"].append(bool(truncated))
            last_step = step == num_steps - 1
            if terminated or truncated or last_step:
                ended_in_env.append(bool(terminated or truncated))
                episode["truncations"][-1] = bool(truncated or not terminated)  # cut at num_steps -> truncated
                returns.append(float(np.sum(episode["rewards"])))
                buffers.append(EpisodeBuffer(id=len(buffers), seed=episode_seed, **episode))
                if not last_step:
                    observation, _ = env.reset()
                    episode, episode_seed = _new_episode(observation), None
    finally:
        env.close()

    summary_returns = [r for r, ended in zip(returns, ended_in_env) if ended] or returns
    summary = (
        f"Collected with cmbrl collect_dataset from {env_id}: num_steps={num_steps}, seed={seed}, "
        f"episodes={len(buffers)}, return over the {len(summary_returns)} "
        f"{'complete ' if any(ended_in_env) else ''}episodes: mean={np.mean(summary_returns):.2f}, "
        f"min={np.min(summary_returns):.2f}, max={np.max(summary_returns):.2f}."
    )
    description = summary if description is None else f"{description}\n\n{summary}"
    try:
        with warnings.catch_warnings():
            # Minari nags about each optional metadata field left unset (author, code_permalink, eval_env, ...).
            warnings.filterwarnings("ignore", message=r"`\w+` is set to None", category=UserWarning)
            return minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=env_id,
                algorithm_name=algorithm_name,
                ref_min_score=ref_min_score,
                ref_max_score=ref_max_score,
                description=description,
            )
    except BaseException:
        shutil.rmtree(get_dataset_path(dataset_id), ignore_errors=True)  # Minari leaves a half-written directory
        raise


def make_dataset(
    dataset_id: str,
    *,
    num_steps: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    policy_file: str | os.PathLike | None = None,
) -> minari.MinariDataset:
    """Generates the registered cmbrl dataset ``dataset_id`` (see :data:`DATASET_RECIPES`).

    The recipe's policy is loaded with :func:`load_policy` and sampled stochastically, its noise seeded with
    ``seed`` (the global torch RNG is left untouched). The
    description records the recipe id, the policy file name, ``num_steps``, ``seed`` and the episode returns.

    Args:
        dataset_id: a key of :data:`DATASET_RECIPES`, e.g. ``"cmbrl/hopper/medium-v0"``.
        num_steps: environment steps; default the recipe's (100_000 for hopper-medium).
        seed: env, action-space and policy seed. Default 0.
        overwrite: replace an existing dataset with this id. Default False.
        progress: show a tqdm bar. Default False.
        policy_file: checkpoint to use instead of the recipe's (e.g. in tests).

    Returns:
        The written :class:`minari.MinariDataset`.

    Raises:
        ValueError: ``dataset_id`` is not a registered recipe (the message lists them).
        FileExistsError: the dataset exists and ``overwrite`` is False.
        FileNotFoundError: the policy checkpoint does not exist.
    """
    if dataset_id not in DATASET_RECIPES:
        raise ValueError(f"No cmbrl recipe for dataset '{dataset_id}'; registered: {sorted(DATASET_RECIPES)}.")
    recipe = DATASET_RECIPES[dataset_id]
    if not overwrite and get_dataset_path(dataset_id).exists():  # fail before loading the policy
        raise FileExistsError(_exists_message(dataset_id))
    if policy_file is None:
        if os.path.isabs(recipe.policy_file):
            policy_file = recipe.policy_file
        else:
            policy_file = Path(str(importlib.resources.files("cmbrl.components") / "data" / recipe.policy_file))
    if not Path(policy_file).is_file():
        raise FileNotFoundError(
            f"Recipe '{dataset_id}' needs the behaviour-policy checkpoint {policy_file}, which does not exist. "
            f"Train and save it there, or pass policy_file=."
        )
    policy = load_policy(policy_file, seed=seed)
    return collect_dataset(
        dataset_id,
        recipe.env_id,
        policy,
        recipe.num_steps if num_steps is None else num_steps,
        seed=seed,
        ref_min_score=recipe.ref_min_score,
        ref_max_score=recipe.ref_max_score,
        description=f"{recipe.description}\n\nRecipe: {dataset_id}; policy file: {Path(policy_file).name}.",
        algorithm_name="SAC (stochastic behaviour policy)",
        overwrite=overwrite,
        progress=progress,
    )


def load_policy(path: str | os.PathLike, *, seed: int | None = None) -> Policy:
    """Loads a SAC actor checkpoint as a fast numpy policy that samples from the actor's tanh-Gaussian.

    The checkpoint is a dict ``{"actor": state_dict, "observation_dim": O, "action_dim": A, "hidden_sizes": [...],
    ...}`` (optionally ``"action_low"``, ``"action_high"``) of the actor built by
    :func:`cmbrl.agents.sac.make_sac_actor`. The MLP runs in numpy (a TorchRL call per environment step costs ~2 ms,
    20x the MuJoCo step); the action is ``low + (high − low) · (tanh(loc + scale · ε) + 1) / 2`` with
    ``ε ~ N(0, I)`` from a numpy generator seeded with ``seed``: the same sample the TorchRL actor draws.

    Args:
        path: checkpoint file written with ``torch.save``.
        seed: seeds the action noise. Default None (fresh entropy).

    Returns:
        ``policy(observation (O,) float) -> action (A,) float32``.

    Raises:
        ValueError: the checkpoint lacks one of the keys above.
    """
    # Imported here: components/ must not import cmbrl.agents at module level.
    from cmbrl.agents.sac import make_sac_actor

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in ("actor", "observation_dim", "action_dim", "hidden_sizes") if key not in checkpoint]
    if missing:
        raise ValueError(f"Policy checkpoint {path} lacks {missing}; it has {sorted(checkpoint)}.")
    observation_dim, action_dim = int(checkpoint["observation_dim"]), int(checkpoint["action_dim"])
    low = np.broadcast_to(np.asarray(checkpoint.get("action_low", -1.0), dtype=np.float32), (action_dim,))
    high = np.broadcast_to(np.asarray(checkpoint.get("action_high", 1.0), dtype=np.float32), (action_dim,))
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move the global RNG
        actor = make_sac_actor(observation_dim, action_dim, tuple(checkpoint["hidden_sizes"]))
    actor.load_state_dict(checkpoint["actor"])
    mlp, extractor = actor.module[0].module  # nn.Sequential(MLP, NormalParamExtractor)
    layers = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) if isinstance(m, torch.nn.Linear)
              else None for m in mlp if isinstance(m, (torch.nn.Linear, torch.nn.ReLU))]
    rng = np.random.default_rng(seed)

    def policy(observation: np.ndarray) -> np.ndarray:
        x = np.asarray(observation, dtype=np.float32)
        if x.shape != (observation_dim,):
            raise ValueError(f"Expected an observation of shape ({observation_dim},), got {x.shape}.")
        for layer in layers:
            x = np.maximum(x, 0.0) if layer is None else x @ layer[0] + layer[1]
        with torch.no_grad():
            loc, scale = (t.numpy() for t in extractor(torch.from_numpy(x)))
        squashed = np.tanh(loc + scale * rng.standard_normal(action_dim, dtype=np.float32))
        return (low + (high - low) * (squashed + 1.0) / 2.0).astype(np.float32)

    return policy


def _open_dataset(dataset_id: str, *, download: bool, progress: bool) -> minari.MinariDataset:
    """Finds ``dataset_id`` locally, generates it from a recipe, or downloads it."""
    if (get_dataset_path(dataset_id) / "data").exists():
        return minari.load_dataset(dataset_id)
    if dataset_id in DATASET_RECIPES:
        return make_dataset(dataset_id, progress=progress)
    if not download:
        raise FileNotFoundError(_not_found_message(dataset_id, "Pass download=True to try the Farama server."))
    try:
        minari.download_dataset(dataset_id)
    except Exception as error:
        raise FileNotFoundError(_not_found_message(dataset_id, f"Downloading it failed ({error!r})")) from error
    return minari.load_dataset(dataset_id)


def _not_found_message(dataset_id: str, hint: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # misconfigured local datasets are skipped by Minari with a warning
        local = sorted(minari.list_local_datasets())
    return (
        f"Minari dataset '{dataset_id}' is not in the local Minari root {get_dataset_path()} and is not a cmbrl "
        f"recipe. {hint} This machine may have no network access. Local datasets: {local}. cmbrl recipes "
        f"(generated on first load): {sorted(DATASET_RECIPES)}."
    )


def _exists_message(dataset_id: str) -> str:
    return f"Minari dataset '{dataset_id}' already exists at {get_dataset_path(dataset_id)}; pass overwrite=True."


def _check_dataset_id(dataset_id: str) -> None:
    from minari.dataset.minari_dataset import parse_dataset_id

    parse_dataset_id(dataset_id)  # ValueError naming the id and the allowed form


def _prepare_dataset_path(dataset_id: str, *, overwrite: bool) -> None:
    """Raises if the dataset directory exists, or deletes it when ``overwrite``."""
    if not get_dataset_path(dataset_id).exists():
        return
    if not overwrite:
        raise FileExistsError(_exists_message(dataset_id))
    with contextlib.redirect_stdout(io.StringIO()):  # minari.delete_dataset prints "Dataset ... deleted!"
        minari.delete_dataset(dataset_id)


def _new_episode(observation: np.ndarray) -> dict[str, list]:
    """Episode lists in :class:`EpisodeBuffer` layout: one more observation than actions."""
    return {"observations": [observation], "actions": [], "rewards": [], "terminations": [], "truncations": []}
