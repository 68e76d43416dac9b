"""Soft Actor-Critic as a small component on top of TorchRL's :class:`~torchrl.objectives.SACLoss`.

Reference: Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", arXiv:1812.05905 (automatic entropy
tuning), and "Soft Actor-Critic: Off-Policy Maximum Entropy Deep RL with a Stochastic Actor", arXiv:1801.01290.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import (InteractionType, NormalParamExtractor, ProbabilisticTensorDictModule,
                           ProbabilisticTensorDictSequential, TensorDictModule)
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.objectives import SACLoss, SoftUpdate
from torchrl.objectives.utils import distance_loss
from torchrl.objectives.value import TD0Estimator
from torchrl.objectives.value.functional import td0_return_estimate

from ._common import _ActorCriticLoss, _Learner, check_dims, critic_rows, seeded

__all__ = ["SAC", "make_sac_actor", "ClampedLogStdNormalParams"]


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


class _DirectWriteMixin:
    """Writes a TensorDictModule's tensor outputs straight into the input tensordict.

    tensordict 0.14's ``TensorDictModule._write_to_tensordict`` passes every output through
    ``TensorDict.from_any``, which for a plain tensor ends in ``importlib.util.find_spec("pandas")``: a file-system
    scan of ``sys.path`` (~70 µs) per output, seven of them in one SAC update. The result is the same tensor set
    under the same key; anything else (``tensordict_out``, non-inplace modules, non-tensor outputs) takes the
    library's path.
    """

    def _write_to_tensordict(self, tensordict, tensors, tensordict_out=None, out_keys=None):
        keys = self.out_keys_source if out_keys is None else out_keys
        if (tensordict_out is None and getattr(self, "inplace", True) is True and len(tensors) == len(keys)
                and all(isinstance(tensor, torch.Tensor) for tensor in tensors)):
            for key, tensor in zip(keys, tensors):
                if key != "_":
                    tensordict.set(key, tensor)
            return tensordict
        return super()._write_to_tensordict(tensordict, tensors, tensordict_out, out_keys)


class _TensorDictModule(_DirectWriteMixin, TensorDictModule):
    """``TensorDictModule`` without the per-output ``from_any`` scan (see :class:`_DirectWriteMixin`)."""


class _ValueOperator(_DirectWriteMixin, ValueOperator):
    """``ValueOperator`` without the per-output ``from_any`` scan (see :class:`_DirectWriteMixin`)."""


class _ForeachSoftUpdate(SoftUpdate):
    """:class:`~torchrl.objectives.SoftUpdate` as one ``torch._foreach_lerp_`` over the parameter leaves.

    ``SoftUpdate.step`` builds a ``.data`` view of every tensordict level per call (~0.5 ms); this collects the
    source and target leaves (same order, checked at construction) and runs the same ``lerp_(source, 1 - eps)``
    on all of them at once: bit-identical target parameters, ~4x less time. The leaves are looked up at each
    step, so parameters replaced after construction (``load_state_dict`` copies in place anyway) are followed.
    """

    def __init__(self, loss_module, *, tau: float) -> None:
        super().__init__(loss_module, tau=tau)
        sources = [key[1:] for key in self._sources.keys(True, True)]
        targets = [key[1:] for key in self._targets.keys(True, True)]
        if sources != targets:  # both tensordicts come from the same structure; guard the pairing anyway
            raise RuntimeError(f"Source and target parameter leaves differ: {sources} vs {targets}")

    @torch.no_grad()
    def step(self) -> None:
        torch._foreach_lerp_(list(self._targets.values(True, True)), list(self._sources.values(True, True)),
                             1 - self.eps)


def _actor_parts(actor: nn.Module):
    """``(network, in_keys, head)`` of an actor ``[TensorDictModule, ProbabilisticTensorDictModule]`` whose network
    outputs are exactly the head's distribution parameters (the actor of :func:`make_sac_actor`), else ``None``."""
    if not isinstance(actor, ProbabilisticTensorDictSequential) or len(actor.module) != 2:
        return None
    body, head = actor.module
    if type(body) not in (TensorDictModule, _TensorDictModule) or not isinstance(head, ProbabilisticTensorDictModule):
        return None
    if list(body.out_keys) != list(head.in_keys):
        return None
    return body.module, list(body.in_keys), head


