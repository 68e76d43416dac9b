"""A batched TorchRL model env (typically :class:`ConservativeModelEnv`) as a native Gymnasium vector env."""
from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

__all__ = ["GymVectorModelEnv"]

_INFO_KEYS = ("model_reward", "uncertainty")


class GymVectorModelEnv(gymnasium.vector.VectorEnv):
    """Gymnasium vector env over the ``B`` rows of a batched TorchRL env (typically :class:`ConservativeModelEnv`).

    Each row of the TorchRL env's batch is one sub-environment, so ``num_envs = B`` and a single ``env.step`` on the
    whole batch advances all of them. Observations, rewards and flags come back as NumPy arrays; the TorchRL
    tensordict (observation, ``step_count``, ...) stays inside between calls.

    - ``reset(seed=None, options=None) -> (observations (B, O) float32, infos {})``. ``seed`` goes to
      ``env.set_seed``; ``options={"reset_mask": (B,) bool}`` resets only the masked rows (Gymnasium 1.x).
    - ``step(actions (B, A)) -> (observations (B, O) float32, rewards (B,) float32, terminations (B,) bool,
      truncations (B,) bool, infos)``. ``rewards`` is the env's ``"reward"`` (for :class:`ConservativeModelEnv`
      the penalised ``r − penalty_coef · u``, reward units per step). ``infos["model_reward"]`` and
      ``infos["uncertainty"]`` are ``(B,)`` float32 arrays (those of the two keys the env writes), each paired with a
      ``(B,)`` bool mask ``infos["_model_reward"]``/``infos["_uncertainty"]`` as in Gymnasium's vector-info
      convention; the mask is False (value 0) on rows that were reset in this call.

    Terminations come from the wrapped env's ``"terminated"``: for :class:`ModelEnv` the termination function,
    halting on ensemble disagreement, or a non-finite prediction. Truncations come from ``"truncated"``: for
    :class:`ConservativeModelEnv` reaching the rollout ``horizon`` (bootstrap from those observations).

    Autoreset is Gymnasium's default ``AutoresetMode.NEXT_STEP``: a row that terminated or truncated at step ``t``
    is reset by the *next* ``step`` call, which ignores that row's action and returns the new start observation with
    reward 0, ``terminated = truncated = False`` and its info masks False. The reset is a TorchRL partial reset
    (``"_reset"`` mask), so only those rows draw new start states. As in Gymnasium's ``CartPoleVectorEnv``, the
    batched model still computes a step for those rows (with the ignored action); its outputs are discarded.

    Actions are used as given (no clipping; wrap with ``gymnasium.wrappers.vector.ClipAction`` if needed); a
    float32 C-contiguous array is passed to torch without a copy (on a CPU env; on a GPU env it is copied to the
    env's device once per step). Devices: the wrapped env may live on any device; everything returned is NumPy on
    the CPU, as Gymnasium requires, copied from the device in one transfer per ``step``. All calls run under
    ``torch.no_grad()``. This wrapper owns ``env``: :meth:`close` closes it. Rendering is not supported (``render_mode``
    is None).

    Args:
        env: a TorchRL env with batch size ``(B,)``, an ``"observation"`` entry ``(B, O)``, a continuous
            ``action_spec`` ``(B, A)`` (bounded or unbounded, with the same bounds on every row), a reward ``(B, 1)``
            and ``"terminated"``/``"truncated"`` flags ``(B, 1)``; it must support partial resets through a
            ``"_reset"`` ``(B, 1)`` mask.

    Raises:
        TypeError: if ``env`` is not a TorchRL ``EnvBase``.
        ValueError: if its batch size is not one-dimensional, an entry above is missing, or the action bounds
            differ between rows.

    Examples:
        >>> import numpy as np
        >>> import torch
        >>> from cmbrl import ConservativeModelEnv, DynamicsEnsemble, GymVectorModelEnv
        >>> ensemble = DynamicsEnsemble(observation_dim=11, action_dim=3, seed=0)
        >>> model_env = ConservativeModelEnv(ensemble, start_states=torch.randn(100, 11), batch_size=4, horizon=2,
        ...                                  seed=0)
        >>> envs = GymVectorModelEnv(model_env)
        >>> envs.single_observation_space.shape, envs.action_space.shape
        ((11,), (4, 3))
        >>> observations, infos = envs.reset(seed=0)
        >>> for _ in range(3):
        ...     observations, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())
        >>> observations.shape, rewards.shape, infos["uncertainty"].shape
        ((4, 11), (4,), (4,))
        >>> envs.close()
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}
    render_mode = None

    def __init__(self, env: EnvBase) -> None:
        if not isinstance(env, EnvBase):
            raise TypeError(f"env must be a torchrl EnvBase, got {type(env).__name__}")
        if len(env.batch_size) != 1:
            raise ValueError(f"env must have a one-dimensional batch size (B,), got {tuple(env.batch_size)}")
        batch = env.batch_size[0]
        observation_spec = env.observation_spec
        if "observation" not in observation_spec.keys():
            raise ValueError(f"env has no 'observation' entry; its observation keys are "
                             f"{list(observation_spec.keys(True, True))}")
        obs_shape, act_shape = observation_spec["observation"].shape, env.action_spec.shape
        if len(obs_shape) != 2 or len(act_shape) != 2:
            raise ValueError(f"observation and action specs must be (B, O) and (B, A), got {tuple(obs_shape)} "
                             f"and {tuple(act_shape)}")
        done_keys = list(env.full_done_spec.keys(True, True))
        for key in ("terminated", "truncated"):
            if key not in done_keys:
                raise ValueError(f"env must write a '{key}' flag; its done keys are {done_keys}")

        self.env = env
        self.num_envs = batch
        self._reward_key = env.reward_key
        self._info_keys = tuple(key for key in _INFO_KEYS if key in observation_spec.keys())
        self.single_observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (obs_shape[-1],), np.float32)
        self.single_action_space = self._action_box(env.action_spec)
        self.observation_space = batch_space(self.single_observation_space, batch)
        self.action_space = batch_space(self.single_action_space, batch)
        self._state: TensorDictBase | None = None  # TorchRL state after step_mdp; None until the first reset
        self._autoreset = torch.zeros(batch, dtype=torch.bool, device=env.device)  # rows ended in the last step
        self._autoreset_any = False  # the same on the host (no device sync to test it)

    @staticmethod
    def _action_box(spec) -> gymnasium.spaces.Box:
        space = getattr(spec, "space", None)
        if hasattr(space, "low") and hasattr(space, "high"):
            low, high = space.low.detach().cpu().float(), space.high.detach().cpu().float()
            if not (torch.equal(low, low[:1].expand_as(low)) and torch.equal(high, high[:1].expand_as(high))):
                raise ValueError("action bounds differ between rows; a Gymnasium vector env needs one "
                                 "single_action_space")
            return gymnasium.spaces.Box(low[0].numpy(), high[0].numpy(), dtype=np.float32)
        return gymnasium.spaces.Box(-np.inf, np.inf, (spec.shape[-1],), np.float32)

    @torch.no_grad()
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets all rows (or those in ``options["reset_mask"]``) to start states.

        Args:
            seed: seeds the TorchRL env (``env.set_seed(seed)``) before drawing start states. Default None.
            options: None, or ``{"reset_mask": np.ndarray (B,) bool}`` to reset only the masked rows (the other
                rows keep their state; needs a previous full reset).

        Returns:
            ``(observations, infos)``: observations ``(B, O)`` float32 (all rows), infos ``{}``.

        Raises:
            TypeError: if ``seed`` is not an int or None, or ``reset_mask`` is not a bool NumPy array.
            ValueError: on unknown option keys or a ``reset_mask`` of the wrong shape or without any True.
            RuntimeError: on a masked reset before the first full reset, or after :meth:`close`.
        """
        if self.closed:
            raise RuntimeError("reset() called on a closed GymVectorModelEnv")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        options = {} if options is None else dict(options)
        reset_mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; the only option is 'reset_mask'")
        super().reset(seed=seed)  # seeds self.np_random, as Gymnasium's VectorEnv does
        if seed is not None:
            self.env.set_seed(int(seed))

        if reset_mask is None:
            self._state = self.env.reset()
            self._autoreset.zero_()
            self._autoreset_any = False
        else:
            mask = self._check_reset_mask(reset_mask)
            if self._state is None:
                raise RuntimeError("reset(options={'reset_mask': ...}) needs a previous full reset()")
            self._partial_reset(mask)
            self._autoreset &= ~mask
            self._autoreset_any = bool(self._autoreset.any())
        return self._numpy(self._state.get("observation")), {}

    @torch.no_grad()
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Steps all rows; rows that ended in the previous call are reset instead (NEXT_STEP autoreset).

        Args:
            actions: ``(B, A)`` array (float32 is used without a copy; other real dtypes are cast). The actions of
                rows being reset are ignored.

        Returns:
            ``(observations (B, O) float32, rewards (B,) float32, terminations (B,) bool, truncations (B,) bool,
            infos)`` with ``infos["model_reward"]``, ``infos["uncertainty"]`` ``(B,)`` float32 and their ``(B,)``
            bool masks ``"_model_reward"``, ``"_uncertainty"`` (False on rows reset in this call).

        Raises:
            ValueError: if ``actions`` does not have shape ``(B, A)``.
            TypeError: if ``actions`` is not of a real numeric dtype.
            RuntimeError: if called before :meth:`reset` or after :meth:`close`.
        """
        if self.closed:
            raise RuntimeError("step() called on a closed GymVectorModelEnv")
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = self._action_tensor(actions)

        tensordict = self.env.step(self._state.set("action", action))
        next_td = tensordict.get("next")
        batch = self.num_envs
        reward = next_td.get(self._reward_key).reshape(batch)
        terminated = next_td.get("terminated").reshape(batch)
        truncated = next_td.get("truncated").reshape(batch)
        info_values = [next_td.get(key).reshape(batch) for key in self._info_keys]
        self._state = step_mdp(tensordict)

        stepped = ~self._autoreset
        if self._autoreset_any:  # NEXT_STEP: rows that ended last call restart now; their step is discarded
            self._partial_reset(self._autoreset)
            reward = torch.where(stepped, reward, torch.zeros_like(reward))
            terminated, truncated = terminated & stepped, truncated & stepped
            info_values = [torch.where(stepped, value, torch.zeros_like(value)) for value in info_values]
        self._autoreset = terminated | truncated

        # One device-to-host copy per step (Gymnasium wants NumPy on the CPU): every output packed in one float32
        # block (the flags as 0/1, exact), copied once, then sliced.
        observation = self._state.get("observation")
        columns = [observation.reshape(batch, -1), reward, *info_values, terminated, truncated, stepped]
        block = torch.cat([c.reshape(batch, -1).to(torch.float32) for c in columns], dim=-1).cpu().numpy()
        obs_dim = columns[0].shape[-1]
        flags = block[:, -3:] != 0
        terminated_np, truncated_np, stepped_np = flags[:, 0].copy(), flags[:, 1].copy(), flags[:, 2]
        self._autoreset_any = bool(terminated_np.any() or truncated_np.any())
        infos: dict[str, Any] = {}
        for i, key in enumerate(self._info_keys):
            infos[key] = block[:, obs_dim + 1 + i].copy()
            infos[f"_{key}"] = stepped_np.copy()
        return (block[:, :obs_dim].copy(), block[:, obs_dim].copy(), terminated_np, truncated_np, infos)

    def close_extras(self, **kwargs: Any) -> None:
        """Closes the wrapped TorchRL env."""
        self.env.close(raise_if_closed=False)
        self._state = None

    def _partial_reset(self, mask: torch.Tensor) -> None:
        """Draws new start states for the rows in ``mask`` ``(B,)`` through TorchRL's ``"_reset"`` ``(B, 1)``."""
        self._state.set("_reset", mask.reshape(self.num_envs, 1))
        self._state = self.env.reset(self._state)

    def _check_reset_mask(self, reset_mask: Any) -> torch.Tensor:
        if not isinstance(reset_mask, np.ndarray) or reset_mask.dtype != np.bool_:
            raise TypeError(f"options['reset_mask'] must be a NumPy bool array, got "
                            f"{type(reset_mask).__name__} of dtype {getattr(reset_mask, 'dtype', None)}")
        if reset_mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] must have shape ({self.num_envs},), got {reset_mask.shape}")
        if not reset_mask.any():
            raise ValueError("options['reset_mask'] must contain at least one True value")
        return torch.as_tensor(reset_mask, device=self.env.device).clone()

    def _action_tensor(self, actions: Any) -> torch.Tensor:
        actions = np.asarray(actions)
        expected = self.action_space.shape
        if actions.shape != expected:
            raise ValueError(f"actions must have shape (num_envs, action_dim) = {expected}, got {actions.shape}")
        if not (np.issubdtype(actions.dtype, np.floating) or np.issubdtype(actions.dtype, np.integer)):
            raise TypeError(f"actions must be a real numeric array, got dtype {actions.dtype}")
        actions = np.ascontiguousarray(actions, dtype=np.float32)  # copies only if the dtype or layout differ
        if not actions.flags.writeable:  # torch cannot share read-only memory
            actions = actions.copy()
        return torch.as_tensor(actions, device=self.env.device)

    @staticmethod
    def _numpy(tensor: torch.Tensor, dtype=np.float32) -> np.ndarray:
        """A fresh NumPy copy, so that callers may modify it without touching the env's state."""
        return tensor.detach().cpu().numpy().astype(dtype)  # astype copies

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.env).__name__}, num_envs={self.num_envs})"
