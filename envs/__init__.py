"""Environments: the learned model MDP and its wrappers."""
from .gym_vector import GymVectorModelEnv
from .model_env import ConservativeModelEnv, ModelEnv, UncertaintyPenalty

__all__ = ["ModelEnv", "UncertaintyPenalty", "ConservativeModelEnv", "GymVectorModelEnv"]
