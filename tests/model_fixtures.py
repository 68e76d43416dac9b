"""Shared test inputs for the model-env tests: a tiny untrained ensemble with Hopper dimensions and healthy starts."""
import torch

from cmbrl import DynamicsEnsemble

OBS, ACT = 11, 3


def tiny_ensemble() -> DynamicsEnsemble:
    return DynamicsEnsemble(OBS, ACT, num_members=4, num_elites=3, hidden_sizes=(32, 32), weight_decay=(0, 0, 0),
                            seed=0)


def healthy_starts(n: int = 64) -> torch.Tensor:
    states = 0.05 * torch.randn(n, OBS, generator=torch.Generator().manual_seed(0))
    states[:, 0] = 1.25  # hopper torso height
    return states
