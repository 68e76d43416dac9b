"""cmbrl's offline datasets: Minari datasets as flat TorchRL transition TensorDicts, and the D4RL recipes regenerated
locally; ``python -m cmbrl.datasets`` is the command line.

:func:`load_dataset` reads a local Minari dataset episode by episode into one TensorDict of ``N`` transitions with
TorchRL's keys (``"observation"``, ``"action"``, ``("next", "observation")``, ``("next", "reward")``,
``("next", "terminated")``, ``("next", "truncated")``, ``("next", "done")``).

Datasets that cannot be downloaded (this project often runs without network) are generated locally:
:func:`collect_dataset` rolls a policy out in a Gymnasium env and writes a Minari dataset, and
:data:`DATASET_RECIPES` names the datasets cmbrl knows how to build (:func:`make_dataset`): D4RL's ``random``,
``medium``, ``medium-replay``, ``expert`` and ``medium-expert`` for hopper, halfcheetah and walker2d (Gymnasium v5),
from behaviour policies shipped in ``cmbrl/components/data``. :func:`load_dataset` generates a registered recipe the
first time it is asked for; every generated dataset carries a card (:func:`dataset_card`). Generation is
deterministic (:data:`ACTION_GRID`, :data:`GENERATOR_VERSION`) and every recipe's data have a published SHA-256
(:data:`CHECKSUM_FIELDS`, :func:`verify_dataset`, ``cmbrl/components/data/checksums.json``).

One module per job, everything re-exported here:

- :mod:`cmbrl.datasets.recipes`: the recipe registry (:data:`DATASET_RECIPES`, :class:`DatasetRecipe`, names).
- :mod:`cmbrl.datasets.policies`: the recipes' deterministic behaviour policies (:func:`load_policy`, ...).
- :mod:`cmbrl.datasets.collection`: writing datasets (:func:`collect_dataset`, :func:`make_dataset`).
- :mod:`cmbrl.datasets.minari_io`: reading them (:func:`load_dataset`).
- :mod:`cmbrl.datasets.storage`: the local Minari root and the load cache (:func:`dataset_exists`).
- :mod:`cmbrl.datasets.cards`: dataset cards (:func:`dataset_card`, :func:`format_card`).
- :mod:`cmbrl.datasets.checksums`: published checksums and verification (:func:`verify_dataset`, ...).
- ``cmbrl.datasets.__main__``: the command line; ``cmbrl.datasets._ray``: its ``--backend ray``.

:mod:`cmbrl.components.datasets` re-exports the same names (it was their home before).

Reference: Fu et al., "D4RL: Datasets for Deep Data-Driven Reinforcement Learning", arXiv:2004.07219 (the
``medium`` recipe and the reference returns used for normalised scores); Minari, https://minari.farama.org.
"""
from .cards import dataset_card, format_card
from .checksums import (CHECKSUM_FIELDS, CHECKSUM_TABLE_MARKERS, VerifyResult, checksum_table, dataset_checksum,
                        load_checksums, update_checksum_table, verify_dataset, write_checksums)
from .collection import collect_dataset, make_dataset
from .minari_io import load_dataset
from .policies import (ACTION_GRID, GENERATOR_VERSION, Policy, load_policy, load_replay_schedule, quantize_action,
                       random_policy)
from .recipes import DATASET_RECIPES, ENVS, RECIPE_KINDS, DatasetRecipe, resolve_dataset_id
from .storage import dataset_exists

__all__ = ["ACTION_GRID", "CHECKSUM_FIELDS", "CHECKSUM_TABLE_MARKERS", "DATASET_RECIPES", "ENVS", "GENERATOR_VERSION",
           "RECIPE_KINDS", "DatasetRecipe", "Policy", "VerifyResult", "checksum_table", "collect_dataset",
           "dataset_card", "dataset_checksum", "dataset_exists", "format_card", "load_checksums", "load_dataset",
           "load_policy", "load_replay_schedule", "make_dataset", "quantize_action", "random_policy",
           "resolve_dataset_id", "update_checksum_table", "verify_dataset", "write_checksums"]
