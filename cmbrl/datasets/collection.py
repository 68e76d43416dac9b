"""Writing datasets: :func:`collect_dataset` rolls a policy out in a Gymnasium env and writes a Minari dataset;
:func:`make_dataset` generates a registered recipe (:data:`cmbrl.datasets.DATASET_RECIPES`) with its behaviour
policies, deterministically."""
from __future__ import annotations

import importlib.resources
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import torch
from minari.data_collector import EpisodeBuffer
from minari.storage.datasets_root_dir import get_dataset_path
from tqdm.auto import tqdm

from .cards import _combine_cards, _make_card, format_card
from .policies import Policy, _check_keys, _numpy_policy, load_replay_schedule, random_policy
from .recipes import DATASET_RECIPES, DatasetRecipe, _did_you_mean
from .storage import _check_dataset_id, _exists_message, _prepare_dataset_path, dataset_exists

__all__ = ["collect_dataset", "make_dataset"]


def collect_dataset(
    dataset_id: str,
    env_id: str,
    policy: Policy | Sequence[tuple[Policy, int]],
    num_steps: int | None = None,
    *,
    seed: int = 0,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    description: str | None = None,
    algorithm_name: str | None = None,
    behavior_policies: Sequence[dict] | None = None,
    recipe: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> minari.MinariDataset:
    """Rolls a policy (or a sequence of policies) out in ``gymnasium.make(env_id)`` and writes a Minari dataset.

    Episodes end on termination or on the env's own truncation (its ``TimeLimit``, 1000 steps for MuJoCo). With one
    policy, exactly ``num_steps`` steps are collected and the last episode is cut there and marked truncated. With
    ``segments = [(policy_1, n_1), (policy_2, n_2), ...]`` (the ``"replay"`` recipe), policy ``k`` collects ``n_k``
    steps starting from a fresh reset, and an episode running at the end of a segment is cut and marked truncated.
    The env is reset with ``seed`` before the first episode and unseeded afterwards. The policies' own randomness is
    the caller's to seed (see :func:`random_policy`, :func:`load_policy`).

    A dataset card (:func:`dataset_card`) is stored in the Minari metadata under ``"dataset_card"`` and appended,
    formatted, to the description.

    Args:
        dataset_id: Minari id of the new dataset, ``(namespace/)name-v<version>``.
        env_id: Gymnasium id, e.g. ``"Hopper-v5"``.
        policy: ``observation (O,) float64 -> action (A,)``, or a sequence of ``(policy, num_steps)`` segments.
            Actions are stored as the action space's dtype.
        num_steps: environment steps (= transitions) for a single policy, ``>= 1``; must be None with segments.
        seed: env reset seed. Default 0.
        ref_min_score, ref_max_score: returns that normalise to 0 and 1 (reward units). Give both or neither:
            with only one, Minari would roll out a random policy for 100 episodes or drop the scores.
        description: dataset description; the card is appended.
        algorithm_name: name of the behaviour policy's algorithm, stored in the metadata.
        behavior_policies: one JSON-serialisable dict per policy (or segment) for the card, e.g.
            ``{"file": ..., "frames": ..., "eval_return": ...}``. Default: ``{"policy": "callable"}``.
        recipe: recipe kind recorded in the card. Default None.
        overwrite: delete an existing dataset with this id first. Default False.
        progress: show a tqdm bar over steps. Default False.

    Returns:
        The written :class:`minari.MinariDataset` (HDF5 storage).

    Raises:
        FileExistsError: a dataset ``dataset_id`` exists and ``overwrite`` is False.
        ValueError: malformed ``dataset_id``, ``num_steps < 1`` (or given with segments), an empty or malformed segment
            list, only one reference score, or a policy returns an action of the wrong shape or a non-finite action.
    """
    _check_dataset_id(dataset_id)
    if callable(policy):
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
        segments = [(policy, num_steps)]
    else:
        segments = list(policy)
        if num_steps is not None:
            raise ValueError(f"Give num_steps per segment, not num_steps={num_steps!r}, when policy is a sequence.")
        if not segments or not all(isinstance(segment, tuple) and len(segment) == 2 and callable(segment[0])
                                   and isinstance(segment[1], int) and segment[1] >= 1 for segment in segments):
            raise ValueError("policy must be a callable or a non-empty sequence of (policy, num_steps >= 1) tuples, "
                             f"got {policy!r}.")
    if (ref_min_score is None) != (ref_max_score is None):
        raise ValueError(
            f"Give both ref_min_score and ref_max_score or neither, got ref_min_score={ref_min_score}, "
            f"ref_max_score={ref_max_score}."
        )
    _prepare_dataset_path(dataset_id, overwrite=overwrite)

    env = gym.make(env_id)
    buffers: list[EpisodeBuffer] = []
    returns: list[float] = []
    ended_in_env: list[bool] = []
    total_steps = sum(n for _, n in segments)
    observation, _ = env.reset(seed=seed)
    episode_seed: int | None = seed
    bar = tqdm(total=total_steps, disable=not progress, desc=f"collecting {dataset_id}", unit="step",
               mininterval=1.0)
    try:
        for segment, (segment_policy, segment_steps) in enumerate(segments):
            if segment > 0:
                observation, _ = env.reset()
                episode_seed = None
            episode = _new_episode(observation)
            for step in range(segment_steps):
                action = np.asarray(segment_policy(observation), dtype=env.action_space.dtype)
                if action.shape != env.action_space.shape:
                    raise ValueError(f"policy returned an action of shape {action.shape}, {env_id} expects "
                                     f"{env.action_space.shape}.")
                if not np.isfinite(action).all():
                    raise ValueError(f"policy returned a non-finite action {action} at step {step}.")
                observation, reward, terminated, truncated, _ = env.step(action)
                episode["observations"].append(observation)
                episode["actions"].append(action)
                episode["rewards"].append(float(reward))
                episode["terminations"].append(bool(terminated))
                episode["truncations"].append(bool(truncated))
                last_step = step == segment_steps - 1
                if terminated or truncated or last_step:
                    ended_in_env.append(bool(terminated or truncated))
                    episode["truncations"][-1] = bool(truncated or not terminated)  # a cut episode -> truncated
                    returns.append(float(np.sum(episode["rewards"])))
                    buffers.append(EpisodeBuffer(id=len(buffers), seed=episode_seed, **episode))
                    bar.update(len(episode["rewards"]))
                    if not last_step:
                        observation, _ = env.reset()
                        episode, episode_seed = _new_episode(observation), None
    finally:
        env.close()
        bar.close()

    card = _make_card(
        dataset_id, env_id, seed=seed, recipe=recipe, num_transitions=total_steps, returns=returns,
        ended_in_env=ended_in_env, ref_min_score=ref_min_score, ref_max_score=ref_max_score,
        behavior_policies=list(behavior_policies) if behavior_policies is not None else [{"policy": "callable"}],
    )
    description = format_card(card) if description is None else f"{description}\n\n{format_card(card)}"
    try:
        with warnings.catch_warnings():
            # Minari nags about each optional metadata field left unset (author, code_permalink, eval_env, ...).
            warnings.filterwarnings("ignore", message=r"`\w+` is set to None", category=UserWarning)
            dataset = minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=env_id,
                algorithm_name=algorithm_name,
                ref_min_score=ref_min_score,
                ref_max_score=ref_max_score,
                description=description,
            )
            dataset.storage.update_metadata({"dataset_card": card})
            return dataset
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

    ``"policy"`` recipes sample the recipe's SAC policy (:func:`load_policy`) stochastically, its noise seeded with
    ``seed``; ``"random"`` recipes sample uniform actions seeded with ``seed``; ``"replay"`` recipes replay the
    bundle's schedule (:func:`load_replay_schedule`, snapshot ``k`` seeded with ``seed + k``); ``"combine"`` recipes
    generate their sources first when absent (same ``seed``) and concatenate them. The global torch RNG is left
    untouched. The dataset card records the recipe, policy files, step counts, seed, returns and the generator version
    (:data:`GENERATOR_VERSION`). Generation is deterministic: float64 policies with fixed-order products and actions
    rounded to :data:`ACTION_GRID` give byte-identical data for the same recipe, ``seed`` and ``num_steps`` whatever
    the thread count, BLAS or SIMD path; with the default ``num_steps`` and seed 0 the data have the published
    checksum (:func:`verify_dataset`, ``python -m cmbrl.datasets verify``).

    Args:
        dataset_id: a key of :data:`DATASET_RECIPES`, e.g. ``"cmbrl/hopper/medium-v0"``.
        num_steps: environment steps for ``"random"`` / ``"policy"`` recipes; default the recipe's (1,000,000).
            Not allowed for ``"replay"`` and ``"combine"``.
        seed: env, action and policy seed. Default 0.
        overwrite: replace an existing dataset with this id (not its sources). Default False.
        progress: show tqdm bars. Default False.
        policy_file: checkpoint (or replay bundle) to use instead of the recipe's (e.g. in tests).

    Returns:
        The written :class:`minari.MinariDataset`.

    Raises:
        ValueError: ``dataset_id`` is not a registered recipe (the message lists them), or ``num_steps`` given for a
            ``"replay"`` / ``"combine"`` recipe.
        FileExistsError: the dataset exists and ``overwrite`` is False.
        FileNotFoundError: the policy checkpoint does not exist.
    """
    if dataset_id not in DATASET_RECIPES:
        raise ValueError(f"No cmbrl recipe for dataset '{dataset_id}'.{_did_you_mean(str(dataset_id))} The registered "
                         f"recipes: {sorted(DATASET_RECIPES)}.")
    recipe = DATASET_RECIPES[dataset_id]
    if num_steps is not None and recipe.kind in ("replay", "combine"):
        raise ValueError(f"Recipe '{dataset_id}' ({recipe.kind}) has a fixed size; num_steps={num_steps} is only for "
                         f"'random' and 'policy' recipes.")
    if not overwrite and get_dataset_path(dataset_id).exists():  # fail before loading anything
        raise FileExistsError(_exists_message(dataset_id))
    if recipe.kind == "combine":
        return _combine(dataset_id, recipe, seed=seed, overwrite=overwrite, progress=progress)
    common = dict(seed=seed, ref_min_score=recipe.ref_min_score, ref_max_score=recipe.ref_max_score,
                  recipe=recipe.kind, overwrite=overwrite, progress=progress)
    description = f"{recipe.description}\n\nRecipe: {dataset_id}."
    if recipe.kind == "random":
        action_space = gym.make(recipe.env_id).action_space
        return collect_dataset(dataset_id, recipe.env_id, random_policy(action_space, seed),
                               recipe.num_steps if num_steps is None else num_steps, description=description,
                               algorithm_name="uniformly random policy",
                               behavior_policies=[{"policy": "uniform random"}], **common)
    policy_file = _recipe_policy_file(dataset_id, recipe, policy_file)
    if recipe.kind == "replay":
        schedule = load_replay_schedule(policy_file, seed=seed)
        return collect_dataset(dataset_id, recipe.env_id, [(policy, n) for policy, n, _ in schedule],
                               description=description, algorithm_name="SAC replay buffer (policy snapshots)",
                               behavior_policies=[{"file": Path(policy_file).name, **info} for _, _, info in schedule],
                               **common)
    checkpoint = torch.load(policy_file, map_location="cpu", weights_only=True)
    _check_keys(checkpoint, ("actor", "observation_dim", "action_dim", "hidden_sizes"), policy_file)
    info = {key: checkpoint[key] for key in ("frames", "eval_return", "stochastic_return") if key in checkpoint}
    return collect_dataset(dataset_id, recipe.env_id, _numpy_policy(checkpoint, checkpoint["actor"], seed),
                           recipe.num_steps if num_steps is None else num_steps, description=description,
                           algorithm_name="SAC (stochastic behaviour policy)",
                           behavior_policies=[{"file": Path(policy_file).name, **info}], **common)


def _recipe_policy_file(dataset_id: str, recipe: DatasetRecipe, policy_file: str | os.PathLike | None) -> Path:
    if policy_file is None:
        if os.path.isabs(recipe.policy_file):
            policy_file = recipe.policy_file
        else:
            policy_file = Path(str(importlib.resources.files("cmbrl.components") / "data" / recipe.policy_file))
    if not Path(policy_file).is_file():
        raise FileNotFoundError(
            f"Recipe '{dataset_id}' needs the behaviour-policy checkpoint {policy_file}, which does not exist. "
            f"Train and export it (examples/train_behavior_policy.py, examples/export_behavior_policies.py), or pass "
            f"policy_file=."
        )
    return Path(policy_file)


def _combine(dataset_id: str, recipe: DatasetRecipe, *, seed: int, overwrite: bool,
             progress: bool) -> minari.MinariDataset:
    """Concatenates ``recipe.sources`` (generating absent ones) with :func:`minari.combine_datasets`."""
    sources = []
    for source in recipe.sources:
        if not dataset_exists(source):
            make_dataset(source, seed=seed, progress=progress)
        sources.append(minari.load_dataset(source))
    cards = [source.storage.metadata.get("dataset_card") for source in sources]
    _prepare_dataset_path(dataset_id, overwrite=overwrite)
    try:
        dataset = minari.combine_datasets(sources, dataset_id)
        card = _combine_cards(dataset_id, recipe, cards, sources)
        dataset.storage.update_metadata({
            "ref_min_score": recipe.ref_min_score, "ref_max_score": recipe.ref_max_score,
            "algorithm_name": "SAC (stochastic behaviour policies)", "dataset_card": card,
            "description": f"{recipe.description}\n\nRecipe: {dataset_id}.\n\n{format_card(card)}",
        })
    except BaseException:
        shutil.rmtree(get_dataset_path(dataset_id), ignore_errors=True)
        raise
    return minari.load_dataset(dataset_id)  # re-read so the returned object sees the updated metadata


def _new_episode(observation: np.ndarray) -> dict[str, list]:
    """Episode lists in :class:`EpisodeBuffer` layout: one more observation than actions."""
    return {"observations": [observation], "actions": [], "rewards": [], "terminations": [], "truncations": []}
