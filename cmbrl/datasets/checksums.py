"""Checksums: what a recipe's data must be, byte for byte.

:func:`dataset_checksum` hashes a dataset's arrays (:data:`CHECKSUM_FIELDS`); the published checksums ship in
``cmbrl/components/data/checksums.json`` (:func:`load_checksums`, :func:`write_checksums`, :func:`checksum_table`);
:func:`verify_dataset` compares, naming the first differing episode and field; :func:`cmbrl.datasets.load_dataset`
warns when a recipe's data differ from the published ones. See ``docs/datasets_checksums.md``.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import minari
import numpy as np
import torch
from tqdm.auto import tqdm

from .policies import GENERATOR_VERSION
from .recipes import DATASET_RECIPES, _short_name
from .storage import _not_generated_message, dataset_exists

__all__ = ["CHECKSUM_FIELDS", "CHECKSUM_TABLE_MARKERS", "VerifyResult", "dataset_checksum", "load_checksums",
           "write_checksums", "checksum_table", "update_checksum_table", "verify_dataset"]


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
