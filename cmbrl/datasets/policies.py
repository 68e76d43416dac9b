"""Behaviour policies of the recipes, deterministic on any machine: uniformly random actions, SAC checkpoints as float64
numpy policies, and replay bundles (a SAC run's policy snapshots), every action rounded to :data:`ACTION_GRID`."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import gymnasium as gym
import mujoco
import numpy as np
import torch

__all__ = ["Policy", "ACTION_GRID", "GENERATOR_VERSION", "quantize_action", "random_policy", "load_policy",
           "load_replay_schedule"]


Policy = Callable[[np.ndarray], np.ndarray]
"""A behaviour policy: ``observation (O,) float64 -> action (A,)``, as Gymnasium passes them."""


ACTION_GRID = 1e-6
"""Every action cmbrl's recipe policies send to MuJoCo is a multiple of this (then float32).

Why: a behaviour policy's float32 matrix products round differently with the BLAS kernel (OpenBLAS picks one per CPU
type) and numpy's SIMD ``tanh``; a one-ulp (6e-8) action difference at step 0 grows, MuJoCo being chaotic, into a
different dataset (measured: ``docs/datasets_checksums.md``). The recipe policies therefore compute in float64 with
fixed-order products (``mujoco.mju_mulMatVec``: no BLAS, no threads) and round each action to this grid, so that the
remaining ~1e-16 differences (transcendental functions' last bits) change an action only when it falls within ~1e-16
of a rounding boundary: about one chance in 10^10 per action component."""

GENERATOR_VERSION = 2
"""Version of the recipe generator, stored in the dataset card as ``"generator"``. 1 (cards without the key):
float32 policies, not reproducible across CPUs; 2: float64 fixed-order policies, actions on :data:`ACTION_GRID`."""


def quantize_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Rounds ``action`` to the nearest multiple of :data:`ACTION_GRID`, clipped to ``[low, high]``.

    ``rint(a * 1e6) / 1e6`` in float64: a correctly rounded product, an exact rounding and a correctly rounded
    quotient, so the result depends only on ``a`` (not on the CPU).

    Args:
        action: ``(A,)`` float array. low, high: ``(A,)`` bounds.

    Returns:
        ``(A,)`` float32.
    """
    scale = float(round(1.0 / ACTION_GRID))  # 1e6 exactly
    grid = np.rint(np.asarray(action, dtype=np.float64) * scale) / scale
    return np.clip(grid, low, high).astype(np.float32)


def random_policy(action_space: gym.spaces.Box, seed: int | None = None) -> Policy:
    """A uniformly random policy over a Box action space (the D4RL ``random`` recipe), seeded with ``seed``.

    Returns ``policy(observation) -> action`` of the space's shape and dtype, drawn uniformly in float64 from
    ``[low, high]`` and rounded to :data:`ACTION_GRID` (:func:`quantize_action`).
    """
    rng = np.random.default_rng(seed)
    low, high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)
    return lambda observation: quantize_action(rng.uniform(low, high), low, high).astype(action_space.dtype)


