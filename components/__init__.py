"""Parts with no environment loop: dynamics ensemble, penalties, termination functions, datasets."""
from .ensemble import DynamicsEnsemble, EnsembleLinear
from .penalties import PENALTIES, PenaltyFn, get_penalty
from .termination import TERMINATION_FNS, TerminationFn, get_termination_fn

__all__ = ["DynamicsEnsemble", "EnsembleLinear", "PENALTIES", "PenaltyFn", "get_penalty", "TERMINATION_FNS",
           "TerminationFn", "get_termination_fn"]
