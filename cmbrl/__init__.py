"""cmbrl: conservative model-based offline RL, with the learned model MDP as a TorchRL environment."""
from cmbrl.agents import COMBO, COMBOLoss
from cmbrl.agents import (AWAC, BC, SAC, OptimisticExplorer, SwitchableExplorer, make_explorers, make_mixture_actor,
                          make_sac_actor)
from cmbrl.components import calibration_data, calibration_metrics, simulate_transitions
from cmbrl.components import (DATASET_RECIPES, PENALTIES, TERMINATION_FNS, DynamicsEnsemble, collect_dataset,
                              get_penalty, get_termination_fn, load_dataset, make_dataset)
from cmbrl.envs import ConservativeModelEnv, GymVectorModelEnv, ModelEnv, UncertaintyPenalty

__all__ = ["AWAC", "OptimisticExplorer", "SwitchableExplorer", "make_explorers", "make_mixture_actor", "load_dataset", "collect_dataset", "make_dataset", "DATASET_RECIPES", "SAC", "make_sac_actor", "BC", "DynamicsEnsemble", "PENALTIES", "get_penalty", "TERMINATION_FNS",
           "get_termination_fn", "ModelEnv", "UncertaintyPenalty", "ConservativeModelEnv",
           "GymVectorModelEnv", "COMBO", "COMBOLoss",
           "calibration_data", "calibration_metrics", "simulate_transitions"]
__version__ = "0.1.0"
