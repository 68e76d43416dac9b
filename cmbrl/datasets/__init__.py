"""cmbrl's offline datasets (D4RL recipes regenerated locally in Minari format); ``python -m cmbrl.datasets`` is the CLI.

Everything here lives in :mod:`cmbrl.components.datasets`; this package re-exports it and adds the command line.
"""
from cmbrl.components.datasets import (ACTION_GRID, CHECKSUM_FIELDS, DATASET_RECIPES, ENVS, GENERATOR_VERSION,
                                       DatasetRecipe, Policy, VerifyResult, collect_dataset, dataset_card,
                                       dataset_checksum, dataset_exists, format_card, load_checksums, load_dataset,
                                       load_policy, load_replay_schedule, make_dataset, quantize_action, random_policy,
                                       resolve_dataset_id, verify_dataset, write_checksums)

__all__ = ["ACTION_GRID", "CHECKSUM_FIELDS", "DATASET_RECIPES", "ENVS", "GENERATOR_VERSION", "DatasetRecipe", "Policy",
           "VerifyResult", "collect_dataset", "dataset_card", "dataset_checksum", "dataset_exists", "format_card",
           "load_checksums", "load_dataset", "load_policy", "load_replay_schedule", "make_dataset", "quantize_action",
           "random_policy", "resolve_dataset_id", "verify_dataset", "write_checksums"]
