"""Termination functions for the model MDP, in torch, from the Gymnasium v5 environments' own health rules.

A termination function maps ``(observation (B, O), action (B, A), next_observation (B, O))`` to ``terminated (B,)``
(bool). The registered ones read the observation layout of the v5 environments with the default
``exclude_current_positions_from_observation=True``: ``observation[0]`` is the torso height ``z``,
``observation[1]`` the torso angle, and velocities are clipped to ``[-10, 10]`` by the environment.

Peers shipped bugs here (MOPO's hopper rule takes ``abs`` of a boolean), so ``tests/test_termination.py`` checks each
function against the real environment on real transitions.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["TerminationFn", "TERMINATION_FNS", "get_termination_fn", "hopper_termination",
           "walker2d_termination", "halfcheetah_termination"]

TerminationFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_width(name: str, next_observation: torch.Tensor, width: int) -> None:
    """Raises ``ValueError`` unless ``next_observation`` is ``(B, width)`` (the environment's observation layout)."""
    if not isinstance(next_observation, torch.Tensor) or next_observation.ndim != 2 \
            or next_observation.shape[-1] != width:
        shape = tuple(next_observation.shape) if isinstance(next_observation, torch.Tensor) else next_observation
        raise ValueError(f"{name} reads next_observation (B, {width}) (the v5 environment's observation), got "
                         f"{shape}")


def hopper_termination(observation: torch.Tensor, action: torch.Tensor, next_observation: torch.Tensor) -> torch.Tensor:
    """Hopper-v5: unhealthy when ``z <= 0.7``, ``|angle| >= 0.2`` or any of ``next_observation[1:]`` leaves
    ``(-100, 100)`` (``healthy_z_range``, ``healthy_angle_range``, ``healthy_state_range`` defaults).

    Args:
        observation, action: unused (the rule depends on the next state only).
        next_observation: ``(B, 11)``.

    Returns:
        ``(B,)`` bool, True where the episode terminates.

    Raises:
        ValueError: ``next_observation`` is not ``(B, 11)``.
    """
    _check_width("hopper_termination", next_observation, 11)
    z, angle = next_observation[:, 0], next_observation[:, 1]
    healthy_state = ((next_observation[:, 1:] > -100.0) & (next_observation[:, 1:] < 100.0)).all(dim=-1)
    healthy = healthy_state & (z > 0.7) & (angle > -0.2) & (angle < 0.2)
    return ~healthy


def walker2d_termination(observation: torch.Tensor, action: torch.Tensor, next_observation: torch.Tensor) -> torch.Tensor:
    """Walker2d-v5: unhealthy when ``z`` leaves ``(0.8, 2.0)`` or the angle leaves ``(-1, 1)``.

    Args:
        observation, action: unused.
        next_observation: ``(B, 17)``.

    Returns:
        ``(B,)`` bool, True where the episode terminates.

    Raises:
        ValueError: ``next_observation`` is not ``(B, 17)``.
    """
    _check_width("walker2d_termination", next_observation, 17)
    z, angle = next_observation[:, 0], next_observation[:, 1]
    healthy = (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)
    return ~healthy


def halfcheetah_termination(observation: torch.Tensor, action: torch.Tensor, next_observation: torch.Tensor) -> torch.Tensor:
    """HalfCheetah-v5 never terminates (episodes only end by truncation).

    Returns:
        ``(B,)`` bool, all False.

    Raises:
        ValueError: ``next_observation`` is not ``(B, 17)``.
    """
    _check_width("halfcheetah_termination", next_observation, 17)
    return torch.zeros(next_observation.shape[0], dtype=torch.bool, device=next_observation.device)


# the observation width each registered function reads (ModelEnv checks it against its ensemble at construction)
hopper_termination.observation_dim = 11
walker2d_termination.observation_dim = 17
halfcheetah_termination.observation_dim = 17

TERMINATION_FNS: dict[str, TerminationFn] = {
    "hopper": hopper_termination,
    "walker2d": walker2d_termination,
    "halfcheetah": halfcheetah_termination,
}


def get_termination_fn(termination_fn: str | TerminationFn | None) -> TerminationFn | None:
    """Resolves a registered name (``"hopper"``, ``"walker2d"``, ``"halfcheetah"``), a callable, or None.

    Raises:
        ValueError: unknown name (the message lists the registered names).
        TypeError: neither a string, a callable nor None.
    """
    if termination_fn is None or callable(termination_fn):
        return termination_fn
    if isinstance(termination_fn, str):
        key = termination_fn.lower().split("-")[0]  # "Hopper-v5" -> "hopper"
        if key not in TERMINATION_FNS:
            raise ValueError(f"unknown termination_fn {termination_fn!r}; registered: {sorted(TERMINATION_FNS)}, "
                             "None, or a callable (observation, action, next_observation) -> terminated (B,)")
        return TERMINATION_FNS[key]
    raise TypeError(f"termination_fn must be a name, a callable or None, got {type(termination_fn).__name__}")
