"""Behaviour cloning as a small component on top of TorchRL's :class:`~torchrl.objectives.BCLoss`.

The reference row of offline RL tables: a deterministic policy regressed onto the dataset's actions with a mean
squared error, no value function. Defaults follow CORL's ``any_percent_bc.py`` (the BC row of its D4RL tables):
256x256 ReLU MLP, tanh scaled to the action bounds, Adam 3e-4, batch 256, observations standardised with dataset
statistics.

Reference: Pomerleau, "Efficient Training of Artificial Neural Networks for Autonomous Navigation", Neural
Computation 1991 (behaviour cloning); Fu et al., "D4RL", arXiv:2004.07219 (BC as the offline RL baseline);
Tarasov et al., "CORL: Research-oriented Deep Offline Reinforcement Learning Library", arXiv:2210.07105.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, Actor
from torchrl.objectives import BCLoss

from cmbrl.components.devices import check_compile_options, compile_step, resolve_device

from ._common import (MissingKeysError, _optimizer_state_to, _without_fullgraph, move_policy_extras,
                      on_device)

__all__ = ["BC"]


class _Standardize(nn.Module):
    """``(observation - mean) / std`` with the statistics as buffers, so they travel with the state dict."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return (observation - self.mean) / self.std


class _ScaledTanh(nn.Module):
    """``center + half_width * tanh(x)``: maps the real line onto the open box ``(low, high)``."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("center", (high + low) / 2)
        self.register_buffer("half_width", (high - low) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.center + self.half_width * torch.tanh(x)


def _vector(name: str, value: float | Sequence[float] | np.ndarray | torch.Tensor | None, size: int,
            default: float) -> torch.Tensor:
    """A float32 ``(size,)`` tensor from a scalar or a ``(size,)`` array; raises ValueError otherwise."""
    tensor = torch.as_tensor(default if value is None else value, dtype=torch.float32)
    if tensor.ndim > 1 or (tensor.ndim == 1 and tensor.shape[0] != size):
        raise ValueError(f"{name} must be a scalar or have shape ({size},), got shape {tuple(tensor.shape)}.")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite, got {tensor.tolist()}.")
    return tensor.expand(size).clone()


class BC(nn.Module):
    """Deterministic behaviour cloning: ``min_θ E_(s, a)~D ||π_θ(s) - a||²`` with TorchRL's ``BCLoss``.

    The policy is ``observation (B, O) -> standardise -> MLP -> tanh -> scale to [action_low, action_high]
    -> "action" (B, A)``, a TorchRL :class:`~torchrl.modules.Actor`. The loss is
    :class:`~torchrl.objectives.BCLoss` with ``loss_function="mse"``: the squared error averaged over the batch and
    the action dimensions (so it is in squared action units per dimension, as ``F.mse_loss`` in CORL and TD3+BC).
    This class owns the policy and its Adam optimiser, so that an example reads ``metrics = agent.update(batch)``.

    Args:
        observation_dim: ``O``, size of the observation vector.
        action_dim: ``A``, size of the action vector.
        action_low, action_high: action bounds, scalar or ``(A,)``, ``low < high``. Default ``[-1, 1]`` (MuJoCo
            locomotion). Actions stay within the bounds (tanh); dataset actions on a bound are only approached, as
            the tanh saturates.
        observation_mean, observation_std: ``(O,)`` statistics the policy standardises observations with, e.g. the
            dataset's mean and ``std + 1e-3`` (CORL). Default ``None``: mean 0 and std 1 (no standardisation). They
            are buffers of the policy, saved in :meth:`state_dict`; the policy always takes raw observations.
        hidden_sizes: widths of the ReLU hidden layers. Default ``(256, 256)`` (CORL BC, TD3+BC).
        lr: Adam learning rate. Default ``3e-4`` (CORL ``any_percent_bc.py``; also the TD3+BC actor's).
        seed: if given, the network initialisation is seeded (the global RNG is left untouched); the same seed
            gives the same initial weights on every device (drawn on the CPU, then moved).
        device: where the policy, its statistics and bounds, and the Adam state live (``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"auto"`` or a :class:`torch.device`, see
            :func:`~cmbrl.components.devices.resolve_device`). Default ``"cpu"``.
        compile: ``False`` (default, eager), ``True`` (``torch.compile``, inductor's default mode), a mode string
            or a dict of ``torch.compile`` keyword arguments (``{"backend": "aot_eager"}``): the update (loss,
            backward, Adam step) is one compiled function.
        cudagraphs: capture the update in a CUDA graph (CUDA only; ``capturable`` Adam; fixed batch size).
            Default ``False``.

    Attributes:
        policy: the deterministic :class:`~torchrl.modules.Actor` reading ``"observation"`` and writing
            ``"action"``; usable in ``env.rollout(max_steps, agent.policy)``.
        loss_module: the :class:`~torchrl.objectives.BCLoss`; it shares the policy's parameters.
        device: the :class:`torch.device` of every parameter, buffer and optimiser state.

    Devices and checkpoints: :meth:`update` takes batches on any device (moved once per call; the fast path is a
    batch already on :attr:`device`). Load a checkpoint saved on another device with
    ``agent.load_state_dict(torch.load(path, map_location=agent.device))``.

    Batches given to :meth:`update` are TensorDicts of shape ``(B,)`` with ``"observation" (B, O)`` and
    ``"action" (B, A)``, e.g. from :func:`cmbrl.load_dataset`; other keys are ignored.

    Raises:
        ValueError: non-positive dimensions, a bound or statistic of the wrong shape or not finite,
            ``action_low >= action_high`` or ``observation_std <= 0`` in some dimension, a non-positive hidden
            width or a non-positive ``lr``, a device this machine lacks (naming the available ones),
            ``cudagraphs=True`` off CUDA, or a ``compile`` that is not a bool, a mode string or a dict.

    Reference: Pomerleau, Neural Computation 1991 (behaviour cloning); Fu et al., D4RL, arXiv:2004.07219;
    Tarasov et al., CORL, arXiv:2210.07105 (hyperparameters).

    Examples:
        >>> from tensordict import TensorDict
        >>> agent = BC(observation_dim=3, action_dim=2, seed=0)
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1}, [8])
        >>> sorted(agent.update(batch))
        ['loss_bc']
        >>> agent.act(np.zeros(3)).shape
        (2,)
        >>> clone = BC(observation_dim=3, action_dim=2)
        >>> clone.load_state_dict(agent.state_dict())  # weights, normalisation, bounds and Adam state
        >>> bool((clone.act(np.ones(3)) == agent.act(np.ones(3))).all())
        True
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        action_low: float | Sequence[float] | np.ndarray | torch.Tensor = -1.0,
        action_high: float | Sequence[float] | np.ndarray | torch.Tensor = 1.0,
        observation_mean: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        observation_std: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        hidden_sizes: Sequence[int] = (256, 256),
        lr: float = 3e-4,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        compile: bool | str | dict = False,
        cudagraphs: bool = False,
    ) -> None:
        super().__init__()
        self.device = resolve_device(device)
        check_compile_options(self.device, compile, cudagraphs)
        self._compile, self.cudagraphs = compile, bool(cudagraphs)  # not self.compile: nn.Module.compile
        self._compiled_update = None
        if not (isinstance(observation_dim, int) and isinstance(action_dim, int)) or observation_dim <= 0 \
                or action_dim <= 0:
            raise ValueError(
                f"observation_dim and action_dim must be positive ints, got {observation_dim!r}, {action_dim!r}."
            )
        if any(not isinstance(width, int) or width <= 0 for width in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive ints, got {list(hidden_sizes)}.")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        low = _vector("action_low", action_low, action_dim, -1.0)
        high = _vector("action_high", action_high, action_dim, 1.0)
        if not (low < high).all():
            raise ValueError(f"action_low must be below action_high in every dimension, got {low.tolist()} and "
                             f"{high.tolist()}.")
        mean = _vector("observation_mean", observation_mean, observation_dim, 0.0)
        std = _vector("observation_std", observation_std, observation_dim, 1.0)
        if not (std > 0).all():
            raise ValueError(f"observation_std must be positive in every dimension, got {std.tolist()}.")
        self.observation_dim, self.action_dim = observation_dim, action_dim

        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            net = nn.Sequential(
                _Standardize(mean, std),
                MLP(in_features=observation_dim, out_features=action_dim, num_cells=list(hidden_sizes),
                    activation_class=nn.ReLU),
                _ScaledTanh(low, high),
            )
        self.policy = Actor(net, in_keys=["observation"], out_keys=["action"],
                            spec=Bounded(low=low, high=high, shape=(action_dim,)))
        with warnings.catch_warnings():
            # torchrl 0.14.1: BCLoss does not annotate the (unused) target_actor_network_params it sets to None.
            warnings.filterwarnings("ignore", message="The name target_actor_network_params wasn't part")
            self.loss_module = BCLoss(self.policy, loss_function="mse")
        if self.device.type != "cpu":
            self.to(self.device)
            move_policy_extras(self.policy, self.device)
        self.actor_optim = torch.optim.Adam(self.loss_module.actor_network_params.flatten_keys().values(), lr=lr,
                                            capturable=self.cudagraphs)

    def update(self, batch: TensorDictBase, sync: bool = True) -> dict[str, float] | dict[str, torch.Tensor]:
        """One Adam step on the mean squared error between the policy's and the dataset's actions.

        Args:
            batch: TensorDict of shape ``(B,)`` with ``"observation" (B, O)`` and ``"action" (B, A)``, floating
                point (float64 is cast to float32), best already on :attr:`device` (else moved there once).
            sync: ``True``: a float (one device-to-host copy); ``False``: a detached 0-d tensor on :attr:`device`,
                without a synchronisation.

        Returns:
            ``{"loss_bc": float}`` (or a 0-d tensor): the batch's squared error before the step, averaged over
            ``B`` and ``A`` (squared action units).

        Raises:
            KeyError: ``"observation"`` or ``"action"`` is missing (a ``MissingKeysError``, also a ``ValueError``).
            TypeError: ``batch`` is not a TensorDict, or an entry is not floating point.
            ValueError: an entry's shape is not ``(B, O)`` / ``(B, A)`` for the batch's ``B``.
        """
        self._check_batch(batch)
        batch = on_device(batch.select("observation", "action"), self.device)
        if self._compile is False and not self.cudagraphs:
            loss = self._loss(batch)
            self._step(loss)
            loss = loss.detach()
        else:
            if self._compiled_update is None:
                self._compiled_update = self._build_compiled_update()
            loss = self._compiled_update(batch).get("loss_bc")
            if not sync and not self.cudagraphs:
                loss = loss.clone()  # inductor's CUDA-graph modes reuse their output buffers
        return {"loss_bc": float(loss) if sync else loss}

    def _loss(self, batch: TensorDictBase) -> torch.Tensor:
        """The mean squared error on a batch on :attr:`device`."""
        return self.loss_module(batch.float())["loss_bc"]

    def _step(self, loss: torch.Tensor) -> None:
        self.actor_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_optim.step()

    def _build_compiled_update(self):
        """The loss and the Adam step as two compiled functions, the backward between them, the whole captured by
        ``CudaGraphModule`` under ``cudagraphs`` (as :class:`~cmbrl.agents.SAC`'s; ``fullgraph`` for the loss only)."""
        loss_fn = compile_step(self._loss, compile=self._compile)
        step_fn = compile_step(self.actor_optim.step, compile=_without_fullgraph(self._compile))

        def update(batch: TensorDictBase) -> TensorDictBase:
            loss = loss_fn(batch)
            for group in self.actor_optim.param_groups:
                for param in group["params"]:
                    param.grad = None
            loss.backward()
            step_fn()
            return TensorDict({"loss_bc": loss.detach()}, batch_size=[])

        return compile_step(update, compile=False, cudagraphs=self.cudagraphs)

    @torch.no_grad()
    def act(self, observation: np.ndarray) -> np.ndarray:
        """The policy's action for a numpy observation, as Gymnasium passes them.

        Args:
            observation: ``(O,)`` or ``(B, O)``, any real dtype (MuJoCo's float64 is cast to float32).

        Returns:
            float32 array ``(A,)`` or ``(B, A)``, inside ``[action_low, action_high]``.

        Raises:
            ValueError: the last dimension is not ``O`` or the array has more than 2 dimensions.
        """
        observation = np.asarray(observation)
        if observation.ndim not in (1, 2) or observation.shape[-1] != self.observation_dim:
            raise ValueError(f"observation must have shape ({self.observation_dim},) or (B, {self.observation_dim}), "
                             f"got {observation.shape}.")
        tensor = torch.as_tensor(observation, dtype=torch.float32, device=self.device)
        return self.policy.module(tensor).cpu().numpy()

    def _check_batch(self, batch: TensorDictBase) -> None:
        if not isinstance(batch, TensorDictBase):
            raise TypeError(f"batch must be a TensorDict with 'observation' and 'action', got {type(batch).__name__}.")
        missing = [key for key in ("observation", "action") if key not in batch.keys()]
        if missing:
            raise MissingKeysError(f"batch is missing {missing}; expected 'observation' (B, {self.observation_dim}) "
                                   f"and 'action' (B, {self.action_dim}), got keys {sorted(map(str, batch.keys()))}.")
        if batch.batch_dims != 1:
            raise ValueError(f"batch must have batch size (B,), got {tuple(batch.batch_size)}.")
        size = batch.batch_size[0]
        for key, dim in (("observation", self.observation_dim), ("action", self.action_dim)):
            value = batch.get(key)
            if tuple(value.shape) != (size, dim):
                raise ValueError(f"batch '{key}' must have shape (B, {dim}) = ({size}, {dim}), got "
                                 f"{tuple(value.shape)}.")
            if not value.dtype.is_floating_point:
                raise TypeError(f"batch '{key}' must be floating point, got {value.dtype}.")

    def state_dict(self, *args, **kwargs):  # noqa: D102 - adds the optimiser state to the module's
        return {"modules": super().state_dict(*args, **kwargs),
                "optimizers": {"actor_optim": self.actor_optim.state_dict()}}

    def load_state_dict(self, state, strict: bool = True):  # noqa: D102
        super().load_state_dict(state["modules"], strict=strict)  # copies into our tensors
        # torch.optim keeps same-device, same-dtype state tensors by reference: copy, or two agents share Adam moments
        self.actor_optim.load_state_dict(copy.deepcopy(state["optimizers"]["actor_optim"]))
        _optimizer_state_to(self.actor_optim, self.device, self.cudagraphs)
