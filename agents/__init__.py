"""Learners and policy wrappers (no environment classes)."""
from .awac import AWAC, AWACLoss, make_mixture_actor
from .bc import BC
from .distributions import TanhGaussianMixture
from .sac import SAC, make_sac_actor

__all__ = ["SAC", "make_sac_actor", "BC", "AWAC", "AWACLoss", "make_mixture_actor", "TanhGaussianMixture"]