def load_policy(path: str | os.PathLike, *, seed: int | None = None) -> Policy:
    """Loads a SAC actor checkpoint as a fast numpy policy that samples from the actor's tanh-Gaussian.

    The checkpoint is a dict ``{"actor": state_dict, "observation_dim": O, "action_dim": A, "hidden_sizes": [...],
    ...}`` (optionally ``"action_low"``, ``"action_high"``) of the actor built by
    :func:`cmbrl.agents.sac.make_sac_actor`. The MLP runs outside TorchRL (a TorchRL call per environment step costs
    ~2 ms, 20x the MuJoCo step), in float64 with fixed-order matrix-vector products (``mujoco.mju_mulMatVec``: no
    BLAS, no threads); the action is ``low + (high − low) · (tanh(loc + scale · ε) + 1) / 2`` with ``ε ~ N(0, I)``
    drawn in float64 from a numpy generator seeded with ``seed`` (the TorchRL actor's tanh-Gaussian), rounded to
    :data:`ACTION_GRID` (:func:`quantize_action`). So the same observations and seed give the same actions on any
    machine and thread count (generator v2, ``docs/datasets_checksums.md``).

    Args:
        path: checkpoint file written with ``torch.save``.
        seed: seeds the action noise. Default None (fresh entropy).

    Returns:
        ``policy(observation (O,) float) -> action (A,) float32``, a multiple of :data:`ACTION_GRID` in ``[low, high]``;
        it raises ValueError for an observation of another shape.

    Raises:
        ValueError: the checkpoint lacks one of the keys above.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    _check_keys(checkpoint, ("actor", "observation_dim", "action_dim", "hidden_sizes"), path)
    return _numpy_policy(checkpoint, checkpoint["actor"], seed)


def load_replay_schedule(path: str | os.PathLike, *, seed: int = 0) -> list[tuple[Policy, int, dict]]:
    """Loads a replay bundle: the compact recipe of a SAC run's replay buffer (D4RL ``medium-replay``).

    A bundle (written by ``examples/export_behavior_policies.py``) is a dict with ``"observation_dim"``,
    ``"action_dim"``, ``"hidden_sizes"`` and ``"schedule"``: a list, in training order, of
    ``{"frames": f, "num_steps": n, "actor": state_dict or None, "eval_return": r}``. Entry ``k`` stands for the
    ``n`` steps the run collected after frame ``f``; its actor is the snapshot saved at ``f`` (stored in float16 to
    keep the bundle small), or ``None`` for the uniformly random warm-up.

    Args:
        path: bundle file.
        seed: entry ``k``'s policy noise is seeded with ``seed + k``.

    Returns:
        ``[(policy, num_steps, info), ...]`` with ``info = {"frames": f, "num_steps": n, "eval_return": r}``.

    Raises:
        ValueError: the file is not a replay bundle (lacks ``"schedule"`` or the actor keys).
    """
    bundle = torch.load(path, map_location="cpu", weights_only=True)
    _check_keys(bundle, ("schedule", "observation_dim", "action_dim", "hidden_sizes"), path)
    low, high = _action_bounds(bundle)
    schedule = []
    for k, entry in enumerate(bundle["schedule"]):
        if entry["actor"] is None:
            policy = random_policy(gym.spaces.Box(low, high, dtype=np.float32), seed + k)
        else:
            policy = _numpy_policy(bundle, entry["actor"], seed + k)
        info = {key: entry[key] for key in ("frames", "num_steps", "eval_return") if key in entry}
        schedule.append((policy, int(entry["num_steps"]), info))
    return schedule


def _check_keys(checkpoint: dict, keys: Sequence[str], path) -> None:
    missing = [key for key in keys if key not in checkpoint]
    if missing:
        raise ValueError(f"Policy checkpoint {path} lacks {missing}; it has {sorted(checkpoint)}.")


def _action_bounds(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)``, each ``(A,)`` float32, from a checkpoint's optional ``action_low`` / ``action_high`` (default
    the SAC actor's [-1, 1])."""
    shape = (int(meta["action_dim"]),)
    return (np.broadcast_to(np.asarray(meta.get("action_low", -1.0), dtype=np.float32), shape),
            np.broadcast_to(np.asarray(meta.get("action_high", 1.0), dtype=np.float32), shape))


def _numpy_policy(meta: dict, actor_state: dict, seed: int | None) -> Policy:
    """The SAC actor as a deterministic float64 numpy policy (see :data:`ACTION_GRID` for why)."""
    # Imported here: cmbrl.agents imports cmbrl.components, which re-exports this package (a cycle at import time).
    from cmbrl.agents.sac import make_sac_actor

    observation_dim, action_dim = int(meta["observation_dim"]), int(meta["action_dim"])
    low, high = (bound.astype(np.float64) for bound in _action_bounds(meta))
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move the global RNG
        actor = make_sac_actor(observation_dim, action_dim, tuple(meta["hidden_sizes"]))
    actor.load_state_dict({key: value.float() for key, value in actor_state.items()})
    actor = actor.double()  # float32 (or float16) weights are exact in float64
    mlp, extractor = actor.module[0].module  # nn.Sequential(MLP, NormalParamExtractor)
    # (out, in) float64 C-contiguous, for mujoco.mju_mulMatVec; None stands for a ReLU.
    layers = [(np.ascontiguousarray(m.weight.detach().numpy()), m.bias.detach().numpy().copy())
              if isinstance(m, torch.nn.Linear) else None
              for m in mlp if isinstance(m, (torch.nn.Linear, torch.nn.ReLU))]
    rng = np.random.default_rng(seed)

    def policy(observation: np.ndarray) -> np.ndarray:
        x = np.asarray(observation, dtype=np.float64)
        if x.shape != (observation_dim,):
            raise ValueError(f"Expected an observation of shape ({observation_dim},), got {x.shape}.")
        for layer in layers:
            if layer is None:
                x = np.maximum(x, 0.0)
            else:
                y = np.empty(layer[0].shape[0])
                mujoco.mju_mulMatVec(y, layer[0], np.ascontiguousarray(x))  # fixed order, no BLAS, no threads
                x = y + layer[1]
        with torch.no_grad():
            loc, scale = (t.numpy() for t in extractor(torch.from_numpy(x)))
        squashed = np.tanh(loc + scale * rng.standard_normal(action_dim))
        return quantize_action(low + (high - low) * (squashed + 1.0) / 2.0, low, high)

    return policy
