"""Learners and policy wrappers (no environment classes)."""
from .bc import BC
from .sac import SAC, make_sac_actor

__all__ = ["SAC", "make_sac_actor", "BC"]
