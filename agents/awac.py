"""Advantage-Weighted Actor-Critic (AWAC) with a tanh-squashed Gaussian-mixture actor, as used by MB2PO.

TorchRL has no AWAC loss; :class:`AWACLoss` is one in TorchRL's style (a :class:`~torchrl.objectives.LossModule`
with renamable keys and functional, vmapped critics), and :class:`AWAC` owns the networks and optimisers around it
the way :class:`~cmbrl.agents.sac.SAC` does.

Reference: Nair et al., "AWAC: Accelerating Online Reinforcement Learning with Offline Datasets", arXiv:2006.09359
(Eq. 13 for the actor update); Wang et al., "Critic Regularized Regression", arXiv:2006.15134 (CRR-exp, the clamped
weight); Villaflor et al., "Model-Based Behavior-Regularized Policy Optimization" (MB2PO, OpenReview wiSgdeJ29ee,
§4.2: weight clamp 20, tanh-squashed 5-component Gaussian-mixture policy); Chen et al., "Randomized Ensembled Double
Q-Learning", arXiv:2101.05982 (REDQ, random target subsets).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import InteractionType, ProbabilisticTensorDictSequential, TensorDictModule, TensorDictParams
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor
from torchrl.objectives import LossModule
from torchrl.objectives.utils import _vmap_func

from ._common import (_ActorCriticLoss, _Learner, check_bounds, check_count, check_dims, check_tau, critic_rows,
                      seeded)
from .distributions import TanhGaussianMixture
from .sac import _ForeachSoftUpdate, _RowChunkedSequential, _TensorDictModule, _ValueOperator, make_sac_actor

__all__ = ["AWAC", "AWACLoss", "MixtureParams", "make_mixture_actor"]

WEIGHTINGS = ("exp_clamp", "batch_softmax")
ACTORS = ("mixture", "tanh_normal")


class MixtureParams(nn.Module):
    """Splits ``x (..., K (1 + 2A))`` into ``logits (..., K)``, ``loc (..., K, A)`` and ``scale (..., K, A)``.

    ``scale = exp(clamp(log σ, log_std_min, log_std_max))`` with an unbounded mean, as the SAC head
    (:class:`~cmbrl.agents.sac.ClampedLogStdNormalParams`); weights, means and scales all depend on the state.
    Parameter-free.
    """

    def __init__(self, num_components: int, action_dim: int, log_std_min: float = -5.0,
                 log_std_max: float = 2.0) -> None:
        super().__init__()
        if not log_std_min < log_std_max:
            raise ValueError(f"log_std_min must be < log_std_max, got {log_std_min}, {log_std_max}")
        self.num_components, self.action_dim = num_components, action_dim
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k, a = self.num_components, self.action_dim
        logits, params = x.split([k, 2 * k * a], -1)
        loc, log_std = params.unflatten(-1, (k, 2, a)).unbind(-2)
        return logits, loc, log_std.clamp(self.log_std_min, self.log_std_max).exp()

    def extra_repr(self) -> str:
        return (f"num_components={self.num_components}, action_dim={self.action_dim}, "
                f"log_std_min={self.log_std_min}, log_std_max={self.log_std_max}")


def make_mixture_actor(
    observation_dim: int,
    action_dim: int,
    hidden_sizes: Sequence[int] = (256, 256, 256),
    num_components: int = 5,
    action_low: float | torch.Tensor = -1.0,
    action_high: float | torch.Tensor = 1.0,
    log_std_min: float = -5.0,
    log_std_max: float = 2.0,
) -> ProbabilisticActor:
    """Builds a tanh-squashed Gaussian-mixture actor reading ``"observation"`` and writing ``"action"``.

    One ReLU MLP trunk outputs, per state, the ``K`` mixture logits and the ``K`` means and log-scales
    (:class:`MixtureParams`); the distribution is :class:`~cmbrl.agents.distributions.TanhGaussianMixture`.

    Args:
        observation_dim: ``O``.
        action_dim: ``A``.
        hidden_sizes: widths of the ReLU hidden layers. Default ``(256, 256, 256)`` (CORL's AWAC actor, 3 x 256;
            MB2PO does not state its architecture).
        num_components: ``K``. Default 5 (MB2PO §4.2).
        action_low, action_high: action bounds, scalar or ``(A,)``. Default ``[-1, 1]``.
        log_std_min, log_std_max: bounds of each component's log σ (nats). Default ``-5, 2`` (as the SAC actor;
            OfflineRL-Kit, CleanRL).

    Returns:
        A TorchRL :class:`~torchrl.modules.ProbabilisticActor` (``"observation" (B, O) -> "action" (B, A)``, also
        writing ``"logits" (B, K)``, ``"loc"`` and ``"scale" (B, K, A)``). It samples by default
        (``default_interaction_type=RANDOM``); under ``set_exploration_type(ExplorationType.DETERMINISTIC)`` it
        returns the squashed mean of the heaviest component.

    Raises:
        ValueError: for non-positive sizes, ``log_std_min >= log_std_max`` or bad action bounds.
    """
    check_dims(observation_dim, action_dim)
    if num_components < 1:
        raise ValueError(f"num_components must be >= 1, got {num_components}")
    low, high = check_bounds(action_dim, action_low, action_high)
    net = _RowChunkedSequential(
        MLP(in_features=observation_dim, out_features=num_components * (1 + 2 * action_dim),
            num_cells=list(hidden_sizes), activation_class=nn.ReLU),
        MixtureParams(num_components, action_dim, log_std_min, log_std_max),
    )
    module = _TensorDictModule(net, in_keys=["observation"], out_keys=["logits", "loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["logits", "loc", "scale"],
        spec=Bounded(low=low, high=high, shape=(action_dim,)),
        distribution_class=TanhGaussianMixture,
        distribution_kwargs={"low": low, "high": high},
        return_log_prob=False,
        default_interaction_type=InteractionType.RANDOM,
    )


class AWACLoss(_ActorCriticLoss, LossModule):
    r"""AWAC loss: clipped double-Q TD learning plus advantage-weighted maximum likelihood for the actor.

    Nair et al., "AWAC: Accelerating Online Reinforcement Learning with Offline Datasets",
    https://arxiv.org/abs/2006.09359 (also CRR-exp, arXiv:2006.15134). TorchRL ships no AWAC loss; this one follows
    :class:`~torchrl.objectives.SACLoss`'s layout: the critics are held as one set of stacked functional parameters
    (``convert_to_functional(..., expand_dim=num_qvalue_nets, create_target_params=True)``), target critics are
    updated by a :class:`~torchrl.objectives.SoftUpdate` built on this loss, keys are renamable with
    :meth:`set_keys`, and the loss owns no optimiser.

    For a batch of transitions ``(s, a, r, s')`` (``a`` the batch's own actions):

    * critic: ``y = r + γ (1 - terminated) min_{j ∈ S} Q'_j(s', a')`` with ``a' ~ π(·|s')``, no entropy term,
      ``S`` all target critics or (``target_subset_size = M``) a fresh random subset of ``M`` of them per call
      (REDQ, arXiv:2101.05982); only ``terminated`` stops bootstrapping, so truncated transitions bootstrap.
      ``loss_qvalue = Σ_j mean_B (Q_j(s, a) - y)²`` (CORL's ``q1_loss + q2_loss``; SACLoss ``"l2"``).
    * actor: ``A(s, a) = min_j Q_j(s, a) - (1/n) Σ_{i≤n} min_j Q_j(s, a'_i)`` with ``a'_i ~ π(·|s)``
      (``n = num_action_samples``), all without gradients, and ``loss_actor = -mean_B[w(s, a) log π(a|s)]`` with
      ``w = min(exp(A / temperature), max_weight)`` (``"exp_clamp"``: CORL, MB2PO) or
      ``w = B softmax_B(A / temperature)`` (``"batch_softmax"``: rlkit's ``normalize_over_batch``, d3rlpy).

    The actor loss sends gradients only to the actor, the critic loss only to the critics. Both read the critics
    as they are before the step (rlkit's order; CORL steps the critics first and computes the advantage with the
    updated ones).

    Args:
        actor_network: a probabilistic actor (``get_dist``) reading observations, e.g. :func:`make_mixture_actor`.
        qvalue_network: a critic ``(observation, action) -> (..., 1)``, or a list of ``num_qvalue_nets`` critics of
            one architecture (independently initialised; a single module is expanded and resampled as in SACLoss).
        num_qvalue_nets: ``N``, number of critics. Default 2 (clipped double Q).
        gamma: discount. Default 0.99 (CORL, rlkit, d3rlpy). A constructor argument rather than a value
            estimator: the AWAC target is always the one-step target above.
        temperature: ``λ`` (β in rlkit) in the weight. Default ``1/3`` (CORL's gym-mujoco configs, 0.3333;
            CORL uses 0.1 on AntMaze/Adroit; rlkit MuJoCo 2 or 1, hand 0.5; d3rlpy 1.0).
        weight: ``"exp_clamp"`` (default) or ``"batch_softmax"``.
        max_weight: clamp of ``exp(A / temperature)``, or ``None`` for none; used by ``"exp_clamp"`` only.
            Default 20 (MB2PO §4.2, following CRR; CORL uses 100).
        num_action_samples: ``n`` policy samples per state for the value baseline. Default 1 (CORL, rlkit, d3rlpy).
        target_subset_size: ``M`` target critics to take the min over, drawn anew each call, or ``None`` for all
            ``N`` (default).

    Raises:
        ValueError: for arguments outside the ranges above (the message names the value received and the allowed
            range or names).

    Input tensordict (shape ``(*B)``; default key names, renamable with :meth:`set_keys`): the actor's and critics'
    observation keys and the same under ``"next"``, ``action (*B, A)``, ``("next", "reward") (*B, 1)`` and
    ``("next", "terminated") (*B, 1)``. ``done`` is accepted as a key for compatibility with other TorchRL losses but
    not read. The per-sample TD error ``max_j |Q_j(s, a) - y|`` is written in place under ``priority``
    (``"td_error"``), as SACLoss does.

    Returns (from :meth:`forward`): a TensorDict with no batch dimension holding ``loss_actor``, ``loss_qvalue``
    and the detached diagnostics ``advantage`` (mean ``A``, reward units), ``weight_mean``, ``weight_max``,
    ``q_data`` (mean ``min_j Q_j(s, a)``) and ``log_prob`` (mean ``log π(a|s)`` of the batch's actions, nats).

    Examples:
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl.objectives import SoftUpdate
        >>> actor = make_mixture_actor(3, 2, hidden_sizes=(16,))
        >>> critics = [ValueOperator(MLP(in_features=5, out_features=1, num_cells=[16]), ["observation", "action"])
        ...            for _ in range(2)]
        >>> loss = AWACLoss(actor, critics)
        >>> target_updater = SoftUpdate(loss, tau=0.005)  # call target_updater.step() after each optimiser step
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(8, 3), "reward": torch.randn(8, 1),
        ...              "terminated": torch.zeros(8, 1, dtype=torch.bool),
        ...              "done": torch.zeros(8, 1, dtype=torch.bool)}}, batch_size=[8])
        >>> sorted(loss(batch).keys())
        ['advantage', 'log_prob', 'loss_actor', 'loss_qvalue', 'q_data', 'weight_max', 'weight_mean']
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys, renamable with ``set_keys``.

        Attributes:
            action: the batch's actions. Default ``"action"``.
            reward: reward, read under ``"next"``. Default ``"reward"``.
            done: accepted for compatibility, not read. Default ``"done"``.
            terminated: termination flag, read under ``"next"``; only it stops bootstrapping. Default
                ``"terminated"``.
            priority: where the per-sample TD error is written. Default ``"td_error"``.
        """

        action: NestedKey = "action"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority: NestedKey = "td_error"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    actor_network: ProbabilisticTensorDictSequential
    qvalue_network: TensorDictModule
    actor_network_params: TensorDictParams
    qvalue_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | Sequence[TensorDictModule],
        *,
        num_qvalue_nets: int = 2,
        gamma: float = 0.99,
        temperature: float = 1 / 3,
        weight: str = "exp_clamp",
        max_weight: float | None = 20.0,
        num_action_samples: int = 1,
        target_subset_size: int | None = None,
    ) -> None:
        check_count("num_qvalue_nets", num_qvalue_nets)
        if isinstance(qvalue_network, Sequence) and len(qvalue_network) != num_qvalue_nets:
            raise ValueError(f"got {len(qvalue_network)} critics for num_qvalue_nets={num_qvalue_nets}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if weight not in WEIGHTINGS:
            raise ValueError(f"weight must be one of {WEIGHTINGS}, got {weight!r}")
        if max_weight is not None and not max_weight > 0:
            raise ValueError(f"max_weight must be positive or None, got {max_weight!r}")
        check_count("num_action_samples", num_action_samples)
        if target_subset_size is not None and (not isinstance(target_subset_size, int)
                                               or not 1 <= target_subset_size <= num_qvalue_nets):
            raise ValueError(f"target_subset_size must be None or an integer in [1, num_qvalue_nets="
                             f"{num_qvalue_nets}], got {target_subset_size!r}")
        super().__init__()
        self.convert_to_functional(actor_network, "actor_network")
        self.convert_to_functional(qvalue_network if isinstance(qvalue_network, TensorDictModule)
                                   else list(qvalue_network), "qvalue_network", num_qvalue_nets,
                                   create_target_params=True)
        self.num_qvalue_nets, self.gamma, self.temperature = num_qvalue_nets, float(gamma), float(temperature)
        self.weight, self.num_action_samples = weight, num_action_samples
        self.max_weight = None if max_weight is None else float(max_weight)
        self.target_subset_size = target_subset_size
        self._init_fast_paths()
        self._vmap_qnetwork = _vmap_func(self.qvalue_network, (None, 0), randomness=self.vmap_randomness)

    @property
    def in_keys(self) -> list[NestedKey]:  # noqa: D102
        return self._transition_in_keys()

    @property
    def out_keys(self) -> list[str]:  # noqa: D102
        return ["loss_actor", "loss_qvalue", "advantage", "weight_mean", "weight_max", "q_data", "log_prob"]

    def _dist(self, tensordict: TensorDictBase):
        """The actor's distribution at the states of ``tensordict`` (read-only: works on a shallow selection)."""
        td = tensordict.select(*self.actor_network.in_keys, strict=False)
        if self._actor_shared:  # the usual case (convert_to_functional shares the tensors): skip to_module (~0.2 ms)
            return self.actor_network.get_dist(td)
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            return self.actor_network.get_dist(td)

    def qvalues(self, tensordict: TensorDictBase, action: torch.Tensor, params: TensorDictBase,
                subset: torch.Tensor | None = None) -> torch.Tensor:
        """``Q_j(s, action)`` for each critic ``j`` of ``params`` (or of ``params[subset]``).

        Args:
            tensordict: holds the critics' observation inputs, shape ``(*B)``.
            action: ``(*S, *B, A)`` actions; observations are broadcast over the leading ``S`` dimensions.
            params: ``qvalue_network_params`` or ``target_qvalue_network_params`` (leading dimension ``N``).
            subset: optional ``(M,)`` indices of the critics to evaluate.

        Returns:
            ``(N, *S, *B)`` (or ``(M, *S, *B)``) Q-values (reward units).
        """
        batch = action.shape[:-1]
        action_key = self.tensor_keys.action
        if action_key not in self.qvalue_network.in_keys:
            raise ValueError(f"the action key {action_key!r} is not among the critics' in_keys "
                             f"{self.qvalue_network.in_keys}")
        inputs = [action if key == action_key else tensordict.get(key) for key in self.qvalue_network.in_keys]
        inputs = [x.expand(*batch, x.shape[-1]) for x in inputs]
        if self._plan is None:  # any critic architecture: TorchRL's vmap over the functional parameters
            if subset is not None:
                params = params[subset]
            td = TensorDict(dict(zip(self.qvalue_network.in_keys, inputs)), batch_size=batch)
            return self._vmap_qnetwork(td, params).get(self.qvalue_network.out_keys[0]).squeeze(-1)
        # MLP critics: one batched matmul per layer over the stacked (N, out, in) weights
        q = self._stacked_qvalues(critic_rows(inputs), params, subset)
        return q.reshape(q.shape[0], *batch)

    def _target(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The critics' regression target ``y (*B)`` (no gradients)."""
        next_td = tensordict.get("next")
        with torch.no_grad():
            next_action = self._dist(next_td).sample()
            subset = None
            if self.target_subset_size is not None and self.target_subset_size < self.num_qvalue_nets:
                subset = torch.randperm(self.num_qvalue_nets, device=next_action.device)[:self.target_subset_size]
            next_value = self.qvalues(next_td, next_action, self.target_qvalue_network_params, subset).min(0)[0]
            return self._one_step_target(next_td, next_value)

    def _weights(self, advantage: torch.Tensor) -> torch.Tensor:
        """AWAC weights ``w(s, a)`` from advantages ``(*B)`` (no gradients)."""
        scaled = advantage / self.temperature
        if self.weight == "batch_softmax":
            return scaled.numel() * torch.softmax(scaled.reshape(-1), 0).reshape(scaled.shape)
        if self.max_weight is not None:  # exp(min(x, log c)) = min(exp(x), c), without overflowing to inf
            scaled = scaled.clamp(max=math.log(self.max_weight))
        return scaled.exp()

    def _critic_losses(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """``loss_qvalue`` and the detached ``q_data`` (mean ``min_j Q_j(s, a)``) without the actor's loss: a
        critic-only step (REDQ's extra critic updates, :meth:`AWAC.update_critic`). The same target and Bellman loss
        as :meth:`_losses` (a fresh random target subset per call)."""
        action = tensordict.get(self.tensor_keys.action)
        target = self._target(tensordict)
        q_data = self.qvalues(tensordict, action, self.qvalue_network_params)
        loss_qvalue = self._bellman_loss(tensordict, q_data, target)  # also writes the priority
        return loss_qvalue, q_data.detach().min(0)[0].mean()

    def _losses(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, ...]:
        """``loss_actor, loss_qvalue`` and the five diagnostics of :meth:`forward` as tensors (no TensorDict)."""
        action = tensordict.get(self.tensor_keys.action)
        target = self._target(tensordict)
        q_data = self.qvalues(tensordict, action, self.qvalue_network_params)  # (N, *B), grads to the critics
        loss_qvalue = self._bellman_loss(tensordict, q_data, target)  # also writes the priority
        dist = self._dist(tensordict)
        log_prob = dist.log_prob(action)  # (*B), grads to the actor
        with torch.no_grad():
            q_data = q_data.min(0)[0]
            sampled = dist.sample((self.num_action_samples,))  # (n, *B, A)
            value = self.qvalues(tensordict, sampled, self.qvalue_network_params).min(0)[0].mean(0)
            advantage = q_data - value
            weights = self._weights(advantage)
        loss_actor = -(log_prob * weights).mean()
        return (loss_actor, loss_qvalue, advantage.mean(), weights.mean(), weights.max(), q_data.mean(),
                log_prob.detach().mean())


class AWAC(_Learner, nn.Module):
    """AWAC with a tanh-squashed Gaussian-mixture actor (MB2PO) or a tanh-Gaussian actor, and twin critics.

    The learning rule is :class:`AWACLoss` (clipped double-Q TD learning without entropy; advantage-weighted log
    likelihood of the batch's actions) and a soft target update (:class:`~torchrl.objectives.SoftUpdate` run as one
    foreach op); this class owns the networks and the two Adam optimisers so that an example reads
    ``metrics = agent.update(batch)``. One update runs one backward pass over ``loss_actor + loss_qvalue`` (their
    parameters are disjoint), then both Adams (``foreach``), then the target update.

    Cost (``benchmarks/awac_step.py``: O=11, A=3, batch 256, the defaults, one CPU thread, process CPU time, medians
    of 5 interleaved blocks of 300 steps, measured on a 2-core machine busy with two other training processes):
    20.0 ms per update against 18.9 ms for a plain-torch step doing the same work (same metrics to the last bit),
    ratio floor/cmbrl 0.94. The critics skip TorchRL's vmap for MLPs (see :meth:`AWACLoss.qvalues`) and the actor
    skips the parameter swap when the loss's actor parameters are the actor's own; what remains (~1 ms) is
    tensordict's per-call overhead in the actor (``get_dist``) and the distribution objects.

    Defaults: AWAC as in CORL's ``algorithms/offline/awac.py`` with its gym-mujoco configs (3 x 256 ReLU actor and
    critics, Adam 3e-4 for both, γ 0.99, τ 0.005, λ = 1/3, one policy sample for the baseline) with MB2PO's choices
    (5-component tanh-squashed mixture actor, weight clamp 20 instead of CORL's 100). MB2PO gives no architecture
    or λ in the text available here; CORL is the tuned open implementation of the same update.

    Args:
        observation_dim: ``O``.
        action_dim: ``A``.
        action_low, action_high: action bounds, scalar or ``(A,)``. Default ``[-1, 1]``.
        actor: ``"mixture"`` (default; :func:`make_mixture_actor`, MB2PO) or ``"tanh_normal"``
            (:func:`~cmbrl.agents.sac.make_sac_actor`, one tanh-squashed Gaussian).
        num_components: ``K`` for the mixture actor. Default 5 (MB2PO §4.2).
        hidden_sizes: hidden widths of the critics. Default ``(256, 256, 256)`` (CORL; rlkit and d3rlpy use
            ``(256, 256)``).
        actor_hidden_sizes: hidden widths of the actor. Default ``(256, 256, 256)`` (CORL; rlkit MuJoCo
            ``[256] * 4``; d3rlpy ``(256, 256)``).
        log_std_min, log_std_max: bounds on the actor's log σ (nats). Default ``-5, 2`` (as :class:`SAC`; CORL
            clamps a state-independent log σ to ``[-20, 2]``, rlkit and d3rlpy to ``[-6, 0]``).
        actor_lr, critic_lr: Adam learning rates. Default ``3e-4`` both (CORL, rlkit, d3rlpy).
        gamma: discount. Default 0.99.
        tau: soft target-update rate, ``target <- (1 - tau) target + tau online`` each update. Default 0.005.
        temperature, weight, max_weight, num_action_samples, num_qvalue_nets, target_subset_size: see
            :class:`AWACLoss` (defaults ``1/3``, ``"exp_clamp"``, 20, 1, 2, ``None``).
        seed: if given, the network initialisation is seeded (the global RNG is left untouched). Sampling in
            :meth:`update` uses the global RNG.
        device: where every tensor of the learner lives (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a
            :class:`torch.device`, see :func:`~cmbrl.components.devices.resolve_device`); the same seed gives the
            same initial weights on every device (drawn on the CPU, then moved). Default ``"cpu"``. Read back as
            :attr:`device`. See :class:`~cmbrl.agents.SAC` for batches on other devices and checkpoints
            (``torch.load(path, map_location=agent.device)``).
        compile: ``False`` (default, eager), ``True`` (``torch.compile``, inductor's default mode), a mode string
            or a dict of ``torch.compile`` keyword arguments (``{"backend": "aot_eager"}``): the whole update is one
            compiled function, as :class:`~cmbrl.agents.SAC`'s.
        cudagraphs: capture the update in a CUDA graph (CUDA only; ``capturable`` Adams; fixed batch size).
            Default ``False``.

    Raises:
        ValueError: a device this machine lacks, ``cudagraphs=True`` off CUDA, a bad ``compile``, an unknown ``actor``,
            non-positive sizes, ``tau`` outside ``(0, 1]``, bad bounds, or any :class:`AWACLoss` argument outside its
            range.

    Batches given to :meth:`update` are TensorDicts of shape ``(B,)`` with TorchRL's keys: ``"observation" (B, O)``,
    ``"action" (B, A)``, ``("next", "observation") (B, O)``, ``("next", "reward") (B, 1)``,
    ``("next", "terminated") (B, 1)`` and ``("next", "done") (B, 1)``. Truncated transitions bootstrap. Dataset
    actions may lie exactly on the bounds (their log-density is finite, see
    :class:`~cmbrl.agents.distributions.TanhGaussianMixture`).

    Reference: Nair et al., arXiv:2006.09359; Villaflor et al., MB2PO (OpenReview wiSgdeJ29ee), §4.2; Tarasov et al.,
    CORL, arXiv:2210.07105; rlkit (``rlkit/torch/sac/awac_trainer.py``); d3rlpy (``d3rlpy/algos/qlearning/awac.py``).

    Examples:
        >>> agent = AWAC(observation_dim=3, action_dim=2, hidden_sizes=(32, 32), actor_hidden_sizes=(32, 32), seed=0)
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(8, 3), "reward": torch.randn(8, 1),
        ...              "terminated": torch.zeros(8, 1, dtype=torch.bool),
        ...              "done": torch.zeros(8, 1, dtype=torch.bool)}}, batch_size=[8])
        >>> sorted(agent.update(batch))
        ['advantage', 'log_prob', 'loss_actor', 'loss_qvalue', 'q_data', 'weight_max', 'weight_mean']
    """

    OPTIMIZERS = ("actor_optim", "critic_optim")
    METRICS = ("loss_actor", "loss_qvalue", "advantage", "weight_mean", "weight_max", "q_data", "log_prob")
    CRITIC_METRICS = ("loss_qvalue", "q_data")

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        action_low: float | torch.Tensor = -1.0,
        action_high: float | torch.Tensor = 1.0,
        actor: str = "mixture",
        num_components: int = 5,
        hidden_sizes: Sequence[int] = (256, 256, 256),
        actor_hidden_sizes: Sequence[int] = (256, 256, 256),
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        temperature: float = 1 / 3,
        weight: str = "exp_clamp",
        max_weight: float | None = 20.0,
        num_action_samples: int = 1,
        num_qvalue_nets: int = 2,
        target_subset_size: int | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        compile: bool | str | dict = False,
        cudagraphs: bool = False,
    ) -> None:
        super().__init__()
        check_dims(observation_dim, action_dim)
        self._init_device(device, compile, cudagraphs)
        if actor not in ACTORS:
            raise ValueError(f"actor must be one of {ACTORS}, got {actor!r}")
        check_tau(tau)
        check_count("num_qvalue_nets", num_qvalue_nets)
        low, high = check_bounds(action_dim, action_low, action_high)
        self.observation_dim, self.action_dim = observation_dim, action_dim
        with seeded(seed):
            if actor == "mixture":
                self.policy = make_mixture_actor(observation_dim, action_dim, actor_hidden_sizes, num_components,
                                                 low, high, log_std_min, log_std_max)
            else:
                self.policy = make_sac_actor(observation_dim, action_dim, actor_hidden_sizes, low, high,
                                             log_std_bounds=(log_std_min, log_std_max))
            critics = [_ValueOperator(MLP(in_features=observation_dim + action_dim, out_features=1,
                                          num_cells=list(hidden_sizes), activation_class=nn.ReLU),
                                      in_keys=["observation", "action"]) for _ in range(num_qvalue_nets)]
            self.loss_module = AWACLoss(
                self.policy, critics, num_qvalue_nets=num_qvalue_nets, gamma=gamma, temperature=temperature,
                weight=weight, max_weight=max_weight, num_action_samples=num_action_samples,
                target_subset_size=target_subset_size)
        self._place()  # onto the device before the target updater and the optimisers read the parameters
        self.target_updater = _ForeachSoftUpdate(self.loss_module, tau=tau)
        self._make_optimizers(actor_lr, critic_lr)

    def update(self, batch: TensorDictBase, sync: bool = True) -> dict[str, float] | dict[str, torch.Tensor]:
        """One gradient step on actor and critics, then a soft target update.

        Args:
            batch: transitions, shape ``(B,)`` (see the class docstring for keys), best already on :attr:`device`
                (else moved there once per call). ``"td_error" (B,)`` is written into it (the priority key of
                :class:`AWACLoss`; into the moved copy when it was elsewhere).
            sync: ``True``: floats (one device-to-host copy); ``False``: detached 0-d tensors on :attr:`device`
                without a synchronisation.

        Returns:
            Floats (or 0-d tensors): ``loss_actor``, ``loss_qvalue`` (sum over critics of the mean squared TD error,
            squared reward units), ``advantage`` (mean ``A(s, a)``, reward units), ``weight_mean``, ``weight_max``,
            ``q_data`` (mean ``min_j Q_j(s, a)``) and ``log_prob`` (mean ``log π(a|s)`` of the batch's actions, nats).

        Raises:
            KeyError: the batch lacks a key the update reads (a ``MissingKeysError`` naming the missing keys,
                every expected entry and its shape, and the batch's keys).
            ValueError: an entry's last dimension is not the expected one (``O``, ``A`` or 1).
            TypeError: ``batch`` is not a TensorDict, or an observation, action or reward is not floating point.
        """
        return self._run(batch, sync)

    def update_critic(self, batch: TensorDictBase, sync: bool = True) -> dict[str, float] | dict[str, torch.Tensor]:
        """One gradient step on the critics only (the actor is left as it is), then the soft target update.

        With :meth:`update`, this gives REDQ's update-to-data split (Chen et al., arXiv:2101.05982, Algorithm 1):
        per environment step, ``G - 1`` calls of ``update_critic`` then one :meth:`update` make ``G`` critic updates,
        each on its own minibatch with a fresh random target subset (``target_subset_size``), and one actor update;
        O3F §6 trains its 5 critics this way with ``G = 20`` ("update the critic 20 times per environment step").

        Args:
            batch: transitions as for :meth:`update` (same keys, shapes and devices).
            sync: as for :meth:`update`.

        Returns:
            ``loss_qvalue`` (sum over critics of the mean squared TD error, squared reward units) and ``q_data``
            (mean ``min_j Q_j(s, a)``, reward units), floats or 0-d tensors.

        Raises:
            KeyError, ValueError, TypeError: as :meth:`update`.
        """
        return self._run(batch, sync, part="critic")

    def _critic_loss_and_metrics(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        loss_qvalue, q_data = self.loss_module._critic_losses(batch)
        return loss_qvalue, torch.stack([loss_qvalue.detach(), q_data])

    def _loss_and_metrics(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        values = self.loss_module._losses(batch)  # forward() without building the output TensorDict
        return values[0] + values[1], torch.stack([v.detach() for v in values])