class _SACLoss(_ActorCriticLoss, SACLoss):
    """TorchRL's :class:`~torchrl.objectives.SACLoss` (v2) whose forward computes its losses on tensors.

    Construction, parameters (functional actor, stacked critics, target critics), ``log α`` and its bounds, the
    target entropy, the value estimator (γ, keys) and the keys are SACLoss's, and so are the terms: :meth:`forward`
    evaluates, in ``SACLoss.forward``'s order (one RNG state draws the same two actions), with SACLoss's own pieces
    (``_alpha``, ``_alpha_loss``, ``distance_loss``, ``td0_return_estimate``, the actor's distribution):

    * the target ``y = TD0(r, terminated, min_j Q'_j(s', a') - α log π(a'|s'))``, ``a' ~ π(·|s')``, no gradient;
    * ``loss_qvalue = mean_B Σ_j distance(Q_j(s, a), y)``, and ``max_j |Q_j(s, a) - y|`` written under the
      priority key;
    * ``loss_actor = mean(α log π(ã|s) - min_j Q_j(s, ã))``, ``ã ~ π(·|s)`` reparameterised, critic weights detached;
    * ``loss_alpha = mean(-log α (log π(ã|s) + target entropy))``, ``alpha`` and ``entropy = -mean log π(ã|s)``.

    What it leaves out is SACLoss's per-call machinery, ~4 ms of a ~20 ms update at 256x256 networks and batch
    256 on one CPU thread (``benchmarks/sac_step.py``):

    * the stacked MLP critics run as one ``baddbmm`` per layer over their ``(N, out, in)`` weights: what SACLoss's
      functorch ``vmap`` over the functional parameters computes, without its per-call dispatch and parameter
      swap. ReLU critics with one output (SAC's) run as COMBOLoss's single autograd node
      (:class:`~cmbrl.agents._common._StackedReluMLP`), whose hand-written backward avoids autograd's slow
      ``(N, H, B) @ (N, B, 1)`` product for the output layer's weight gradient and the copy of each transposed
      weight gradient; other MLP critics run through autograd (``_stacked_qvalues``);
    * the actor's network runs on the observation tensor and the actor's own ``ProbabilisticTensorDictModule``
      class and keyword arguments build the distribution from its outputs: no parameter swap
      (``actor_network_params`` are the actor's own tensors), no ``TensorDictModule`` read/write;
    * no intermediate tensordicts (SACLoss clones the batch, copies ``"next"``, selects and expands the critics'
      inputs at each of its three critic calls); :meth:`terms` also skips the output TensorDict.

    What remains above a plain-torch step is what SACLoss's interface asks for: the actor's distribution object
    (TorchRL's ``TanhNormal``, built and validated twice per update, sampled through its ``SafeTanh`` autograd
    function and scored from the sample, where a hand-written step scores the Gaussian noise directly), ``log α``
    projected onto its bounds at each read, and the priority (``td_error``) written into the batch.

    Losses and gradients equal SACLoss's to float rounding (``tests/test_sac.py``). The fast path needs a
    ``[TensorDictModule, ProbabilisticTensorDictModule]`` actor, MLP critics, the TD(0) estimator (without reward
    standardisation or ``steps_to_next_obs``), ``reduction="mean"``, no ``skip_done_states`` and no priority
    weights in the batch; otherwise ``SACLoss.forward`` runs.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._actor_parts = _actor_parts(self.actor_network)
        self._init_fast_paths()

    _forward_value_estimator_keys = SACLoss._forward_value_estimator_keys  # SACLoss keeps its value estimator

    def _fast_path_applies(self, tensordict: TensorDictBase) -> bool:
        """Whether :meth:`forward` may compute on tensors for this batch and configuration (class docstring)."""
        estimator = self.value_estimator
        return (self._plan is not None and self._actor_parts is not None and self._actor_shared
                and self._version == 2 and self.reduction == "mean" and not self.skip_done_states
                and type(estimator) is TD0Estimator and not estimator.average_rewards
                and tensordict.get(estimator.tensor_keys.steps_to_next_obs, None) is None
                and self._maybe_get_priority_weight(tensordict) is None)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """SACLoss's output (``loss_actor``, ``loss_qvalue``, ``loss_alpha``, ``alpha``, ``entropy``) for a batch
        ``(B,)``, computed on tensors when the fast path applies (see the class docstring)."""
        if not self._fast_path_applies(tensordict):
            return SACLoss.forward(self, tensordict)
        return _ActorCriticLoss.forward(self, tensordict)

    def terms(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, ...]:
        """The values of :meth:`forward` as a tuple in ``out_keys`` order, without the output TensorDict."""
        if not self._fast_path_applies(tensordict):
            out = SACLoss.forward(self, tensordict)
            return tuple(out.get(key) for key in self.out_keys)
        return self._losses(tensordict)

    def _actor_dist(self, tensordict: TensorDictBase):
        """The actor's distribution at the states of ``tensordict``, built by its probabilistic head."""
        network, in_keys, head = self._actor_parts
        outputs = network(*[tensordict.get(key) for key in in_keys])
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        params = {key[-1] if isinstance(key, tuple) else key: value for key, value in zip(head.dist_keys, outputs)}
        return head.distribution_class(**params, **head.distribution_kwargs)

    def _qvalues(self, tensordict: TensorDictBase, action: torch.Tensor, params: TensorDictBase,
                 detach: bool = False) -> torch.Tensor:
        """``(N, *B)`` Q-values of the stacked critics at the observations of ``tensordict`` and ``action (*B, A)``."""
        action_key = self.tensor_keys.action
        tensors = [action if key == action_key else tensordict.get(key) for key in self.qvalue_network.in_keys]
        q = self._critic_values(critic_rows(tensors), params, detach=detach)
        return q.reshape(self.num_qvalue_nets, *action.shape[:-1])

    def _losses(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, ...]:
        """``loss_actor, loss_qvalue, loss_alpha, alpha, entropy`` (SACLoss's ``out_keys`` order) for a batch."""
        keys = self.tensor_keys
        estimator = self.value_estimator
        next_td = tensordict.get("next")
        alpha = self._alpha  # projects log α onto [min, max] first, as SACLoss
        with torch.no_grad():  # the target (SACLoss._compute_target_v2), drawn first as in SACLoss.forward
            next_action, next_log_prob = rsample_and_log_prob(self._actor_dist(next_td))
            next_q = self._qvalues(next_td, next_action, self.target_qvalue_network_params)
            next_value = (next_q - alpha * next_log_prob).min(0)[0].unsqueeze(-1)
            done = next_td.get(estimator.tensor_keys.done)
            terminated = next_td.get(estimator.tensor_keys.terminated, done)
            target = td0_return_estimate(estimator.gamma, next_value, next_td.get(estimator.tensor_keys.reward),
                                         terminated).squeeze(-1)
        q = self._qvalues(tensordict, tensordict.get(keys.action), self.qvalue_network_params)  # (N, B)
        loss_qvalue = distance_loss(q, target.expand_as(q), loss_function=self.loss_function).sum(0).mean()
        with torch.no_grad():
            tensordict.set(keys.priority, (q - target).abs().max(0)[0])
        action, log_prob = rsample_and_log_prob(self._actor_dist(tensordict))
        min_q = self._qvalues(tensordict, action, self.qvalue_network_params, detach=True).min(0)[0]
        loss_actor = (alpha * log_prob - min_q).mean()
        log_prob = log_prob.detach()
        loss_alpha = self._alpha_loss(log_prob).mean()
        return loss_actor, loss_qvalue, loss_alpha, alpha, -log_prob.mean()


