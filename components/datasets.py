"""Offline datasets: Minari datasets as flat TorchRL transition TensorDicts, and the D4RL recipes regenerated locally.

:func:`load_dataset` reads a local Minari dataset episode by episode into one TensorDict of ``N`` transitions with
TorchRL's keys (``"observation"``, ``"action"``, ``("next", "observation")``, ``("next", "reward")``,
``("next", "terminated")``, ``("next", "truncated")``, ``("next", "done")``). TorchRL's own
``MinariExperienceReplay`` is not used: in torchrl 0.14.1 it writes all-zero data.

Datasets that cannot be downloaded (this project often runs without network) are generated locally:
:func:`collect_dataset` rolls a policy out in a Gymnasium env and writes a Minari dataset, and
:data:`DATASET_RECIPES` names the datasets cmbrl knows how to build (:func:`make_dataset`): D4RL's ``random``,
``medium``, ``medium-replay``, ``expert`` and ``medium-expert`` for hopper, halfcheetah and walker2d (Gymnasium v5),
from behaviour policies shipped in ``cmbrl/components/data``. :func:`load_dataset` generates a registered recipe the
first time it is asked for; every generated dataset carries a card (:func:`dataset_card`). Generation is
deterministic (:data:`ACTION_GRID`, :data:`GENERATOR_VERSION`) and every recipe's data have a published SHA-256
(:data:`CHECKSUM_FIELDS`, :func:`verify_dataset`, ``cmbrl/components/data/checksums.json``). The command line is
``python -m cmbrl.datasets``.

Reference: Fu et al., "D4RL: Datasets for Deep Data-Driven Reinforcement Learning", arXiv:2004.07219 (the
``medium`` recipe and the reference returns used for normalised scores); Minari, https://minari.farama.org.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import difflib
import io
import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import minari
import mujoco
import numpy as np
import torch
from minari.data_collector import EpisodeBuffer
from minari.storage.datasets_root_dir import get_dataset_path
from tensordict import TensorDict
from tqdm.auto import tqdm

__all__ = ["Policy", "DatasetRecipe", "DATASET_RECIPES", "ENVS", "load_dataset", "collect_dataset", "make_dataset",
           "load_policy", "load_replay_schedule", "random_policy", "dataset_exists", "dataset_card", "format_card",
           "resolve_dataset_id", "ACTION_GRID", "GENERATOR_VERSION", "quantize_action", "CHECKSUM_FIELDS",
           "dataset_checksum", "load_checksums", "write_checksums", "verify_dataset", "VerifyResult", "checksum_table",
           "update_checksum_table"]

Policy = Callable[[np.ndarray], np.ndarray]
"""A behaviour policy: ``observation (O,) float64 -> action (A,)``, as Gymnasium passes them."""


ENVS: dict[str, tuple[str, float, float]] = {
    "hopper": ("Hopper-v5", -20.272305, 3234.3),
    "halfcheetah": ("HalfCheetah-v5", -280.178953, 12135.0),
    "walker2d": ("Walker2d-v5", 1.629008, 4592.3),
}
"""``env name -> (Gymnasium id, D4RL random-policy return, D4RL expert return)``; the returns normalise scores to 0
and 100 (D4RL ``infos.py`` reference scores, arXiv:2004.07219)."""

RECIPE_KINDS = ("random", "policy", "replay", "combine")


@dataclass(frozen=True)
class DatasetRecipe:
    """How cmbrl generates a dataset that cannot be downloaded (the D4RL recipe, MOPO arXiv:2005.13239 sec. 5.1).

    Attributes:
        env_id: Gymnasium id of the environment, e.g. ``"Hopper-v5"`` (its own ``TimeLimit`` applies).
        kind: ``"random"`` (uniformly random actions), ``"policy"`` (a stochastic SAC policy, ``policy_file``),
            ``"replay"`` (a SAC training run replayed: ``policy_file`` is a replay bundle listing, in training order,
            the policy snapshot that acted and how many steps it collected; see :func:`load_replay_schedule`) or
            ``"combine"`` (the datasets in ``sources`` concatenated with :func:`minari.combine_datasets`).
        num_steps: environment steps (= transitions) for ``"random"`` and ``"policy"``; ``None`` for ``"replay"``
            (the bundle's schedule decides) and ``"combine"`` (the sum of the sources).
        ref_min_score, ref_max_score: episode returns that normalise to 0 and 1 in
            :func:`minari.get_normalized_score` (D4RL random and expert returns, reward units).
        description: what the dataset is; stored in the Minari metadata.
        policy_file: checkpoint for ``"policy"`` / ``"replay"``: a file name in ``cmbrl/components/data/`` or an
            absolute path.
        sources: dataset ids for ``"combine"``.

    Examples:
        >>> recipe = DATASET_RECIPES["cmbrl/hopper/medium-v0"]
        >>> recipe.env_id, recipe.kind, recipe.num_steps
        ('Hopper-v5', 'policy', 1000000)
    """

    env_id: str
    kind: str
    num_steps: int | None
    ref_min_score: float
    ref_max_score: float
    description: str
    policy_file: str | None = None
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in RECIPE_KINDS:
            raise ValueError(f"Unknown recipe kind {self.kind!r}; allowed: {RECIPE_KINDS}.")
        if (self.num_steps is None) != (self.kind in ("replay", "combine")):
            raise ValueError(f"A {self.kind!r} recipe needs num_steps "
                             f"{'None' if self.kind in ('replay', 'combine') else '>= 1'}, got {self.num_steps!r}.")
        if (self.policy_file is None) != (self.kind not in ("policy", "replay")):
            raise ValueError(f"A {self.kind!r} recipe {'needs' if self.kind in ('policy', 'replay') else 'takes no'} "
                             f"policy_file, got {self.policy_file!r}.")
        if bool(self.sources) != (self.kind == "combine"):
            raise ValueError(f"Only 'combine' recipes take sources; got kind {self.kind!r} and sources {self.sources}.")


_RECIPE_TEXT = {
    "random": "D4RL-style {env}-random on {env_id}: {num_steps:,} steps of a uniformly random policy.",
    "medium": "D4RL-style {env}-medium on {env_id}: {num_steps:,} steps of a stochastic SAC policy stopped early at "
              "about a third of expert return.",
    "medium-replay": "D4RL-style {env}-medium-replay on {env_id}: the replay buffer of the SAC run up to the medium "
                     "policy, re-collected from the run's policy snapshots (each snapshot collects the steps the run "
                     "collected after it was saved; the first segment is uniformly random, as the SAC warm-up).",
    "expert": "D4RL-style {env}-expert on {env_id}: {num_steps:,} steps of the best stochastic SAC policy cmbrl "
              "trained on this env (see the card for how good it is; D4RL's expert is a fully trained SAC).",
    "medium-expert": "D4RL-style {env}-medium-expert on {env_id}: cmbrl/{env}/medium-v0 and cmbrl/{env}/expert-v0 "
                     "concatenated.",
}


def _d4rl_recipes() -> dict[str, DatasetRecipe]:
    recipes = {}
    for env, (env_id, ref_min, ref_max) in ENVS.items():
        def recipe(name: str, kind: str, num_steps: int | None = None, **kwargs) -> None:
            text = _RECIPE_TEXT[name].format(env=env, env_id=env_id, num_steps=num_steps or 0)
            text += f" Scores normalise with D4RL's {env} reference returns ({ref_min}, {ref_max})."
            recipes[f"cmbrl/{env}/{name}-v0"] = DatasetRecipe(env_id, kind, num_steps, ref_min, ref_max, text,
                                                              **kwargs)

        recipe("random", "random", 1_000_000)
        recipe("medium", "policy", 1_000_000, policy_file=f"{env}_medium_sac.pt")
        recipe("medium-replay", "replay", policy_file=f"{env}_replay_sac.pt")
        recipe("expert", "policy", 1_000_000, policy_file=f"{env}_expert_sac.pt")
        recipe("medium-expert", "combine", sources=(f"cmbrl/{env}/medium-v0", f"cmbrl/{env}/expert-v0"))
    return recipes


DATASET_RECIPES: dict[str, DatasetRecipe] = _d4rl_recipes()
"""Datasets cmbrl can generate, by Minari dataset id: ``cmbrl/<env>/<name>-v0`` for ``env`` in ``hopper``,
``halfcheetah``, ``walker2d`` and ``name`` in ``random``, ``medium``, ``medium-replay``, ``expert``,
``medium-expert`` (see :class:`DatasetRecipe`)."""


def resolve_dataset_id(name: str) -> str:
    """Maps a short name such as ``"hopper-medium-replay"`` (D4RL style) to ``"cmbrl/hopper/medium-replay-v0"``.

    Full Minari ids (containing ``/``) are returned unchanged.

    Raises:
        ValueError: a short name that is not a cmbrl recipe (the message lists the allowed names).
    """
    if "/" in name:
        return name
    env, _, rest = name.partition("-")
    dataset_id = f"cmbrl/{env}/{rest}-v0"
    if dataset_id not in DATASET_RECIPES:
        names = sorted(recipe_id.removeprefix("cmbrl/").removesuffix("-v0").replace("/", "-")
                       for recipe_id in DATASET_RECIPES)
        raise ValueError(f"Unknown dataset name {name!r}; allowed: {names} (or a full Minari id).")
    return dataset_id


def load_dataset(dataset_id: str, *, download: bool | None = None, progress: bool = False) -> TensorDict:
    """Loads a Minari dataset as one flat TensorDict of transitions.

    Lookup order: the local Minari root (``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``); then, if
    ``dataset_id`` is in :data:`DATASET_RECIPES`, the dataset is generated with :func:`make_dataset` (default
    recipe settings, seed 0; minutes for 1M steps); then, for ids outside the ``cmbrl/`` namespace (the official
    ``mujoco/...`` ids, say), the Farama server via :func:`minari.download_dataset`.

    The first load is cached beside the Minari files (``cmbrl_cache/``, a TensorDict memmap; later loads take about a
    second). For a cmbrl recipe the same pass computes the data's SHA-256 (:func:`dataset_checksum`), cached with it;
    when it differs from the recipe's published checksum (:func:`load_checksums`) because the dataset was made by an
    older generator or altered, a ``UserWarning`` says so and gives the command that regenerates it. Datasets made on
    purpose with another seed or ``num_steps`` than the published one are not warned about.

    Args:
        dataset_id: Minari id, e.g. ``"cmbrl/hopper/medium-replay-v0"`` or ``"mujoco/hopper/medium-v0"``.
        download: ``None`` (default) downloads ids outside ``cmbrl/`` when they are not local; ``False`` never
            downloads; ``True`` is the same as ``None`` (``cmbrl/`` ids are always generated, never downloaded).
            Without network a download attempt fails after Minari's timeout (~20 s here) with FileNotFoundError.
        progress: show tqdm bars (generation and loading). Default False.

    Returns:
        TensorDict with batch size ``(N,)``, ``N`` the number of transitions (steps) over all episodes, in episode
        order: ``"observation" (N, O)``, ``"action" (N, A)``, ``("next", "observation") (N, O)``,
        ``("next", "reward") (N, 1)`` (float32), ``("next", "terminated") (N, 1)``,
        ``("next", "truncated") (N, 1)`` and ``("next", "done") (N, 1)`` (bool, ``done = terminated | truncated``).
        Multi-dimensional observations or actions are flattened to ``O`` or ``A``.

    Raises:
        FileNotFoundError: the dataset is not local, not a recipe, and was not (or could not be) downloaded. The
            message lists the local datasets and the cmbrl recipes, and names the recipe a near miss meant (a typo,
            or the D4RL-style ``"hopper-medium"``).
        ValueError: an observation, action or reward is NaN or infinite (the message names the episode and the key),
            an episode does not have one more observation than actions, or the dataset has no transitions.
        TypeError: ``dataset_id`` is not a string, or observations or actions are not arrays (Dict / Tuple spaces
            are not supported).
    """
    dataset = _open_dataset(dataset_id, download=download, progress=progress)
    cache, stamp = get_dataset_path(dataset_id) / _CACHE_DIR, _cache_stamp(dataset)
    if (cache / "stamp.json").is_file() and json.loads((cache / "stamp.json").read_text()) == stamp:
        if (cache / _CHECKSUM_FILE).is_file():
            _warn_if_not_published(dataset_id, dataset, json.loads((cache / _CHECKSUM_FILE).read_text())["sha256"])
        return TensorDict.load_memmap(cache).clone()  # into memory, off the memmap files
    checksum = _Checksum() if dataset_id in DATASET_RECIPES else None  # computed in the same pass, cached below
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
        if checksum is not None:
            checksum.update(episode)
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
    transitions = TensorDict(
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
    extra = {}
    if checksum is not None:
        sha256 = checksum.hexdigest()
        extra[_CHECKSUM_FILE] = json.dumps({"sha256": sha256, "num_episodes": checksum.num_episodes})
        _warn_if_not_published(dataset_id, dataset, sha256)
    _write_cache(transitions, cache, stamp, extra)
    return transitions


_CACHE_DIR = "cmbrl_cache"
_CHECKSUM_FILE = "checksum.json"


def _cache_stamp(dataset: minari.MinariDataset) -> dict:
    """What the flat cache must match: the dataset's size and its metadata file's modification time."""
    metadata_file = dataset.storage.data_path / "metadata.json"
    return {"format": 2, "total_steps": int(dataset.total_steps), "total_episodes": int(dataset.total_episodes),
            "metadata_mtime_ns": metadata_file.stat().st_mtime_ns if metadata_file.exists() else None}


def _write_cache(transitions: TensorDict, cache: Path, stamp: dict, extra: dict[str, str] | None = None) -> None:
    """Saves the flat TensorDict beside the Minari files (TensorDict memmap): Minari reads episode by episode, about
    1.5 ms per episode, so a 1M-step random dataset (~45k episodes) takes a minute to load; the cache takes ~1 s.
    Best effort: an unwritable dataset folder only costs speed."""
    tmp = cache.with_name(cache.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        transitions.memmap(tmp)
        for name, text in (extra or {}).items():  # e.g. the checksum (format 2)
            (tmp / name).write_text(text)
        (tmp / "stamp.json").write_text(json.dumps(stamp))
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"Could not write the load cache {cache} ({error}); loading stays at Minari's speed.",
                      stacklevel=3)


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


def random_policy(action_space: gym.spaces.Box, seed: int | None = None) -> Policy:
    """A uniformly random policy over a Box action space (the D4RL ``random`` recipe), seeded with ``seed``.

    Returns ``policy(observation) -> action`` of the space's shape and dtype, drawn uniformly in float64 from
    ``[low, high]`` and rounded to :data:`ACTION_GRID` (:func:`quantize_action`).
    """
    rng = np.random.default_rng(seed)
    low, high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)
    return lambda observation: quantize_action(rng.uniform(low, high), low, high).astype(action_space.dtype)


ACTION_GRID = 1e-6
"""Every action cmbrl's recipe policies send to MuJoCo is a multiple of this (then float32).

Why: a behaviour policy's float32 matrix products round differently with the BLAS kernel (OpenBLAS picks one per CPU
type) and numpy's SIMD ``tanh``; a one-ulp (6e-8) action difference at step 0 grows, MuJoCo being chaotic, into a
different dataset (measured: ``docs/datasets_checksums.md``). The recipe policies therefore compute in float64 with
fixed-order products (``mujoco.mju_mulMatVec``: no BLAS, no threads) and round each action to this grid, so that the
remaining ~1e-16 differences (transcendental functions' last bits) change an action only when it falls within ~1e-16
of a rounding boundary: about one chance in 10^10 per action component."""

GENERATOR_VERSION = 2
"""Version of the recipe generator, stored in the dataset card as ``"generator"``. 1 (cards without the key):
float32 policies, not reproducible across CPUs; 2: float64 fixed-order policies, actions on :data:`ACTION_GRID`."""


def quantize_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Rounds ``action`` to the nearest multiple of :data:`ACTION_GRID`, clipped to ``[low, high]``.

    ``rint(a * 1e6) / 1e6`` in float64: a correctly rounded product, an exact rounding and a correctly rounded
    quotient, so the result depends only on ``a`` (not on the CPU).

    Args:
        action: ``(A,)`` float array. low, high: ``(A,)`` bounds.

    Returns:
        ``(A,)`` float32.
    """
    scale = float(round(1.0 / ACTION_GRID))  # 1e6 exactly
    grid = np.rint(np.asarray(action, dtype=np.float64) * scale) / scale
    return np.clip(grid, low, high).astype(np.float32)


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


def _make_card(dataset_id: str, env_id: str, *, seed: int | None, recipe: str | None, num_transitions: int,
               returns: Sequence[float], ended_in_env: Sequence[bool], ref_min_score: float | None,
               ref_max_score: float | None, behavior_policies: list[dict]) -> dict:
    complete = [r for r, ended in zip(returns, ended_in_env) if ended]
    stats_returns = complete or list(returns)
    card = {
        "dataset_id": dataset_id, "env_id": env_id, "recipe": recipe, "seed": seed,
        "num_transitions": int(num_transitions), "num_episodes": len(returns), "num_complete_episodes": len(complete),
        "return_mean": float(np.mean(stats_returns)), "return_min": float(np.min(stats_returns)),
        "return_max": float(np.max(stats_returns)),
        "behavior_policies": behavior_policies,
    }
    if recipe is not None:
        card["generator"] = GENERATOR_VERSION
    if ref_min_score is not None:
        for stat in ("mean", "min", "max"):
            card[f"normalized_score_{stat}"] = 100 * (card[f"return_{stat}"] - ref_min_score) / (
                ref_max_score - ref_min_score)
    return card


def _combine_cards(dataset_id: str, recipe: DatasetRecipe, cards: list[dict | None],
                   sources: list[minari.MinariDataset]) -> dict:
    if any(card is None for card in cards):  # a source not written by cmbrl: compute from its episodes
        cards = [dataset_card(source.spec.dataset_id) for source in sources]
    weights = [max(card["num_complete_episodes"], 1) for card in cards]
    mean = float(np.average([card["return_mean"] for card in cards], weights=weights))
    card = {
        "dataset_id": dataset_id, "env_id": recipe.env_id, "recipe": recipe.kind,
        "seed": cards[0]["seed"] if len({card["seed"] for card in cards}) == 1 else [card["seed"] for card in cards],
        "num_transitions": sum(card["num_transitions"] for card in cards),
        "num_episodes": sum(card["num_episodes"] for card in cards),
        "num_complete_episodes": sum(card["num_complete_episodes"] for card in cards),
        "return_mean": mean, "return_min": min(card["return_min"] for card in cards),
        "return_max": max(card["return_max"] for card in cards),
        "behavior_policies": [policy for card in cards for policy in card["behavior_policies"]],
        "sources": list(recipe.sources),
        "generator": min((card.get("generator", 1) for card in cards), default=1),
    }
    for stat in ("mean", "min", "max"):
        card[f"normalized_score_{stat}"] = 100 * (card[f"return_{stat}"] - recipe.ref_min_score) / (
            recipe.ref_max_score - recipe.ref_min_score)
    return card


def dataset_exists(dataset_id: str) -> bool:
    """Whether the Minari dataset ``dataset_id`` is in the local Minari root (written completely: its data folder)."""
    return (get_dataset_path(dataset_id) / "data").exists()


def dataset_card(dataset_id: str, *, checksums: bool = False) -> dict:
    """The dataset card of a local Minari dataset: size, episode returns, normalised scores, behaviour policies.

    Datasets written by cmbrl carry the card in their metadata (``"dataset_card"``); for others it is computed from
    the episodes (returns over episodes that ended by termination or time limit; all episodes if none did).

    Returns:
        dict with ``dataset_id``, ``env_id``, ``recipe``, ``seed``, ``num_transitions``, ``num_episodes``,
        ``num_complete_episodes``, ``return_mean`` / ``return_min`` / ``return_max`` (reward units),
        ``normalized_score_mean`` / ``_min`` / ``_max`` (D4RL scale, 0 = random, 100 = expert; only with reference
        scores), ``behavior_policies`` (list of dicts) and, for recipes, ``generator`` (:data:`GENERATOR_VERSION`
        of the generator that wrote it; absent: 1). With ``checksums=True`` also ``published_sha256`` (the recipe's
        published checksum, or None when it has none) and, when :func:`load_dataset` has computed it (it is cached
        with the load cache), ``sha256`` (the local data's).

    Args:
        dataset_id: a local Minari id.
        checksums: add the checksum keys (reads a small JSON file; never hashes the data). Default False.

    Raises:
        FileNotFoundError: the dataset is not local.
    """
    if not dataset_exists(dataset_id):
        raise FileNotFoundError(_not_found_message(dataset_id, "Generate it first (make_dataset)."))
    dataset = minari.load_dataset(dataset_id)
    metadata = dataset.storage.metadata
    if "dataset_card" in metadata:
        card = dict(metadata["dataset_card"])
        return _with_checksums(card, dataset_id, dataset) if checksums else card
    returns, ended = [], []
    for episode in dataset.iterate_episodes():
        returns.append(float(np.sum(episode.rewards)))
        ended.append(bool(episode.terminations[-1] or episode.truncations[-1]))
    env_spec = dataset.spec.env_spec
    card = _make_card(dataset_id, env_spec.id if env_spec is not None else None, seed=None, recipe=None,
                      num_transitions=dataset.total_steps, returns=returns, ended_in_env=ended,
                      ref_min_score=metadata.get("ref_min_score"), ref_max_score=metadata.get("ref_max_score"),
                      behavior_policies=[{"algorithm_name": metadata.get("algorithm_name")}])
    return _with_checksums(card, dataset_id, dataset) if checksums else card


def _with_checksums(card: dict, dataset_id: str, dataset: minari.MinariDataset) -> dict:
    """Adds ``"published_sha256"`` (the recipe's published checksum, if any) and ``"sha256"`` (the local data's, if
    :func:`load_dataset` has computed it: it is cached with the load cache) to a card."""
    published = load_checksums().get(dataset_id)
    card["published_sha256"] = None if published is None else published["sha256"]
    cache = get_dataset_path(dataset_id) / _CACHE_DIR
    try:
        if json.loads((cache / "stamp.json").read_text()) == _cache_stamp(dataset):
            card["sha256"] = json.loads((cache / _CHECKSUM_FILE).read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    return card


def format_card(card: dict) -> str:
    """The dataset card as text (printed by ``python -m cmbrl.datasets``, stored in the description)."""
    lines = [f"Dataset card: {card['dataset_id']}",
             f"  env: {card['env_id']}   recipe: {card['recipe']}   seed: {card['seed']}",
             f"  transitions: {card['num_transitions']:,}   episodes: {card['num_episodes']:,} "
             f"({card['num_complete_episodes']:,} ended by termination or time limit)",
             f"  episode return (complete episodes): mean {card['return_mean']:.1f}, min {card['return_min']:.1f}, "
             f"max {card['return_max']:.1f}"]
    if "normalized_score_mean" in card:
        lines.append(f"  normalised score (D4RL, 0 random / 100 expert): mean {card['normalized_score_mean']:.1f}, "
                     f"min {card['normalized_score_min']:.1f}, max {card['normalized_score_max']:.1f}")
    policies = card["behavior_policies"]
    if len(policies) > 4:
        lines.append(f"  behaviour policies: {len(policies)} segments, first {_policy_text(policies[0])}, "
                     f"last {_policy_text(policies[-1])}")
    else:
        lines += [f"  behaviour policy: {_policy_text(policy)}" for policy in policies]
    if "sources" in card:
        lines.append(f"  sources: {', '.join(card['sources'])}")
    if "generator" in card:
        lines.append(f"  generator: v{card['generator']}" + (" (deterministic across machines)"
                                                              if card["generator"] >= 2 else " (machine-dependent)"))
    if "published_sha256" in card:  # dataset_card(..., checksums=True)
        published = card["published_sha256"]
        lines.append(f"  published sha256: {published or 'none (no published checksum for this dataset)'}")
        if "sha256" in card:
            state = "" if published is None else (" (matches)" if card["sha256"] == published
                                                  else " (DIFFERS from the published one)")
            lines.append(f"  local sha256:     {card['sha256']}{state}")
        else:
            lines.append(f"  local sha256:     not computed yet (the first load_dataset does; or check now: "
                         f"python -m cmbrl.datasets verify {_short_name(card['dataset_id'])})")
    return "\n".join(lines)


def _policy_text(policy: dict) -> str:
    return ", ".join(f"{key}={value:.0f}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in policy.items())


# ---------------------------------------------------------------------------------------------------------------
# Checksums: what a recipe's data must be, byte for byte.

CHECKSUM_FIELDS: tuple[tuple[str, str], ...] = (
    ("observations", "<f8"), ("actions", "<f4"), ("rewards", "<f8"), ("terminations", "|u1"), ("truncations", "|u1"),
)
"""The canonical byte stream a dataset's SHA-256 is taken over: episodes in order (Minari episode ids 0, 1, ...), and
within each episode these fields in this order, each cast to this numpy dtype (little-endian float64 observations
``(T + 1, O)``, float32 actions ``(T, A)``, float64 rewards ``(T,)``, terminations and truncations as one byte 0 / 1
``(T,)``) and written C-order with no header or separator. See :func:`dataset_checksum`."""

_PUBLISHED_FILE = "checksums.json"
_PUBLISHED_EPISODES_FILE = "checksums_episodes.pt"


class _Checksum:
    """Running SHA-256 over :data:`CHECKSUM_FIELDS`, plus a 32-bit tag per episode and field (the first four bytes,
    big-endian, of that field's own SHA-256) that locates the first differing episode and field."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._tags: list[list[int]] = []
        self.num_transitions = 0

    def update(self, episode) -> None:
        num_steps = len(episode.rewards)
        arrays = {"observations": np.asarray(episode.observations).reshape(num_steps + 1, -1),
                  "actions": np.asarray(episode.actions).reshape(num_steps, -1),
                  "rewards": np.asarray(episode.rewards).reshape(num_steps),
                  "terminations": np.asarray(episode.terminations).reshape(num_steps),
                  "truncations": np.asarray(episode.truncations).reshape(num_steps)}
        tags = []
        for field, dtype in CHECKSUM_FIELDS:
            data = np.ascontiguousarray(arrays[field], dtype=np.dtype(dtype)).tobytes()
            self._sha.update(data)
            tags.append(int.from_bytes(hashlib.sha256(data).digest()[:4], "big"))
        self._tags.append(tags)
        self.num_transitions += num_steps

    @property
    def num_episodes(self) -> int:
        return len(self._tags)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def tags(self) -> np.ndarray:
        return np.asarray(self._tags, dtype=np.uint32).reshape(-1, len(CHECKSUM_FIELDS))


def dataset_checksum(dataset_id: str, *, progress: bool = False) -> dict:
    """Recomputes the checksum of the local Minari dataset ``dataset_id`` from its files (never from the load cache).

    The SHA-256 is taken over :data:`CHECKSUM_FIELDS`: for each episode in order, its observations (float64
    little-endian, ``(T + 1, O)``), actions (float32, ``(T, A)``), rewards (float64, ``(T,)``), terminations and
    truncations (uint8 0 / 1, ``(T,)``), concatenated C-order without separators. Equivalent numpy::

        sha = hashlib.sha256()
        for episode in minari.load_dataset(dataset_id).iterate_episodes():
            for field, dtype in CHECKSUM_FIELDS:
                sha.update(np.ascontiguousarray(getattr(episode, field), dtype=dtype).tobytes())

    Args:
        dataset_id: a local Minari dataset id.
        progress: show a tqdm bar over episodes.

    Returns:
        ``{"sha256": 64 hex chars, "num_episodes": E, "num_transitions": N, "episode_tags": (E, 5) uint32}``; row
        ``e`` of ``episode_tags`` holds, per field, the first four bytes (big-endian) of the SHA-256 of episode ``e``'s
        bytes of that field.

    Raises:
        FileNotFoundError: the dataset is not local (the message says how to generate a cmbrl recipe).
    """
    if not dataset_exists(dataset_id):
        raise FileNotFoundError(_not_generated_message(dataset_id))
    dataset = minari.load_dataset(dataset_id)
    checksum = _Checksum()
    for episode in tqdm(dataset.iterate_episodes(), total=dataset.total_episodes, disable=not progress,
                        desc=f"checksum {dataset_id}", unit="episode"):
        checksum.update(episode)
    return {"sha256": checksum.hexdigest(), "num_episodes": checksum.num_episodes,
            "num_transitions": checksum.num_transitions, "episode_tags": checksum.tags()}


def _short_name(dataset_id: str) -> str:
    """``"cmbrl/hopper/medium-v0"`` -> ``"hopper-medium"`` (the CLI's name); other ids unchanged."""
    if dataset_id in DATASET_RECIPES:
        return dataset_id.removeprefix("cmbrl/").removesuffix("-v0").replace("/", "-")
    return dataset_id


def _not_generated_message(dataset_id: str) -> str:
    if dataset_id in DATASET_RECIPES:
        return (f"Dataset '{dataset_id}' is not generated (nothing at {get_dataset_path(dataset_id)}); generate it "
                f"with: python -m cmbrl.datasets make {_short_name(dataset_id)}")
    return f"Minari dataset '{dataset_id}' is not in the local Minari root {get_dataset_path()}."


def _checksum_paths(path: str | os.PathLike | None) -> tuple[Path, Path]:
    """``(json, episode tags)`` files: the shipped ones (``cmbrl/components/data``) or ``path`` and its sibling
    ``<stem>_episodes.pt``."""
    if path is None:
        data = Path(str(importlib.resources.files("cmbrl.components") / "data"))
        return data / _PUBLISHED_FILE, data / _PUBLISHED_EPISODES_FILE
    path = Path(path)
    return path, path.with_name(f"{path.stem}_episodes.pt")


def load_checksums(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """The published checksums: ``{dataset_id: {"sha256", "num_episodes", "num_transitions", "seed",
    "generator"}}`` from ``cmbrl/components/data/checksums.json`` (or the file ``path``, as written by
    :func:`write_checksums`). Recipes missing from it have no published checksum yet. Missing file: ``{}``."""
    json_file, _ = _checksum_paths(path)
    if not json_file.is_file():
        if path is not None:
            raise FileNotFoundError(f"Checksum file {json_file} does not exist.")
        return {}
    return json.loads(json_file.read_text())["datasets"]


def _load_episode_tags(path: str | os.PathLike | None, dataset_id: str) -> np.ndarray | None:
    _, tags_file = _checksum_paths(path)
    if not tags_file.is_file():
        return None
    tags = torch.load(tags_file, map_location="cpu", weights_only=True).get(dataset_id)
    return None if tags is None else tags.numpy().view(np.uint32)


def write_checksums(dataset_ids: Sequence[str], path: str | os.PathLike | None = None, *,
                    progress: bool = False) -> dict[str, dict]:
    """Computes the checksums of local datasets and merges them into a checksum file (default: the shipped one).

    Writes ``path`` (JSON: format, canonical fields and dtypes, generator version, and per dataset ``sha256``,
    ``num_episodes``, ``num_transitions``, ``seed``, ``generator``) and ``<stem>_episodes.pt`` beside it (per dataset
    the ``(E, 5)`` episode tags, stored as int32). Entries for other datasets already in the file are kept.

    Returns:
        The new entries, by dataset id.

    Raises:
        FileNotFoundError: one of ``dataset_ids`` is not local (nothing is written).
    """
    missing = [dataset_id for dataset_id in dataset_ids if not dataset_exists(dataset_id)]
    if missing:
        raise FileNotFoundError(" ".join(_not_generated_message(dataset_id) for dataset_id in missing))
    json_file, tags_file = _checksum_paths(path)
    datasets = json.loads(json_file.read_text())["datasets"] if json_file.is_file() else {}
    all_tags = torch.load(tags_file, map_location="cpu", weights_only=True) if tags_file.is_file() else {}
    entries = {}
    for dataset_id in dataset_ids:
        checksum = dataset_checksum(dataset_id, progress=progress)
        card = minari.load_dataset(dataset_id).storage.metadata.get("dataset_card") or {}
        entries[dataset_id] = {"sha256": checksum["sha256"], "num_episodes": checksum["num_episodes"],
                               "num_transitions": checksum["num_transitions"], "seed": card.get("seed"),
                               "generator": card.get("generator", 1)}
        all_tags[dataset_id] = torch.from_numpy(checksum["episode_tags"].view(np.int32).copy())
    datasets.update(entries)
    order = {dataset_id: k for k, dataset_id in enumerate(DATASET_RECIPES)}
    datasets = dict(sorted(datasets.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
    document = {"format": 1, "fields": dict(CHECKSUM_FIELDS), "generator": GENERATOR_VERSION,
                "datasets": datasets}
    json_file.write_text(json.dumps(document, indent=1) + "\n")
    torch.save({dataset_id: all_tags[dataset_id] for dataset_id in datasets if dataset_id in all_tags}, tags_file)
    return entries


CHECKSUM_TABLE_MARKERS = ("<!-- BEGIN checksum-table -->", "<!-- END checksum-table -->")
"""The lines that enclose the generated table in ``docs/datasets_checksums.md`` (:func:`update_checksum_table`)."""


def checksum_table(path: str | os.PathLike | None = None) -> str:
    """The published checksums as a markdown table, one row per recipe in :data:`DATASET_RECIPES` order (recipes
    without a published checksum say so). ``path``: a checksum file instead of the shipped one."""
    published = load_checksums(path)
    rows = ["| dataset | Minari id | episodes | transitions | SHA-256 |", "|---|---|---:|---:|---|"]
    for dataset_id in DATASET_RECIPES:
        entry = published.get(dataset_id)
        if entry is None:
            rows.append(f"| `{_short_name(dataset_id)}` | `{dataset_id}` | | | not published yet |")
        else:
            rows.append(f"| `{_short_name(dataset_id)}` | `{dataset_id}` | {entry['num_episodes']:,} | "
                        f"{entry['num_transitions']:,} | `{entry['sha256']}` |")
    return "\n".join(rows)


def update_checksum_table(document: str | os.PathLike, path: str | os.PathLike | None = None) -> bool:
    """Rewrites the table between :data:`CHECKSUM_TABLE_MARKERS` in ``document`` with :func:`checksum_table`.

    Returns:
        True when the file changed.

    Raises:
        ValueError: ``document`` lacks the markers.
    """
    document = Path(document)
    text = document.read_text()
    begin, end = CHECKSUM_TABLE_MARKERS
    if begin not in text or end not in text:
        raise ValueError(f"{document} lacks the lines {begin!r} and {end!r} around the checksum table.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n\n{checksum_table(path)}\n\n{end}{tail}"
    if new != text:
        document.write_text(new)
    return new != text


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify_dataset`.

    Attributes:
        dataset_id: the dataset checked.
        ok: True when the local data equal the reference byte for byte (same SHA-256).
        message: one line saying so, or naming the first differing episode (Minari episode id) and field(s).
        sha256: the local checksum. expected: the reference checksum.
        episode: first differing episode (None when equal or not localised). fields: the fields that differ in it.
    """

    dataset_id: str
    ok: bool
    message: str
    sha256: str
    expected: str
    episode: int | None = None
    fields: tuple[str, ...] = ()


def verify_dataset(dataset_id: str, *, reference: str | os.PathLike | None = None,
                   progress: bool = False) -> VerifyResult:
    """Recomputes a local dataset's checksum (:func:`dataset_checksum`) and compares it with the published one.

    Args:
        dataset_id: a Minari id, e.g. ``"cmbrl/hopper/medium-v0"``.
        reference: a checksum file written by :func:`write_checksums` (``python -m cmbrl.datasets checksum NAME
            --output FILE``) to compare with instead of the shipped ``cmbrl/components/data/checksums.json``.
        progress: show a tqdm bar.

    Returns:
        :class:`VerifyResult`; on a mismatch its message names the first differing episode and field(s), and says
        when the dataset was generated by an older generator or with other settings than the published checksum's.

    Raises:
        FileNotFoundError: the dataset is not generated (the message gives the ``make`` command), or ``reference``
            does not exist.
        LookupError: there is no published (or reference) checksum for ``dataset_id`` (message: "no published
            checksum for NAME").
    """
    if not dataset_exists(dataset_id):
        raise FileNotFoundError(_not_generated_message(dataset_id))
    published = load_checksums(reference).get(dataset_id)
    if published is None:
        raise LookupError(f"no published checksum for {_short_name(dataset_id)} ({dataset_id})"
                          + (f" in {reference}" if reference is not None else ""))
    checksum = dataset_checksum(dataset_id, progress=progress)
    sha256, expected = checksum["sha256"], published["sha256"]
    if sha256 == expected:
        return VerifyResult(dataset_id, True, f"{dataset_id}: OK (sha256 {sha256})", sha256, expected)
    notes = _settings_notes(dataset_id, published)
    episode, fields = None, ()
    reference_tags, tags = _load_episode_tags(reference, dataset_id), checksum["episode_tags"]
    if reference_tags is not None:
        num = min(len(tags), len(reference_tags))
        differ = np.nonzero((tags[:num] != reference_tags[:num]).any(axis=1))[0]
        if len(differ):
            episode = int(differ[0])
            fields = tuple(field for (field, _), a, b in zip(CHECKSUM_FIELDS, tags[episode], reference_tags[episode])
                           if a != b)
        elif len(tags) != len(reference_tags):
            episode, fields = num, ("episode count",)
    where = (f"first differing episode {episode}, field{'s' if len(fields) > 1 else ''} {', '.join(fields)}"
             if episode is not None else "the differing episode could not be located")
    counts = (f"; local {checksum['num_episodes']:,} episodes / {checksum['num_transitions']:,} transitions, "
              f"published {published['num_episodes']:,} / {published['num_transitions']:,}"
              if (checksum["num_episodes"], checksum["num_transitions"]) != (published["num_episodes"],
                                                                              published["num_transitions"]) else "")
    message = (f"{dataset_id}: MISMATCH: {where}{counts} (sha256 {sha256}, expected {expected}).{notes} "
               f"Regenerate: python -m cmbrl.datasets make {_short_name(dataset_id)} --overwrite")
    return VerifyResult(dataset_id, False, message, sha256, expected, episode, fields)


def _settings_notes(dataset_id: str, published: dict) -> str:
    """Why a local dataset may legitimately differ from the published checksum (older generator, other settings)."""
    card = minari.load_dataset(dataset_id).storage.metadata.get("dataset_card")
    if card is None:
        return " It was not written by cmbrl's generator (no dataset card)."
    notes = []
    generator = card.get("generator", 1)
    if generator != published.get("generator", GENERATOR_VERSION):
        notes.append(f"It was made by cmbrl's dataset generator v{generator}; the published checksum is for "
                     f"v{published.get('generator', GENERATOR_VERSION)} (deterministic across machines).")
    if (card.get("seed"), card.get("num_transitions")) != (published.get("seed"), published.get("num_transitions")):
        notes.append(f"It was made with seed {card.get('seed')} and {card.get('num_transitions'):,} transitions; the "
                     f"published checksum is for seed {published.get('seed')} and "
                     f"{published.get('num_transitions'):,}.")
    return "".join(" " + note for note in notes)


def _warn_if_not_published(dataset_id: str, dataset: minari.MinariDataset, sha256: str) -> None:
    """:func:`load_dataset`'s check: warns when a cmbrl recipe's local data differ from the published checksum
    (generated by an older cmbrl, or altered). Datasets made with other settings than the published ones (another
    seed or ``num_steps``) are not the published dataset and are not warned about; their card says so."""
    published = load_checksums().get(dataset_id)
    if published is None or sha256 == published["sha256"]:
        return
    card = dataset.storage.metadata.get("dataset_card") or {}
    older = card.get("generator", 1) != published.get("generator", GENERATOR_VERSION)
    if not older and (card.get("seed"), card.get("num_transitions")) != (published.get("seed"),
                                                                          published.get("num_transitions")):
        return
    generator = card.get("generator", 1)
    reason = (f"was generated by an older cmbrl (dataset generator v{generator}"
              f"{', not reproducible across machines' if generator < 2 else ''}; the published checksum is for "
              f"v{published.get('generator', GENERATOR_VERSION)})" if older else "differs from the published data")
    warnings.warn(
        f"Dataset '{dataset_id}' {reason}: its checksum {sha256[:16]}... is not the recipe's published "
        f"{published['sha256'][:16]}..., so results on it are not comparable with others'. Regenerate it with: "
        f"python -m cmbrl.datasets make {_short_name(dataset_id)} --overwrite   (check with: python -m "
        f"cmbrl.datasets verify {_short_name(dataset_id)})",
        UserWarning, stacklevel=3)


def load_policy(path: str | os.PathLike, *, seed: int | None = None) -> Policy:
    """Loads a SAC actor checkpoint as a fast numpy policy that samples from the actor's tanh-Gaussian.

    The checkpoint is a dict ``{"actor": state_dict, "observation_dim": O, "action_dim": A, "hidden_sizes": [...],
    ...}`` (optionally ``"action_low"``, ``"action_high"``) of the actor built by
    :func:`cmbrl.agents.sac.make_sac_actor`. The MLP runs outside TorchRL (a TorchRL call per environment step costs
    ~2 ms, 20x the MuJoCo step), in float64 with fixed-order matrix-vector products (``mujoco.mju_mulMatVec``: no
    BLAS, no threads); the action is ``low + (high − low) · (tanh(loc + scale · ε) + 1) / 2`` with ``ε ~ N(0, I)``
    drawn in float64 from a numpy generator seeded with ``seed`` (the TorchRL actor's tanh-Gaussian), rounded to
    :data:`ACTION_GRID` (:func:`quantize_action`). So the same observations and seed give the same actions on any
    machine and thread count (generator v2, ``docs/datasets_checksums.md``).

    Args:
        path: checkpoint file written with ``torch.save``.
        seed: seeds the action noise. Default None (fresh entropy).

    Returns:
        ``policy(observation (O,) float) -> action (A,) float32``, a multiple of :data:`ACTION_GRID` in ``[low, high]``;
        it raises ValueError for an observation of another shape.

    Raises:
        ValueError: the checkpoint lacks one of the keys above.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    _check_keys(checkpoint, ("actor", "observation_dim", "action_dim", "hidden_sizes"), path)
    return _numpy_policy(checkpoint, checkpoint["actor"], seed)


def load_replay_schedule(path: str | os.PathLike, *, seed: int = 0) -> list[tuple[Policy, int, dict]]:
    """Loads a replay bundle: the compact recipe of a SAC run's replay buffer (D4RL ``medium-replay``).

    A bundle (written by ``examples/export_behavior_policies.py``) is a dict with ``"observation_dim"``,
    ``"action_dim"``, ``"hidden_sizes"`` and ``"schedule"``: a list, in training order, of
    ``{"frames": f, "num_steps": n, "actor": state_dict or None, "eval_return": r}``. Entry ``k`` stands for the
    ``n`` steps the run collected after frame ``f``; its actor is the snapshot saved at ``f`` (stored in float16 to
    keep the bundle small), or ``None`` for the uniformly random warm-up.

    Args:
        path: bundle file.
        seed: entry ``k``'s policy noise is seeded with ``seed + k``.

    Returns:
        ``[(policy, num_steps, info), ...]`` with ``info = {"frames": f, "num_steps": n, "eval_return": r}``.

    Raises:
        ValueError: the file is not a replay bundle (lacks ``"schedule"`` or the actor keys).
    """
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    _check_keys(bundle, ("schedule", "observation_dim", "action_dim", "hidden_sizes"), path)
    low, high = _action_bounds(bundle)
    schedule = []
    for k, entry in enumerate(bundle["schedule"]):
        if entry["actor"] is None:
            policy = random_policy(gym.spaces.Box(low, high, dtype=np.float32), seed + k)
        else:
            policy = _numpy_policy(bundle, entry["actor"], seed + k)
        info = {key: entry[key] for key in ("frames", "num_steps", "eval_return") if key in entry}
        schedule.append((policy, int(entry["num_steps"]), info))
    return schedule


def _check_keys(checkpoint: dict, keys: Sequence[str], path) -> None:
    missing = [key for key in keys if key not in checkpoint]
    if missing:
        raise ValueError(f"Policy checkpoint {path} lacks {missing}; it has {sorted(checkpoint)}.")


def _action_bounds(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)``, each ``(A,)`` float32, from a checkpoint's optional ``action_low`` / ``action_high`` (default
    the SAC actor's [-1, 1])."""
    shape = (int(meta["action_dim"]),)
    return (np.broadcast_to(np.asarray(meta.get("action_low", -1.0), dtype=np.float32), shape),
            np.broadcast_to(np.asarray(meta.get("action_high", 1.0), dtype=np.float32), shape))


def _numpy_policy(meta: dict, actor_state: dict, seed: int | None) -> Policy:
    """The SAC actor as a deterministic float64 numpy policy (see :data:`ACTION_GRID` for why)."""
    # Imported here: components/ must not import cmbrl.agents at module level.
    from cmbrl.agents.sac import make_sac_actor

    observation_dim, action_dim = int(meta["observation_dim"]), int(meta["action_dim"])
    low, high = (bound.astype(np.float64) for bound in _action_bounds(meta))
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move the global RNG
        actor = make_sac_actor(observation_dim, action_dim, tuple(meta["hidden_sizes"]))
    actor.load_state_dict({key: value.float() for key, value in actor_state.items()})
    actor = actor.double()  # float32 (or float16) weights are exact in float64
    mlp, extractor = actor.module[0].module  # nn.Sequential(MLP, NormalParamExtractor)
    # (out, in) float64 C-contiguous, for mujoco.mju_mulMatVec; None stands for a ReLU.
    layers = [(np.ascontiguousarray(m.weight.detach().numpy()), m.bias.detach().numpy().copy())
              if isinstance(m, torch.nn.Linear) else None
              for m in mlp if isinstance(m, (torch.nn.Linear, torch.nn.ReLU))]
    rng = np.random.default_rng(seed)

    def policy(observation: np.ndarray) -> np.ndarray:
        x = np.asarray(observation, dtype=np.float64)
        if x.shape != (observation_dim,):
            raise ValueError(f"Expected an observation of shape ({observation_dim},), got {x.shape}.")
        for layer in layers:
            if layer is None:
                x = np.maximum(x, 0.0)
            else:
                y = np.empty(layer[0].shape[0])
                mujoco.mju_mulMatVec(y, layer[0], np.ascontiguousarray(x))  # fixed order, no BLAS, no threads
                x = y + layer[1]
        with torch.no_grad():
            loc, scale = (t.numpy() for t in extractor(torch.from_numpy(x)))
        squashed = np.tanh(loc + scale * rng.standard_normal(action_dim))
        return quantize_action(low + (high - low) * (squashed + 1.0) / 2.0, low, high)

    return policy


def _open_dataset(dataset_id: str, *, download: bool | None, progress: bool) -> minari.MinariDataset:
    """Finds ``dataset_id`` locally, generates it from a recipe, or downloads it."""
    if not isinstance(dataset_id, str):
        raise TypeError(f"dataset_id must be a Minari id string such as 'cmbrl/hopper/medium-v0', got "
                        f"{type(dataset_id).__name__}")
    if dataset_exists(dataset_id):
        return minari.load_dataset(dataset_id)
    if dataset_id in DATASET_RECIPES:
        return make_dataset(dataset_id, progress=progress)
    if dataset_id.startswith("cmbrl/"):
        raise FileNotFoundError(_not_found_message(dataset_id, "cmbrl datasets are generated, never downloaded."))
    if download is False:
        raise FileNotFoundError(_not_found_message(dataset_id, "Pass download=True to try the Farama server."))
    try:
        minari.download_dataset(dataset_id)
    except Exception as error:
        raise FileNotFoundError(_not_found_message(dataset_id, f"Downloading it failed ({error!r})")) from error
    return minari.load_dataset(dataset_id)


def _did_you_mean(dataset_id: str) -> str:
    """`` Did you mean 'cmbrl/hopper/medium-v0'?`` for a near miss of a recipe id (a typo, or the D4RL-style short
    name ``hopper-medium``), else ``""``."""
    short = {f"{env}-{name.rsplit('-v', 1)[0]}": full
             for full in DATASET_RECIPES for _, env, name in [full.split("/")]}  # "hopper-medium" -> its id
    key = dataset_id.lower().strip()
    if key in short:
        return f" Did you mean '{short[key]}'?"
    close = difflib.get_close_matches(key, list(DATASET_RECIPES), n=1, cutoff=0.8)
    close = close or [short[k] for k in difflib.get_close_matches(key, list(short), n=1, cutoff=0.8)]
    return f" Did you mean '{close[0]}'?" if close else ""


def _not_found_message(dataset_id: str, hint: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # misconfigured local datasets are skipped by Minari with a warning
        local = sorted(minari.list_local_datasets())
    return (
        f"Minari dataset '{dataset_id}' is not in the local Minari root {get_dataset_path()} and is not a cmbrl "
        f"recipe.{_did_you_mean(dataset_id)} {hint} This machine may have no network access. Local datasets: {local}. "
        f"cmbrl recipes (generated on first load): {sorted(DATASET_RECIPES)}."
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
