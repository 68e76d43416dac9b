"""Reading datasets: :func:`load_dataset` turns a Minari dataset (local, generated from a recipe, or downloaded) into
one flat TensorDict of transitions with TorchRL's keys. TorchRL's own ``MinariExperienceReplay`` is not used: in
torchrl 0.14.1 it writes all-zero data."""
from __future__ import annotations

import json

import minari
import numpy as np
import torch
from minari.storage.datasets_root_dir import get_dataset_path
from tensordict import TensorDict
from tqdm.auto import tqdm

from .checksums import _Checksum, _warn_if_not_published
from .collection import make_dataset
from .recipes import DATASET_RECIPES
from .storage import _CACHE_DIR, _CHECKSUM_FILE, _cache_stamp, _not_found_message, _write_cache, dataset_exists

__all__ = ["load_dataset"]


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
