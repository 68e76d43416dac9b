"""Compatibility module: cmbrl's datasets live in the :mod:`cmbrl.datasets` package (one module per job: recipes,
policies, collection, Minari I/O, storage, cards, checksums); this module re-exports its names, so
``from cmbrl.components.datasets import load_dataset`` keeps working. The shipped data (behaviour policies, published
checksums) stay in ``cmbrl/components/data``.
"""
from cmbrl.datasets import (ACTION_GRID, CHECKSUM_FIELDS, CHECKSUM_TABLE_MARKERS, DATASET_RECIPES, ENVS,
                            GENERATOR_VERSION, RECIPE_KINDS, DatasetRecipe, Policy, VerifyResult, checksum_table,
                            collect_dataset, dataset_card, dataset_checksum, dataset_exists, format_card,
                            load_checksums, load_dataset, load_policy, load_replay_schedule, make_dataset,
                            quantize_action, random_policy, resolve_dataset_id, update_checksum_table, verify_dataset,
                            write_checksums)

__all__ = ["Policy", "DatasetRecipe", "DATASET_RECIPES", "ENVS", "load_dataset", "collect_dataset", "make_dataset",
           "load_policy", "load_replay_schedule", "random_policy", "dataset_exists", "dataset_card", "format_card",
           "resolve_dataset_id", "ACTION_GRID", "GENERATOR_VERSION", "quantize_action", "CHECKSUM_FIELDS",
           "dataset_checksum", "load_checksums", "write_checksums", "verify_dataset", "VerifyResult", "checksum_table",
           "update_checksum_table"]
