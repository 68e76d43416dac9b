"""Dataset cards: what a generated dataset is (recipe, seed, size, returns, normalised scores, behaviour policies,
generator version and checksums), stored in its Minari metadata and printed by ``python -m cmbrl.datasets card``."""
from __future__ import annotations

import json
from collections.abc import Sequence

import minari
import numpy as np
from minari.storage.datasets_root_dir import get_dataset_path

from . import checksums
from .policies import GENERATOR_VERSION
from .recipes import DatasetRecipe, _short_name
from .storage import _CACHE_DIR, _CHECKSUM_FILE, _cache_stamp, _not_found_message, dataset_exists

__all__ = ["dataset_card", "format_card"]


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
    published = checksums.load_checksums().get(dataset_id)
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
