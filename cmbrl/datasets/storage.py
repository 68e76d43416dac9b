"""Where datasets live: the local Minari root (``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``), whether a
dataset is there, the flat load cache beside it, preparing a dataset's folder, and the messages naming what is
missing."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import minari
from minari.storage.datasets_root_dir import get_dataset_path
from tensordict import TensorDict

from .recipes import DATASET_RECIPES, _did_you_mean, _short_name

__all__ = ["dataset_exists"]


def dataset_exists(dataset_id: str) -> bool:
    """Whether the Minari dataset ``dataset_id`` is in the local Minari root (written completely: its data folder)."""
    return (get_dataset_path(dataset_id) / "data").exists()


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


def _not_generated_message(dataset_id: str) -> str:
    if dataset_id in DATASET_RECIPES:
        return (f"Dataset '{dataset_id}' is not generated (nothing at {get_dataset_path(dataset_id)}); generate it "
                f"with: python -m cmbrl.datasets make {_short_name(dataset_id)}")
    return f"Minari dataset '{dataset_id}' is not in the local Minari root {get_dataset_path()}."


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