class ClampedLogStdNormalParams(nn.Module):
    """Splits ``x (..., 2A)`` into ``loc`` and ``scale = exp(clamp(log_std, log_std_min, log_std_max))``.

    The standard SAC actor head (the mean is left unbounded; the tanh squashing comes after sampling), as in
    OfflineRL-Kit's ``TanhDiagGaussian(unbounded=True, conditioned_sigma=True)`` (``sigma_min=-5``,
    ``sigma_max=2``) and CleanRL's ``sac_continuous_action.py`` (``LOG_STD_MIN=-5``, ``LOG_STD_MAX=2``). Neither
    TorchRL nor tensordict ships a clamped-exp scale mapping (``NormalParamExtractor(scale_mapping="exp",
    scale_lb=...)`` bounds only from below), hence this non-parametric module: it has no state, so actor state
    dicts keep the keys of the ``NormalParamExtractor`` head.
    """

    def __init__(self, log_std_min: float = -5.0, log_std_max: float = 2.0) -> None:
        super().__init__()
        if not log_std_min < log_std_max:
            raise ValueError(f"log_std_min must be < log_std_max, got {log_std_min}, {log_std_max}")
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_std = x.chunk(2, -1)
        return loc, log_std.clamp(self.log_std_min, self.log_std_max).exp()

    def extra_repr(self) -> str:
        return f"log_std_min={self.log_std_min}, log_std_max={self.log_std_max}"


