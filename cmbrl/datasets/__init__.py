"""cmbrl's offline datasets (D4RL recipes regenerated locally in Minari format); ``python -m cmbrl.datasets`` is the CLI.

Everything here lives in :mod:`cmbrl.components.datasets`; this package re-exports it and adds the command line.
"""
from cmbrl.components.datasets import (DATASET_RECIPES, ENVS, DatasetRecipe, Policy, collect_dataset, dataset_card,
                                       dataset_exists, format_card, load_dataset, load_policy, load_replay_schedule,
                                       make_dataset, random_policy, resolve_dataset_id)

__all__ = ["DATASET_RECIPES", "ENVS", "DatasetRecipe", "Policy", "collect_dataset", "dataset_card", "dataset_exists",
           "format_card", "load_dataset", "load_policy", "load_replay_schedule", "make_dataset", "random_policy",
           "resolve_dataset_id"]
