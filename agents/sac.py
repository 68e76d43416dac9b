"""Soft Actor-Critic as a small component on top of TorchRL's :class:`~torchrl.objectives.SACLoss`.

Reference: Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", arXiv:1812.05905 (automatic entropy
tuning), and "Soft Actor-Critic: Off-Policy Maximum Entropy Deep RL with a Stochastic Actor", arXiv:1801.01290.
"""
from __future__ import annotations

import copy

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate

__all__ = ["SAC", "make_sac_actor"]


class _RowChunkedSequential(nn.Sequential):
    """``nn.Sequential`` that, without grad, runs batches of more than ``chunk_size`` rows chunk by chunk.

    Rolling a policy out over 50,000 model states at once spills its activations out of the CPU cache; chunks of
    4096 rows run ~2.5x faster with identical results. Parameter names are those of ``nn.Sequential``.
    """

    chunk_size = 4096

    def forward(self, x: torch.Tensor):
        if torch.is_grad_enabled() or x.ndim != 2 or x.shape[0] <= self.chunk_size:
            return super().forward(x)
        parts = [super(_RowChunkedSequential, self).forward(chunk) for chunk in x.split(self.chunk_size)]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(outputs) for outputs in zip(*parts))
        return torch.cat(parts)


def make_sac_actor(
    observation_dim: int,
    action_dim: int,
    hidden_sizes: Sequence[int] = (256, 256),
    action_low: float | torch.Tensor = -1.0,
    action_high: float | torch.Tensor = 1.0,
) -> ProbabilisticActor:
    """Builds a tanh-squashed Gaussian actor reading ``"observation"`` and writing ``"action"``.

    Args:
        observation_dim: ``O``, size of the observation vector.
        action_dim: ``A``, size of the action vector.
        hidden_sizes: widths of the ReLU hidden layers. Default ``(256, 256)`` (MOPO / SAC).
        action_low, action_high: action bounds (scalar or ``(A,)``); actions are squashed into them.

    Returns:
        A TorchRL :class:`~torchrl.modules.ProbabilisticActor` (``"observation" (B, O) -> "action" (B, A)``). It
        samples by default (``default_interaction_type=RANDOM``, also outside any exploration context) and returns
        the deterministic action (tanh of the mean) under ``set_exploration_type(ExplorationType.DETERMINISTIC)``.
    """
    low = torch.as_tensor(action_low, dtype=torch.float32).expand(action_dim).clone()
    high = torch.as_tensor(action_high, dtype=torch.float32).expand(action_dim).clone()
    net = _RowChunkedSequential(
        MLP(in_features=observation_dim, out_features=2 * action_dim, num_cells=list(hidden_sizes),
            activation_class=nn.ReLU),
        NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=1e-4),
    )
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        spec=Bounded(low=low, high=high, shape=(action_dim,)),
        distribution_class=TanhNormal,
        distribution_kwargs={"low": low, "high": high},
        return_log_prob=False,
        default_interaction_type=InteractionType.RANDOM,
    )


