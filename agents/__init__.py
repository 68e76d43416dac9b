"""Learners and policy wrappers (no environment classes)."""
from .awac import AWAC, AWACLoss, make_mixture_actor
from .bc import BC
from .combo import COMBO, COMBOLoss
from .distributions import TanhGaussianMixture
from .iql import IQL, iql_reward_scale
from .explorers import (EXPLORERS, OptimisticExplorer, SwitchableExplorer, ensemble_qvalues, make_explorer,
                        make_explorers)
from .sac import SAC, make_sac_actor

__all__ = ["SAC", "make_sac_actor", "BC", "AWAC", "AWACLoss", "make_mixture_actor", "TanhGaussianMixture",
           "EXPLORERS", "OptimisticExplorer", "SwitchableExplorer", "ensemble_qvalues", "make_explorer",
           "make_explorers", "COMBO", "COMBOLoss", "IQL", "iql_reward_scale"]
