"""cmbrl: conservative model-based offline RL, with the learned model MDP as a TorchRL environment."""
from cmbrl.agents import SAC, make_sac_actor
from cmbrl.components import (PENALTIES, TERMINATION_FNS, DynamicsEnsemble, get_penalty, get_termination_fn)
from cmbrl.envs import ConservativeModelEnv, ModelEnv, UncertaintyPenalty

__all__ = ["SAC", "make_sac_actor", "DynamicsEnsemble", "PENALTIES", "get_penalty", "TERMINATION_FNS",
           "get_termination_fn", "ModelEnv", "UncertaintyPenalty", "ConservativeModelEnv"]
__version__ = "0.1.0"