def make_sac_actor(
    observation_dim: int,
    action_dim: int,
    hidden_sizes: Sequence[int] = (256, 256),
    action_low: float | torch.Tensor = -1.0,
    action_high: float | torch.Tensor = 1.0,
    log_std_bounds: tuple[float, float] | None = None,
) -> ProbabilisticActor:
    """Builds a tanh-squashed Gaussian actor reading ``"observation"`` and writing ``"action"``.

    Args:
        observation_dim: ``O``, size of the observation vector.
        action_dim: ``A``, size of the action vector.
        hidden_sizes: widths of the ReLU hidden layers. Default ``(256, 256)`` (MOPO / SAC).
        action_low, action_high: action bounds (scalar or ``(A,)``); actions are squashed into them.
        log_std_bounds: ``(log_std_min, log_std_max)``: the scale is ``exp(clamp(log σ, min, max))``
            (:class:`ClampedLogStdNormalParams`; :class:`SAC` passes ``(-5, 2)``). Default ``None``: TorchRL's
            ``NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=1e-4)``, the head of the behaviour
            policies cmbrl's datasets were generated with (:func:`cmbrl.components.datasets.load_policy` rebuilds
            their actors with this default). Both heads are parameter-free, so the state dict keys are the same.

    Returns:
        A TorchRL :class:`~torchrl.modules.ProbabilisticActor` (``"observation" (B, O) -> "action" (B, A)``). It
        samples by default (``default_interaction_type=RANDOM``, also outside any exploration context) and returns
        the deterministic action (tanh of the mean) under ``set_exploration_type(ExplorationType.DETERMINISTIC)``.
    """
    low = torch.as_tensor(action_low, dtype=torch.float32).expand(action_dim).clone()
    high = torch.as_tensor(action_high, dtype=torch.float32).expand(action_dim).clone()
    if log_std_bounds is None:
        head = NormalParamExtractor(scale_mapping="biased_softplus_1.0", scale_lb=1e-4)
    else:
        head = ClampedLogStdNormalParams(*log_std_bounds)
    net = _RowChunkedSequential(
        MLP(in_features=observation_dim, out_features=2 * action_dim, num_cells=list(hidden_sizes),
            activation_class=nn.ReLU),
        head,
    )
    module = _TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        spec=Bounded(low=low, high=high, shape=(action_dim,)),
        distribution_class=TanhNormal,
        distribution_kwargs={"low": low, "high": high},
        return_log_prob=False,
        default_interaction_type=InteractionType.RANDOM,
    )


