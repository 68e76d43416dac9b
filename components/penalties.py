"""Uncertainty estimators ``u(s, a)`` for conservative model MDPs, in one registry.

Every estimator has the signature ``u(mean, std, member) -> (B,)``:

- ``mean``, ``std``: ``(E, B, D)`` per-member Gaussian parameters of the members in use (the elites in
  :class:`~cmbrl.envs.ModelEnv`), over ``D = O + 1`` dimensions: the next observation **and the reward** (MOPO
  footnote 3 treats the reward as part of the state; every estimator here includes the reward dimension).
- ``member``: ``(B,)`` long, the position (in ``0..E-1``) of the member that produced each sampled row.

The result is in the units of the predicted quantities (reward per step for the reward column), so
``r − penalty_coef · u`` is a reward. Estimators marked ``requires_all_members = False`` only read the sampled
member's row; callers may then pass ``mean``/``std`` of shape ``(1, B, D)`` and ``member`` all zeros, which saves
the other members' forward pass.

References:
    MOPO: Yu et al., arXiv:2005.13239, section 4.3 (``max_aleatoric``).
    MOReL: Kidambi et al., arXiv:2005.05951, section 4.2 (pairwise disagreement).
    Report "Conservative model-based offline RL: MOPO penalties and COMBO" (shared/seeds/003), section VI.A
    (difference of means, means diff from centre, ensemble variance, individual variance, combined).
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

__all__ = ["PenaltyFn", "PENALTIES", "get_penalty", "max_aleatoric", "max_pairwise_diff", "max_center_distance",
           "ensemble_std", "individual_std", "combined", "no_penalty", "requires_all_members"]

PenaltyFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _mark(requires_all: bool, reads_member: bool = False):
    """Registers ``requires_all_members`` on a built-in estimator and checks its inputs' shapes (a wrong shape would
    otherwise give a broadcast error, an IndexError or, for 2-D inputs, a silently wrong reduction)."""
    def wrap(fn):
        @functools.wraps(fn)
        def checked(mean: torch.Tensor, std: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
            if mean.ndim != 3 or std.shape != mean.shape:
                raise ValueError(f"{fn.__name__}: mean and std must both be (E, B, D) (members, rows, next observation "
                                 f"and reward), got {tuple(mean.shape)} and {tuple(std.shape)}")
            if reads_member and (not isinstance(member, torch.Tensor) or member.shape != mean.shape[1:2]):
                got = tuple(member.shape) if isinstance(member, torch.Tensor) else member
                raise ValueError(f"{fn.__name__} reads the sampled member of each row: member must be (B,) = "
                                 f"({mean.shape[1]},), got {got}")
            return fn(mean, std, member)
        checked.requires_all_members = requires_all
        return checked
    return wrap


@_mark(True)
def max_aleatoric(mean: torch.Tensor, std: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """MOPO's penalty ``max_i ||std_i||_2`` (the Frobenius norm of the diagonal covariance's square root).

    Reference: MOPO, arXiv:2005.13239, section 4.3, ``u(s, a) = max_i ||Σ_i(s, a)||_F``.
    """
    return std.norm(dim=-1).amax(dim=0)


@_mark(True)
def max_pairwise_diff(mean: torch.Tensor, std: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """``max_{i,j} ||mean_i − mean_j||_2``: the largest disagreement between two members.

    The report's "difference of means" (seeds/003, section VI.A) and MOReL's disagreement (arXiv:2005.05951).
    """
    diff = mean.unsqueeze(0) - mean.unsqueeze(1)  # (E, E, B, D)
    return diff.norm(dim=-1).flatten(0, 1).amax(dim=0)


@_mark(True)
def max_center_distance(mean: torch.Tensor, std: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """``max_i ||mean_i − mean_bar||_2`` with ``mean_bar`` the members' average.

    The report's "means diff from center" (seeds/003, section VI.A). OfflineRL-Kit ships this under the name
    "pairwise-diff"; it is not the pairwise difference (see :func:`max_pairwise_diff`).
    """
    return (mean - mean.mean(dim=0, keepdim=True)).norm(dim=-1).amax(dim=0)


@_mark(True)
def ensemble_std(mean: torch.Tensor, std: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """Norm of the standard deviation of the members' uniform Gaussian mixture.

    Per dimension the mixture variance is ``mean_i(std_i²) + var_i(mean_i)`` (law of total variance, population
    variance over members); the estimator is the L2 norm over dimensions of its square root. The report's
    "ensemble variance" formula (seeds/003, section VI.A), ``Σ_i ||Σ_i||_F + Σ_i ||μ_i||_2 − ||Σ_i μ_i||_2``, is an
    approximation of this quantity (it bounds the spread of the means by a triangle-inequality gap); this is the
    exact mixture statistic.
    """
    variance = std.pow(2).mean(dim=0) + mean.var(dim=0, unbiased=False)
    return variance.sqrt().norm(dim=-1)


@_mark(False, reads_member=True)
def individual_std(mean: torch.Tensor, std: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """``||std_k||_2`` of the member ``k`` that produced the row (report's "individual variance", seeds/003)."""
    rows = torch.arange(std.shape[1], device=std.device)
    return std[member, rows].norm(dim=-1)


@_mark(True, reads_member=True)
def combined(mean: torch.Tensor, std: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """``0.5 · individual_std + 0.5 · max_aleatoric``: the report's best penalty ("combined variance",
    seeds/003, section VI.A, table of normalised scores)."""
    return 0.5 * individual_std.__wrapped__(mean, std, member) + 0.5 * max_aleatoric.__wrapped__(mean, std, member)


@_mark(False)
def no_penalty(mean: torch.Tensor, std: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """Zero everywhere (plain MBPO-style model MDP)."""
    return std.new_zeros(std.shape[1])


PENALTIES: dict[str, PenaltyFn] = {
    "max_aleatoric": max_aleatoric,
    "mopo": max_aleatoric,
    "max_pairwise_diff": max_pairwise_diff,
    "max_center_distance": max_center_distance,
    "ensemble_std": ensemble_std,
    "individual_std": individual_std,
    "combined": combined,
    "none": no_penalty,
}


def get_penalty(penalty: str | PenaltyFn) -> PenaltyFn:
    """Resolves a registered penalty name or passes a user callable through.

    Args:
        penalty: a name in :data:`PENALTIES` or a callable ``(mean (E, B, D), std (E, B, D), member (B,)) -> (B,)``.

    Raises:
        ValueError: unknown name (the message lists the valid names).
        TypeError: neither a string nor a callable.
    """
    if callable(penalty):
        return penalty
    if isinstance(penalty, str):
        if penalty not in PENALTIES:
            raise ValueError(f"unknown penalty {penalty!r}; valid names: {sorted(PENALTIES)} or a callable "
                             "(mean, std, member) -> (B,)")
        return PENALTIES[penalty]
    raise TypeError(f"penalty must be a name or a callable, got {type(penalty).__name__}")


def requires_all_members(penalty: PenaltyFn) -> bool:
    """Whether ``penalty`` reads every member's prediction (True for user callables unless they set
    ``requires_all_members = False``)."""
    return getattr(penalty, "requires_all_members", True)
