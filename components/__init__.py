"""Parts with no environment loop: dynamics ensemble, penalties, termination functions, datasets."""
from .calibration import (CALIBRATION_ENVS, CALIBRATION_PENALTIES, calibration_data, calibration_metrics,
                          morel_halt_threshold, simulate_transitions)
from .checkpoints import save_atomic
from .devices import available_devices, check_same_device, compile_step, resolve_device
from .datasets import DATASET_RECIPES, DatasetRecipe, collect_dataset, load_dataset, load_policy, make_dataset
from .ensemble import DynamicsEnsemble, EnsembleLinear
from .errors import MissingKeysError
from .penalties import PENALTIES, PenaltyFn, get_penalty
from .termination import TERMINATION_FNS, TerminationFn, get_termination_fn

__all__ = ["load_dataset", "collect_dataset", "make_dataset", "load_policy", "DATASET_RECIPES", "DatasetRecipe",
           "DynamicsEnsemble", "EnsembleLinear", "PENALTIES", "PenaltyFn", "get_penalty", "TERMINATION_FNS",
           "TerminationFn", "get_termination_fn", "CALIBRATION_ENVS", "CALIBRATION_PENALTIES", "calibration_data",
           "calibration_metrics", "morel_halt_threshold", "simulate_transitions", "save_atomic", "resolve_device",
           "available_devices", "check_same_device", "compile_step", "MissingKeysError"]
