"""Implicit Q-Learning (IQL) as a small component on top of TorchRL's :class:`~torchrl.objectives.IQLLoss`.

Reference: Kostrikov, Nair and Levine, "Offline Reinforcement Learning with Implicit Q-Learning", arXiv:2110.06169
(Eq. 5 expectile value loss, Eq. 6 Q loss, Eq. 7 advantage-weighted actor; Appendix B: τ = 0.7 and β = 3 for the
MuJoCo locomotion tasks, 2 x 256 networks, Adam 3e-4, batch 256, target rate 0.005, exp-advantage clipped at 100,
rewards scaled by ``1000 / (max - min episode return)``); O3F (OpenReview 2x8EKbGU51k) §6: IQL with 5 Q-functions,
trained online "the same way as the original paper" (one critic update per environment step).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import IQLLoss
from torchrl.objectives.utils import ValueEstimators

from ._common import _Learner, check_bounds, check_count, check_dims, check_tau, seeded
from .sac import _ForeachSoftUpdate, make_sac_actor

__all__ = ["IQL", "episode_return_range", "iql_reward_scale"]


def episode_return_range(reward: torch.Tensor, done: torch.Tensor) -> tuple[float, float]:
    """``(min, max)`` undiscounted return over the complete episodes of a flat transition sequence.

    Args:
        reward: ``(T,)`` or ``(T, 1)`` rewards in dataset order.
        done: ``(T,)`` or ``(T, 1)`` boolean episode ends (``terminated | truncated``, TorchRL's ``("next",
            "done")``); a trailing run without an end is not an episode and is left out (IQL's ``split_into_trajectories``
            keeps it: with a flat D4RL-style dataset both give the same range unless the last episode is cut).

    Raises:
        ValueError: shapes that differ, or no complete episode.
    """
    reward, done = reward.reshape(-1).double(), done.reshape(-1).bool()
    if reward.shape != done.shape:
        raise ValueError(f"reward and done must have the same length, got {tuple(reward.shape)} and "
                         f"{tuple(done.shape)}")
    ends = done.nonzero().squeeze(-1)
    if ends.numel() == 0:
        raise ValueError("no complete episode (no done flag) in the data: cannot compute episode returns")
    cumulative = reward.cumsum(0)[ends]
    returns = torch.diff(cumulative, prepend=cumulative.new_zeros(1))
    return float(returns.min()), float(returns.max())


def iql_reward_scale(reward: torch.Tensor, done: torch.Tensor) -> float:
    """IQL's locomotion reward scale, ``1000 / (max - min)`` episode return of the dataset (Kostrikov et al.,
    arXiv:2110.06169, Appendix B; ``train_offline.py``'s ``normalize``). Multiply every reward (dataset and online)
    by it. Raises ValueError as :func:`episode_return_range`, or when every episode has the same return."""
    low, high = episode_return_range(reward, done)
    if not high > low:
        raise ValueError(f"every episode has the same return ({low}): the IQL reward scale 1000 / (max - min) is undefined")
    return 1000.0 / (high - low)


class IQL(_Learner, nn.Module):
    r"""IQL: expectile value regression, a Q regressed onto ``r + γ V(s')``, and an advantage-weighted actor.

    The learning rule is TorchRL's :class:`~torchrl.objectives.IQLLoss` unchanged (``loss_function="l2"``, as IQL):

    * value: ``L_V = E[|τ - 1(u < 0)| u²]``, ``u = min_j Q'_j(s, a) - V(s)`` over the target critics (Eq. 5);
    * critics: ``L_Q = Σ_j E[(Q_j(s, a) - r - γ (1 - terminated) V(s'))²]`` (Eq. 6; ``V`` without a target copy);
    * actor: ``L_π = -E[min(exp(β (min_j Q'_j(s, a) - V(s))), 100) log π(a|s)]`` (Eq. 7).

    This class owns the networks, the three foreach Adams and the soft target update of the critics, so an example
    reads ``metrics = agent.update(batch)`` as with :class:`~cmbrl.agents.AWAC`. One update: one backward over the
    sum of the three losses (their parameters are disjoint; TorchRL's IQL example does the same), the three Adams,
    the target update. :meth:`update_critic` steps the critics and the value only.

    Defaults (IQL, arXiv:2110.06169 Appendix B, MuJoCo locomotion): ``expectile`` τ = 0.7, ``temperature`` β = 3,
    2 x 256 ReLU actor, critics and value, Adam 3e-4 for all three, γ 0.99, τ_target 0.005; ``num_qvalue_nets`` 2
    (O3F §6 uses 5). Differences from the paper, stated: the actor is a tanh-squashed Gaussian with a
    state-dependent σ (:func:`~cmbrl.agents.make_sac_actor`, as TorchRL's IQL example) where IQL uses a Gaussian with
    a tanh mean and a state-independent σ; no cosine decay of the actor's learning rate (IQL decays it over its 1M
    offline steps).

    Args:
        observation_dim: ``O``.
        action_dim: ``A``.
        action_low, action_high: action bounds, scalar or ``(A,)``. Default ``[-1, 1]``.
        hidden_sizes: hidden widths of the critics and the value. Default ``(256, 256)``.
        actor_hidden_sizes: hidden widths of the actor. Default ``(256, 256)``.
        num_qvalue_nets: critics. Default 2.
        expectile: τ of the value's expectile regression, in ``(0, 1)``. Default 0.7.
        temperature: β, the inverse temperature of the actor's weights (TorchRL's ``temperature``), > 0. Default 3.
        actor_lr, critic_lr, value_lr: Adam learning rates. Default ``3e-4``.
        gamma: discount. Default 0.99.
        tau: soft target-update rate of the critics. Default 0.005.
        seed: if given, the network initialisation is seeded (the global RNG is left untouched).
        device, compile, cudagraphs: as :class:`~cmbrl.agents.AWAC`.

    Raises:
        ValueError: a device this machine lacks, ``cudagraphs=True`` off CUDA, a bad ``compile``, non-positive sizes,
            ``expectile`` outside ``(0, 1)``, a non-positive ``temperature``, ``gamma`` outside ``[0, 1]``, ``tau``
            outside ``(0, 1]`` or bad bounds (each message names the value received).

    Batches given to :meth:`update` are TensorDicts of shape ``(B,)`` with TorchRL's keys: ``"observation" (B, O)``,
    ``"action" (B, A)``, ``("next", "observation") (B, O)``, ``("next", "reward") (B, 1)``, ``("next",
    "terminated") (B, 1)`` and ``("next", "done") (B, 1)``; rewards as the learner should see them (IQL scales the
    dataset's, :func:`iql_reward_scale`). ``"td_error"`` and the actor's ``"action_log_prob"`` are written into the
    batch (TorchRL's IQLLoss does).

    Examples:
        >>> from tensordict import TensorDict
        >>> agent = IQL(observation_dim=3, action_dim=2, hidden_sizes=(32, 32), actor_hidden_sizes=(32, 32), seed=0)
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(8, 3), "reward": torch.randn(8, 1),
        ...              "terminated": torch.zeros(8, 1, dtype=torch.bool),
        ...              "done": torch.zeros(8, 1, dtype=torch.bool)}}, batch_size=[8])
        >>> sorted(agent.update(batch))
        ['entropy', 'loss_actor', 'loss_qvalue', 'loss_value']
        >>> sorted(agent.update_critic(batch))
        ['loss_qvalue', 'loss_value']
    """

    OPTIMIZERS = ("actor_optim", "critic_optim", "value_optim")
    METRICS = ("loss_actor", "loss_qvalue", "loss_value", "entropy")
    CRITIC_OPTIMIZERS = ("critic_optim", "value_optim")
    CRITIC_METRICS = ("loss_qvalue", "loss_value")

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        action_low: float | torch.Tensor = -1.0,
        action_high: float | torch.Tensor = 1.0,
        hidden_sizes: Sequence[int] = (256, 256),
        actor_hidden_sizes: Sequence[int] = (256, 256),
        num_qvalue_nets: int = 2,
        expectile: float = 0.7,
        temperature: float = 3.0,
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        value_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        compile: bool | str | dict = False,
        cudagraphs: bool = False,
    ) -> None:
        super().__init__()
        check_dims(observation_dim, action_dim)
        self._init_device(device, compile, cudagraphs)
        check_count("num_qvalue_nets", num_qvalue_nets)
        check_tau(tau)
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"expectile must be in (0, 1), got {expectile!r}")
        if not temperature > 0:
            raise ValueError(f"temperature (β) must be > 0, got {temperature!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        low, high = check_bounds(action_dim, action_low, action_high)
        self.observation_dim, self.action_dim = observation_dim, action_dim
        with seeded(seed):
            self.policy = make_sac_actor(observation_dim, action_dim, actor_hidden_sizes, low, high,
                                         log_std_bounds=(-5.0, 2.0))
            critics = [ValueOperator(MLP(in_features=observation_dim + action_dim, out_features=1,
                                         num_cells=list(hidden_sizes), activation_class=nn.ReLU),
                                     in_keys=["observation", "action"]) for _ in range(num_qvalue_nets)]
            value = ValueOperator(MLP(in_features=observation_dim, out_features=1, num_cells=list(hidden_sizes),
                                      activation_class=nn.ReLU), in_keys=["observation"])
            self.loss_module = IQLLoss(self.policy, critics, value, num_qvalue_nets=num_qvalue_nets,
                                       loss_function="l2", temperature=temperature, expectile=expectile)
        self.loss_module.make_value_estimator(ValueEstimators.TD0, gamma=gamma)
        self.num_qvalue_nets, self.gamma = num_qvalue_nets, float(gamma)
        self._place()
        self.target_updater = _ForeachSoftUpdate(self.loss_module, tau=tau)
        self._make_optimizers(actor_lr, critic_lr)
        self.value_optim = self._adam(self.loss_module.value_network_params.flatten_keys().values(), value_lr)

    def update(self, batch: TensorDictBase, sync: bool = True) -> dict[str, float] | dict[str, torch.Tensor]:
        """One gradient step on the actor, the critics and the value, then the critics' soft target update.

        Args:
            batch: transitions, shape ``(B,)`` (see the class docstring for keys), best already on :attr:`device`.
            sync: ``True``: floats; ``False``: detached 0-d tensors on :attr:`device` without a synchronisation.

        Returns:
            ``loss_actor``, ``loss_qvalue`` (sum over critics of the mean squared error, squared reward units),
            ``loss_value`` (expectile loss, squared reward units) and ``entropy`` (``-mean log π(a|s)`` of the batch's
            actions, nats).

        Raises:
            KeyError: a missing key (``MissingKeysError`` naming every expected entry and the batch's keys).
            ValueError: an entry's last dimension is not ``O``, ``A`` or 1.
            TypeError: ``batch`` is not a TensorDict, or an observation, action or reward is not floating point.
        """
        return self._run(batch, sync)

    def update_critic(self, batch: TensorDictBase, sync: bool = True) -> dict[str, float] | dict[str, torch.Tensor]:
        """One gradient step on the critics and the value only (the actor is left as it is), then the target update:
        the extra critic updates of a critic update-to-data ratio above 1 (see :meth:`AWAC.update_critic
        <cmbrl.agents.AWAC.update_critic>`; O3F found this unstable with IQL and trains IQL's critics once per env
        step). Returns ``loss_qvalue`` and ``loss_value``; raises as :meth:`update`."""
        return self._run(batch, sync, part="critic")

    def _batch_entries(self):
        return (("observation", self.observation_dim, "float"), ("action", self.action_dim, "float"),
                (("next", "observation"), self.observation_dim, "float"), (("next", "reward"), 1, "float"),
                (("next", "terminated"), 1, "flag"), (("next", "done"), 1, "flag"))

    def _loss_and_metrics(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.loss_module(batch)
        values = [out.get(name) for name in self.METRICS]
        return values[0] + values[1] + values[2], torch.stack([v.detach() for v in values])

    def _critic_loss_and_metrics(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        loss_qvalue, metadata = self.loss_module.qvalue_loss(batch)
        loss_value, _ = self.loss_module.value_loss(batch)
        batch.set(self._priority_key, metadata["td_error"].detach().max(0).values)
        return loss_qvalue + loss_value, torch.stack([loss_qvalue.detach(), loss_value.detach()])