class SAC(nn.Module):
    """SAC with a tanh-Gaussian actor, twin Q critics and automatic entropy tuning.

    All of the learning rule is TorchRL's :class:`~torchrl.objectives.SACLoss` (v2, no value network) and
    :class:`~torchrl.objectives.SoftUpdate`; this class only owns the networks and the optimisers, so that an
    example reads ``metrics = agent.update(batch)``.

    Args:
        observation_dim: ``O``.
        action_dim: ``A``.
        action_low, action_high: action bounds, scalar or ``(A,)``. Default ``[-1, 1]`` (MuJoCo locomotion).
        hidden_sizes: hidden widths of actor and critics. Default ``(256, 256)`` (MOPO, SAC).
        actor_lr, critic_lr, alpha_lr: Adam learning rates. Default ``3e-4`` each (MOPO).
        gamma: discount. Default 0.99.
        tau: soft target-update rate. Default 0.005.
        target_entropy: ``"auto"`` (``-A``) or a number (nats).
        alpha_init: initial entropy temperature. Default 1.0 (``log α = 0`` as in MOPO).
        num_qvalue_nets: number of critics. Default 2.
        seed: if given, the network initialisation is seeded (the global RNG is left untouched).

    Batches given to :meth:`update` are TensorDicts of shape ``(B,)`` with TorchRL's keys: ``"observation" (B, O)``,
    ``"action" (B, A)``, ``("next", "observation") (B, O)``, ``("next", "reward") (B, 1)``,
    ``("next", "terminated") (B, 1)`` and ``("next", "done") (B, 1)``. Truncated transitions bootstrap.

    Reference: Haarnoja et al., arXiv:1801.01290 and arXiv:1812.05905.

    Examples:
        >>> agent = SAC(observation_dim=3, action_dim=2, seed=0)
        >>> from tensordict import TensorDict
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(8, 3), "reward": torch.randn(8, 1),
        ...              "terminated": torch.zeros(8, 1, dtype=torch.bool),
        ...              "done": torch.zeros(8, 1, dtype=torch.bool)}}, batch_size=[8])
        >>> sorted(agent.update(batch))
        ['alpha', 'entropy', 'loss_actor', 'loss_alpha', 'loss_qvalue']
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        action_low: float | torch.Tensor = -1.0,
        action_high: float | torch.Tensor = 1.0,
        hidden_sizes: Sequence[int] = (256, 256),
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        alpha_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        target_entropy: str | float = "auto",
        alpha_init: float = 1.0,
        num_qvalue_nets: int = 2,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if observation_dim <= 0 or action_dim <= 0:
            raise ValueError(f"observation_dim and action_dim must be positive, got {observation_dim}, {action_dim}")
        self.observation_dim, self.action_dim = observation_dim, action_dim
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.policy = make_sac_actor(observation_dim, action_dim, hidden_sizes, action_low, action_high)
            qnet = MLP(in_features=observation_dim + action_dim, out_features=1, num_cells=list(hidden_sizes),
                       activation_class=nn.ReLU)
            qvalue = ValueOperator(qnet, in_keys=["observation", "action"])
            self.loss_module = SACLoss(
                self.policy, qvalue, num_qvalue_nets=num_qvalue_nets, loss_function="l2",
                alpha_init=alpha_init, target_entropy=target_entropy, action_spec=self.policy.spec["action"],
            )
        self.loss_module.make_value_estimator(gamma=gamma)
        _ = self.loss_module.target_entropy  # registers the lazily-created buffer so state dicts always match
        self.target_updater = SoftUpdate(self.loss_module, tau=tau)
        self.actor_optim = torch.optim.Adam(self.loss_module.actor_network_params.flatten_keys().values(), lr=actor_lr)
        self.critic_optim = torch.optim.Adam(
            self.loss_module.qvalue_network_params.flatten_keys().values(), lr=critic_lr
        )
        self.alpha_optim = torch.optim.Adam([self.loss_module.log_alpha], lr=alpha_lr)

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        """One gradient step on actor, critics and temperature, then a soft target update.

        Args:
            batch: transitions, shape ``(B,)`` (see the class docstring for keys).

        Returns:
            ``loss_actor``, ``loss_qvalue``, ``loss_alpha``, ``alpha`` and ``entropy`` (nats) as floats.
        """
        losses = self.loss_module(batch)
        total = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
        for optim in (self.actor_optim, self.critic_optim, self.alpha_optim):
            optim.zero_grad(set_to_none=True)
        total.backward()
        for optim in (self.actor_optim, self.critic_optim, self.alpha_optim):
            optim.step()
        self.target_updater.step()
        return {key: float(value.detach()) for key, value in losses.items()}

    def state_dict(self, *args, **kwargs):  # noqa: D102 - adds optimiser states to the module's
        state = {"modules": super().state_dict(*args, **kwargs)}
        state["optimizers"] = {name: getattr(self, name).state_dict()
                               for name in ("actor_optim", "critic_optim", "alpha_optim")}
        return state

    def load_state_dict(self, state, strict: bool = True):  # noqa: D102
        super().load_state_dict(state["modules"], strict=strict)
        for name, optim_state in state["optimizers"].items():
            # torch.optim keeps same-device state tensors by reference: copy, or two agents share Adam moments
            getattr(self, name).load_state_dict(copy.deepcopy(optim_state))