class SAC(_Learner, nn.Module):
    """SAC with a tanh-Gaussian actor, twin Q critics and automatic entropy tuning.

    All of the learning rule is TorchRL's :class:`~torchrl.objectives.SACLoss` (v2, no value network) and
    :class:`~torchrl.objectives.SoftUpdate` (run as one foreach op); this class only owns the networks and the
    optimisers, so that an example reads ``metrics = agent.update(batch)``. The loss is a SACLoss subclass whose
    forward computes SACLoss's terms on tensors (stacked critics as batched matmuls, the actor without a parameter
    swap, no intermediate tensordicts; see ``_SACLoss``), equal to ``SACLoss.forward``'s to float rounding: one
    update costs ~1.1x a plain-torch SAC step on one CPU thread (``benchmarks/sac_step.py``, ratio floor/cmbrl
    0.90–0.95), against ~1.45x through ``SACLoss.forward``.

    The defaults are the SAC paper's (Haarnoja et al., arXiv:1812.05905, Table 1) plus the two guards every common
    implementation adds: a clamp of the actor's log σ and, as OfflineRL-Kit's MOPO, an upper bound on α.
    OfflineRL-Kit's ``run_example/run_mopo.py`` differs only in ``actor_lr=alpha_lr=1e-4`` (and a cosine annealing of
    the actor's learning rate, which the training loop owns: ``agent.actor_optim`` is a plain Adam to schedule).

    Args:
        observation_dim: ``O``.
        action_dim: ``A``.
        action_low, action_high: action bounds, scalar or ``(A,)``. Default ``[-1, 1]`` (MuJoCo locomotion).
        hidden_sizes: hidden widths of actor and critics. Default ``(256, 256)`` (SAC paper Table 1; OfflineRL-Kit).
        actor_lr: Adam learning rate of the actor. Default ``3e-4`` (SAC paper Table 1; OfflineRL-Kit's MOPO uses
            ``1e-4``).
        critic_lr: Adam learning rate of the critics. Default ``3e-4`` (SAC paper; OfflineRL-Kit's MOPO too).
        alpha_lr: Adam learning rate of ``log α``. Default ``3e-4`` (SAC paper: one learning rate for all;
            OfflineRL-Kit's MOPO uses ``1e-4``).
        gamma: discount. Default 0.99 (SAC paper; OfflineRL-Kit).
        tau: soft target-update rate. Default 0.005 (SAC paper; OfflineRL-Kit).
        target_entropy: ``"auto"`` (``-A``, SAC paper §5; OfflineRL-Kit) or a number (nats).
        alpha_init: initial entropy temperature. Default 1.0 (``log α = 0``, OfflineRL-Kit).
        max_alpha: upper bound on α, or ``None`` for none (the SAC paper has none). Default 1.0: OfflineRL-Kit's
            SAC uses ``α = clamp(exp(log α), 0, 1)`` (``offlinerlkit/policy/model_free/sac.py``). Implemented by
            TorchRL's ``SACLoss(max_alpha=...)``, which projects ``log α`` onto ``≤ log(max_alpha)`` each time
            the loss reads α, i.e. before α enters any loss; OfflineRL-Kit clamps only the value it uses and lets
            ``log α`` itself drift above 0, so after a spell at the bound its α leaves it later than ours.
        log_std_min, log_std_max: the actor's scale is ``exp(clamp(log σ, log_std_min, log_std_max))`` with an
            unbounded mean. Default ``-5, 2`` (OfflineRL-Kit's ``TanhDiagGaussian`` ``sigma_min``/``sigma_max``;
            CleanRL's ``sac_continuous_action.py``; the original SAC code, haarnoja/sac, and Spinning Up clamp at
            ``-20, 2``). Both ``None``: TorchRL's ``biased_softplus_1.0``, ``σ = softplus(x + 0.5255) + 0.01``
            (``σ(0) = 1``, ``σ ≥ 0.01``, no ceiling), the head cmbrl's own behaviour policies were trained with.
        num_qvalue_nets: number of critics. Default 2 (SAC paper's clipped double Q).
        seed: if given, the network initialisation is seeded (the global RNG is left untouched); the same seed
            gives the same initial weights on every device (they are drawn on the CPU, then moved).
        device: where every tensor of the learner lives (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a
            :class:`torch.device`, see :func:`~cmbrl.components.devices.resolve_device`): networks, target critics,
            ``log α``, action bounds, optimiser states. Default ``"cpu"``. Read back as :attr:`device`.
        compile: ``False`` (default, eager), ``True`` (``torch.compile``, inductor's default mode), a
            ``torch.compile`` mode string (``"max-autotune"``, ...) or a dict of ``torch.compile`` keyword
            arguments (``{"backend": "aot_eager"}`` compiles in seconds, for tests). The whole update (losses,
            backward, the three Adam steps and the target update) is one compiled function, TorchRL's SOTA
            pattern; the first update compiles it (inductor: tens of seconds), a new batch size recompiles. Under
            compile the critics run through autograd instead of the hand-written ``_StackedReluMLP`` backward.
        cudagraphs: capture the (compiled or eager) update in a CUDA graph after 5 warm-up calls
            (:class:`tensordict.nn.CudaGraphModule`); CUDA only, the optimisers are built ``capturable``, every
            batch must have the same size. Default ``False``.

    Attributes:
        device: the :class:`torch.device` of every parameter, buffer and optimiser state.

    Devices and checkpoints: :meth:`update` takes batches on any device but the fast path is a batch already on
    :attr:`device`. ``state_dict()`` carries the optimisers; to load a checkpoint saved on another device use
    ``agent.load_state_dict(torch.load(path, map_location=agent.device))`` (``load_state_dict`` also moves Adam's
    step counters and resets ``capturable`` to this agent's setting).

    Raises:
        ValueError: a device this machine lacks (``device="cuda"`` without CUDA names the available ones),
            ``cudagraphs=True`` off CUDA, a ``compile`` that is not a bool, a mode string or a dict, or bad sizes
            and bounds.

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
        max_alpha: float | None = 1.0,
        log_std_min: float | None = -5.0,
        log_std_max: float | None = 2.0,
        num_qvalue_nets: int = 2,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        compile: bool | str | dict = False,
        cudagraphs: bool = False,
    ) -> None:
        super().__init__()
        check_dims(observation_dim, action_dim)
        self._init_device(device, compile, cudagraphs)
        if (log_std_min is None) != (log_std_max is None):
            raise ValueError("log_std_min and log_std_max must both be numbers or both be None")
        if max_alpha is not None and not max_alpha > 0:
            raise ValueError(f"max_alpha must be positive or None, got {max_alpha}")
        self.observation_dim, self.action_dim = observation_dim, action_dim
        log_std_bounds = None if log_std_min is None else (log_std_min, log_std_max)
        with seeded(seed):
            self.policy = make_sac_actor(observation_dim, action_dim, hidden_sizes, action_low, action_high,
                                         log_std_bounds=log_std_bounds)
            qnet = MLP(in_features=observation_dim + action_dim, out_features=1, num_cells=list(hidden_sizes),
                       activation_class=nn.ReLU)
            qvalue = _ValueOperator(qnet, in_keys=["observation", "action"])
            self.loss_module = _SACLoss(
                self.policy, qvalue, num_qvalue_nets=num_qvalue_nets, loss_function="l2",
                alpha_init=alpha_init, max_alpha=max_alpha, target_entropy=target_entropy,
                action_spec=self.policy.spec["action"],
            )
        self.loss_module.make_value_estimator(gamma=gamma)
        _ = self.loss_module.target_entropy  # registers the lazily-created buffer so state dicts always match
        self._place()  # onto the device before the target updater and the optimisers read the parameters
        self.target_updater = _ForeachSoftUpdate(self.loss_module, tau=tau)
        self._make_optimizers(actor_lr, critic_lr, alpha_lr)

    OPTIMIZERS = ("actor_optim", "critic_optim", "alpha_optim")
    METRICS = ("loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy")

    def update(self, batch: TensorDictBase, sync: bool = True) -> dict[str, float] | dict[str, torch.Tensor]:
        """One gradient step on actor, critics and temperature, then a soft target update.

        Args:
            batch: transitions, shape ``(B,)`` (see the class docstring for keys), best already on
                :attr:`device` (sample the replay buffer there); a batch elsewhere is moved once with
                ``batch.to(agent.device)``. Under ``cudagraphs`` every batch must have the same size.
            sync: ``True`` (default): the metrics as Python floats (one device-to-host copy, which waits for the
                GPU). ``False``: as detached 0-d tensors on :attr:`device`, without that copy (a training loop
                reads them when it logs). Off the CPU ``torch.distributions``' argument checks are skipped during
                the update (they read values back on the host); eager TorchRL ``TanhNormal`` still reads its bounds
                back once per construction, a compiled update (``compile=...``) has no host read at all.

        Returns:
            ``loss_actor``, ``loss_qvalue``, ``loss_alpha``, ``alpha`` and ``entropy`` (nats), floats or 0-d tensors.

        Raises:
            KeyError: the batch lacks a key the update reads (a ``MissingKeysError`` naming the missing keys,
                every expected entry and its shape, and the batch's keys).
            ValueError: an entry's last dimension is not the expected one (``O``, ``A`` or 1).
            TypeError: ``batch`` is not a TensorDict, or an observation, action or reward is not floating point.
        """
        return self._run(batch, sync)

    def _loss_and_metrics(self, batch: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        loss_actor, loss_qvalue, loss_alpha, alpha, entropy = self.loss_module.terms(batch)
        metrics = torch.stack([loss_actor.detach(), loss_qvalue.detach(), loss_alpha.detach(), alpha, entropy])
        return loss_actor + loss_qvalue + loss_alpha, metrics
