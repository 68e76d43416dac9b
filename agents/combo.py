"""COMBO: a conservative critic on a mix of dataset and model-rollout transitions, on top of TorchRL's SACLoss.

:class:`COMBOLoss` is TorchRL's :class:`~torchrl.objectives.SACLoss` (actor, entropy temperature, target critics,
keys, construction) with the critic loss of COMBO's eq. 2: a CQL(H) regulariser that pushes Q down at model-rollout
states under sampled actions and up on dataset pairs. :class:`COMBO` owns the networks and the optimisers around it,
as :class:`~cmbrl.agents.sac.SAC` does.

Reference: Yu et al., "COMBO: Conservative Offline Model-Based Policy Optimization", arXiv:2102.08363 (eq. 2 for
the critic, eq. 3 for the actor, Algorithm 1); Kumar et al., "Conservative Q-Learning for Offline Reinforcement
Learning", arXiv:2006.04779 (CQL(H), eq. 4; the importance-sampled log-sum-exp and CQL-Lagrange of its
implementation details and code);
``../shared/seeds/003_c20b200f774dca6a.txt`` §V.B, §VI.B and Table II (the previous-policy prior and learned β);
OfflineRL-Kit's ``offlinerlkit/policy/model_based/combo.py`` and ``run_example/run_combo.py`` (defaults,
``../shared/HYPERPARAMETERS.md`` §3).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import (ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential, TensorDictModule,
                           TensorDictParams)
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.objectives import SACLoss

from ._common import (_ActorCriticLoss, _Learner, check_bounds, check_count, check_dims, check_tau, critic_rows,
                      seeded)
from .sac import _ForeachSoftUpdate, _ValueOperator, make_sac_actor

__all__ = ["COMBO", "COMBOLoss", "PRIORS", "RHOS"]

PRIORS = ("uniform", "previous_policy")
"""Priors of the push-down term's third source of actions (see :class:`COMBOLoss`)."""
RHOS = ("model", "mixed")
"""Choices of ρ, the states of the push-down term: the model rows of the batch, or the whole mixed batch."""


class COMBOLoss(_ActorCriticLoss, SACLoss):
    r"""COMBO's loss: SAC's actor and temperature losses and a conservative critic loss (COMBO eq. 2, CQL(H)).

    Yu et al., "COMBO: Conservative Offline Model-Based Policy Optimization", https://arxiv.org/abs/2102.08363.
    Subclasses TorchRL's :class:`~torchrl.objectives.SACLoss`, whose construction (functional stacked critics,
    target critics for :class:`~torchrl.objectives.SoftUpdate`, ``log_alpha``, ``target_entropy``, renamable keys)
    and actor/temperature losses it keeps. TorchRL's :class:`~torchrl.objectives.CQLLoss` is not reused: its
    ``cql_loss`` concatenates the ``(B·n, 1)`` Q-values of the three sources on the last dimension, so its
    log-sum-exp runs over the 3 sources of each repeated sample instead of over the ``3n`` samples of a state
    (OfflineRL-Kit's COMBO has the same slip, ``../shared/HYPERPARAMETERS.md`` §3), and it fixes 2 critics, a
    ``[-1, 1]`` uniform prior and one batch for both terms.

    The batch ``d_f`` mixes dataset ("real") and model-rollout transitions; the boolean key ``"is_real" (B, 1)``
    says which rows are real (renamable with ``set_keys(is_real=...)``; ``examples/combo.py`` stores ``True`` with
    every dataset transition and ``False`` with every model transition, so the mixed batches carry it). With ``N``
    critics ``Q_j``, targets ``Q'_j``, policy ``π``, ``n = num_action_samples`` and temperature ``T``:

    * Bellman error (on all ``B`` rows): ``y = r + γ (1 - terminated) V(s')`` with ``a' ~ π(·|s')`` and
      ``V(s') = min_j Q'_j(s', a')`` (``deterministic_backup=True``, OfflineRL-Kit's COMBO default) or
      ``min_j Q'_j(s', a') - α log π(a'|s')`` (SACLoss's soft backup). ``loss_qvalue = Σ_j mean_B (Q_j(s, a) - y)²``,
      SACLoss's ``"l2"`` critic loss exactly (only ``terminated`` stops bootstrapping).
    * Regulariser: for each state ``s`` of ρ (the model rows, ``rho="model"``, or all rows, ``rho="mixed"``), ``3n``
      actions: ``n`` from ``π(·|s)``, ``n`` from ``π(·|s')`` (``s'`` the next state of the same transition, scored at
      ``Q(s, ·)``) and ``n`` from the prior ``μ``: uniform on the action box (``prior="uniform"``, COMBO, CQL) or the
      stored previous policy (``prior="previous_policy"``, the report's variant). Importance-weighted CQL(H)
      (CQL eq. 4 as CQL's code estimates it): ``L_j(s) = T · logsumexp_k((Q_j(s, a_k) - log q_k(a_k|s)) / T)``
      over the ``3n`` samples, ``q_k`` each sample's own proposal density (``log π`` for the policy samples,
      ``-Σ log(high - low)`` for the uniform prior, ``log π_prev`` for the previous policy; no ``-log 3n``, as
      CQL's and OfflineRL-Kit's code).
      ``gap_j = mean_{s∈ρ} L_j(s) - mean_{real (s, a)} Q_j(s, a)`` (push-up on real rows only) and
      ``loss_cql = β Σ_j gap_j``. Samples and densities carry no gradient: the regulariser trains only the critics.
    * Critic loss: ``loss_qvalue + loss_cql``. Scale: this is eq. 2 times 2 (``(Q - y)²`` without eq. 2's ``½``,
      as SACLoss, CQL's and OfflineRL-Kit's code), so ``β`` here is OfflineRL-Kit's ``cql_weight`` and twice eq. 2's
      β; the per-dataset values of ``../shared/HYPERPARAMETERS.md`` §3 apply as they are.
    * Actor (eq. 3 with SAC's entropy term, over all ``B`` rows, as OfflineRL-Kit): ``loss_actor = mean(α log π(ã|s)
      - min_j Q_j(s, ã))``, ``ã ~ π(·|s)`` reparameterised, critics detached; ``loss_alpha`` as SACLoss.
    * ``learn_beta=True`` (CQL-Lagrange, as CQL's ``with_lagrange``; the report's "learn β"): ``β = min(exp(log β),
      max_beta)`` is trained by ``loss_beta = -β (mean_j gap_j - beta_threshold)`` (gap detached), so β grows while
      the gap exceeds ``beta_threshold`` and shrinks otherwise; the critics see β detached. The threshold compares
      with the unscaled gap (OfflineRL-Kit compares ``cql_weight · gap``).

    Everything is computed in one pass: one actor call on ``s`` (with gradient: the actor loss; detached: the
    ``π(·|s)`` samples), one on ``s'`` (no gradient: the target action and the ``π(·|s')`` samples), one on ρ's
    states with the previous policy's parameters (``prior="previous_policy"`` only); all ``3n`` samples of all ρ
    states come from one distribution call per actor call, and the critics evaluate them in one batched call
    (``(N, 3n, B_ρ)``). Stacked MLP critics run as one batched matmul per layer (no vmap); other critic
    architectures fall back to TorchRL's vmap.

    Args:
        actor_network: a probabilistic actor reading observations (``get_dist``), e.g.
            :func:`~cmbrl.agents.sac.make_sac_actor`.
        qvalue_network: a critic ``(observation, action) -> (..., 1)``, expanded to ``num_qvalue_nets`` critics
            (or a list of them), as SACLoss.
        num_qvalue_nets: ``N``. Default 2 (COMBO, OfflineRL-Kit).
        beta: ``β`` (the initial value when ``learn_beta``). Default 5.0 (OfflineRL-Kit's ``run_combo.py``
            default ``--cql-weight``; per-dataset values in ``cmbrl.components.training.COMBO_HYPERPARAMETERS``).
        num_action_samples: ``n`` actions per source and state. Default 10 (CQL, OfflineRL-Kit
            ``num_repeat_actions``).
        temperature: ``T`` of the log-sum-exp. Default 1.0 (CQL, OfflineRL-Kit).
        prior: ``"uniform"`` (default; COMBO, CQL) or ``"previous_policy"`` (a stored copy of the actor, refreshed
            by :meth:`update_prior`).
        rho: ``"model"`` (default: ρ = the model-rollout rows, COMBO eq. 2's ``d^π_M̂``) or ``"mixed"`` (all rows:
            OfflineRL-Kit's default ``rho_s="mix"``).
        deterministic_backup: no entropy term in the target. Default ``True`` (OfflineRL-Kit's COMBO).
        learn_beta: learn β by CQL-Lagrange (see above). Default ``False`` (OfflineRL-Kit ``with-lagrange False``;
            the report found learned β worse, Table II).
        beta_threshold: the Lagrange threshold τ (reward units). Default 10.0 (OfflineRL-Kit
            ``lagrange_threshold``; CQL's gym value).
        max_beta: upper bound of a learned β. Default 1e6 (CQL's and OfflineRL-Kit's clamp).
        gamma: discount. Default 0.99 (COMBO, OfflineRL-Kit). A constructor argument: the target is always the
            one-step target above (:meth:`make_value_estimator` is not supported).
        alpha_init, max_alpha, target_entropy, action_spec: as SACLoss. Defaults 1.0, ``None`` (OfflineRL-Kit's COMBO
            does not clamp α), ``"auto"`` (``-A``), ``None`` (the actor's spec). The uniform prior's box is the
            action spec's bounds.

    Raises:
        ValueError: for arguments outside the ranges above (the message names the value received and what is
            allowed), or an action spec without finite bounds with ``prior="uniform"``.

    Input tensordict (shape ``(B,)``, default key names): the actor's and critics' observation keys and the same under
    ``"next"``, ``"action" (B, A)``, ``("next", "reward") (B, 1)``, ``("next", "terminated") (B, 1)`` and
    ``"is_real" (B, 1)`` (bool). Forward raises ``KeyError`` when ``is_real`` is absent, and ``ValueError`` when the
    batch has no real row or ρ is empty (``rho="model"`` and no model row). ``max_j |Q_j(s, a) - y|`` is written in
    place under ``"td_error" (B,)``, as SACLoss does.

    Returns (from :meth:`forward`): a TensorDict with no batch dimension: ``loss_actor``, ``loss_qvalue``,
    ``loss_cql``, ``loss_alpha``, ``loss_beta`` (0 unless ``learn_beta``), and the detached diagnostics ``alpha``,
    ``entropy`` (nats), ``beta``, ``cql_gap`` (mean over critics of ``gap_j``, reward units), ``q_data`` (mean Q on
    the real rows), ``q_pushdown`` (mean ``L_j``) and ``policy_gap`` (mean over critics of ``E_{s∈ρ, a~π}[Q_j] -
    E_real[Q_j]``: the regulariser of eq. 2 with μ = π, the value COMBO reads to tune β, report §VI.B).

    Examples:
        >>> from cmbrl.agents import make_sac_actor
        >>> from torchrl.modules import MLP, ValueOperator
        >>> actor = make_sac_actor(3, 2, hidden_sizes=(16,))
        >>> critic = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[16]), ["observation", "action"])
        >>> loss = COMBOLoss(actor, critic, beta=1.0)
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1,
        ...     "is_real": (torch.arange(8) < 4).unsqueeze(-1),
        ...     "next": {"observation": torch.randn(8, 3), "reward": torch.randn(8, 1),
        ...              "terminated": torch.zeros(8, 1, dtype=torch.bool),
        ...              "done": torch.zeros(8, 1, dtype=torch.bool)}}, batch_size=[8])
        >>> out = loss(batch)
        >>> (out["loss_qvalue"] + out["loss_cql"]).shape
        torch.Size([])
    """

    @dataclass
    class _AcceptedKeys(SACLoss._AcceptedKeys):
        """SACLoss's keys plus ``is_real``.

        Attributes:
            is_real: boolean ``(B, 1)`` key, ``True`` on dataset rows, ``False`` on model-rollout rows. Default
                ``"is_real"``.
        """

        is_real: NestedKey = "is_real"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    METRICS = ("loss_actor", "loss_qvalue", "loss_cql", "loss_alpha", "loss_beta", "alpha", "entropy", "beta",
               "cql_gap", "q_data", "q_pushdown", "policy_gap")

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | Sequence[TensorDictModule],
        *,
        num_qvalue_nets: int = 2,
        beta: float = 5.0,
        num_action_samples: int = 10,
        temperature: float = 1.0,
        prior: str = "uniform",
        rho: str = "model",
        deterministic_backup: bool = True,
        learn_beta: bool = False,
        beta_threshold: float = 10.0,
        max_beta: float = 1e6,
        gamma: float = 0.99,
        alpha_init: float = 1.0,
        max_alpha: float | None = None,
        target_entropy: str | float = "auto",
        action_spec=None,
    ) -> None:
        check_count("num_qvalue_nets", num_qvalue_nets)
        check_count("num_action_samples", num_action_samples, allow_bool=False)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if rho not in RHOS:
            raise ValueError(f"rho must be one of {RHOS}, got {rho!r}")
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        if learn_beta and not beta > 0:
            raise ValueError(f"beta (the initial value of a learned β) must be > 0 with learn_beta=True, got {beta!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if not math.isfinite(beta_threshold):
            raise ValueError(f"beta_threshold must be a finite number, got {beta_threshold!r}")
        if not (max_beta > 0 and max_beta >= beta):
            raise ValueError(f"max_beta must be > 0 and >= beta={beta!r}, got {max_beta!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        if max_alpha is not None and not max_alpha > 0:
            raise ValueError(f"max_alpha must be positive or None, got {max_alpha!r}")
        super().__init__(actor_network, qvalue_network if isinstance(qvalue_network, TensorDictModule)
                         else list(qvalue_network), num_qvalue_nets=num_qvalue_nets, loss_function="l2",
                         alpha_init=alpha_init, max_alpha=max_alpha, target_entropy=target_entropy,
                         action_spec=action_spec)
        _ = self.target_entropy  # registers the lazily-created buffer so state dicts always match
        self.num_action_samples, self.temperature = num_action_samples, float(temperature)
        self.prior, self.rho = prior, rho
        self.deterministic_backup, self.learn_beta = bool(deterministic_backup), bool(learn_beta)
        self.beta_threshold, self.max_beta, self.gamma = float(beta_threshold), float(max_beta), float(gamma)
        log_beta = torch.tensor(math.log(beta) if beta > 0 else -math.inf)
        if self.learn_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)  # exp(-inf) = 0: β = 0 is SAC's critic loss
        spec = action_spec if action_spec is not None else actor_network.spec
        spec = spec[self.tensor_keys.action] if not isinstance(spec, Bounded) else spec
        low = getattr(getattr(spec, "space", None), "low", None)
        high = getattr(getattr(spec, "space", None), "high", None)
        if prior == "uniform":
            if low is None or high is None or not (torch.isfinite(low).all() and torch.isfinite(high).all()
                                                    and (high > low).all()):
                raise ValueError(f"prior='uniform' needs an action spec with finite bounds low < high, got {spec}")
            self.register_buffer("action_low", low.detach().clone().float())
            self.register_buffer("action_high", high.detach().clone().float())
        if prior == "previous_policy":
            # a frozen copy of the actor's parameters (buffers, not trained; SoftUpdate ignores them)
            self.prior_actor_network_params = TensorDictParams(self.actor_network_params.data.clone(),
                                                               no_convert=True)
        self._dist_param_keys = self._find_dist_param_keys(actor_network)
        self._init_fast_paths()

    # ------------------------------------------------------------------------------------------------------------
    # plumbing

    @staticmethod
    def _find_dist_param_keys(actor_network) -> list[NestedKey]:
        """The keys the actor's distribution is built from (``loc``, ``scale``, ...)."""
        modules = [m for m in actor_network.modules() if isinstance(m, ProbabilisticTensorDictModule)]
        if not modules:
            raise ValueError(f"actor_network must contain a ProbabilisticTensorDictModule, got {actor_network}")
        return list(modules[-1].in_keys)

    def make_value_estimator(self, value_type=None, **hyperparams):  # noqa: D102
        raise NotImplementedError("COMBOLoss uses the one-step target with the gamma given to its constructor; "
                                  "it has no value estimator to replace")

    @property
    def in_keys(self) -> list[NestedKey]:  # noqa: D102
        return self._transition_in_keys(self.tensor_keys.is_real)

    @in_keys.setter
    def in_keys(self, values):
        pass  # SACLoss's constructor assigns it; the property above is always current

    @property
    def out_keys(self) -> list[str]:  # noqa: D102
        return list(self.METRICS)

    @out_keys.setter
    def out_keys(self, values):
        pass

    @property
    def beta(self) -> torch.Tensor:
        """The current β (scalar tensor, no gradient)."""
        return self.log_beta.detach().exp().clamp(max=self.max_beta)

    @torch.no_grad()
    def update_prior(self) -> None:
        """Copies the live actor's parameters into the previous-policy prior (``prior="previous_policy"`` only).

        Raises:
            RuntimeError: when the prior is not ``"previous_policy"``.
        """
        if self.prior != "previous_policy":
            raise RuntimeError(f"update_prior() needs prior='previous_policy', this loss has prior={self.prior!r}")
        torch._foreach_copy_(list(self.prior_actor_network_params.values(True, True)),
                             [p.detach() for p in self.actor_network_params.values(True, True)])

    def _dist(self, td: TensorDictBase, params: TensorDictBase | None = None):
        """The actor's distribution at the states of ``td``; the parameters it is built from are written into
        ``td``. ``params``: other parameters than the live actor's (the previous policy)."""
        if params is None and self._actor_shared:  # convert_to_functional shares the tensors: skip to_module
            return self.actor_network.get_dist(td)
        with (params if params is not None else self.actor_network_params).to_module(
                self.actor_network, preserve_module_state=False):
            return self.actor_network.get_dist(td)

    def qvalues(self, inputs: dict[NestedKey, torch.Tensor], action: torch.Tensor, params: TensorDictBase,
                detach: bool = False) -> torch.Tensor:
        """``Q_j(s, action)`` for every critic ``j`` of ``params``, in one batched call.

        Args:
            inputs: the critics' non-action inputs, each ``(B, F)``.
            action: ``(*S, B, A)``; the inputs are broadcast over the leading sample dimensions ``S``.
            params: ``qvalue_network_params`` or ``target_qvalue_network_params`` (leading dimension ``N``).
            detach: read the parameters detached (gradients reach the action only).

        Returns:
            ``(N, *S, B)`` Q-values (reward units).
        """
        batch = action.shape[:-1]
        action_key = self.tensor_keys.action
        tensors = [action if key == action_key else inputs[key] for key in self.qvalue_network.in_keys]
        tensors = [x.expand(*batch, x.shape[-1]) for x in tensors]
        if self._plan is None:  # any critic architecture: TorchRL's vmap over the functional parameters
            td = TensorDict(dict(zip(self.qvalue_network.in_keys, tensors)), batch_size=batch)
            out = self._vmap_qnetworkN0(td, params.detach() if detach else params)
            return out.get(self.qvalue_network.out_keys[0]).squeeze(-1)
        # Linear/ReLU critics: one autograd node with a lean backward (_StackedReluMLP); other MLPs: one batched
        # matmul per layer over the stacked (N, out, in) weights
        return self._critic_values(critic_rows(tensors), params, detach=detach).reshape(self.num_qvalue_nets, *batch)

    # ------------------------------------------------------------------------------------------------------------
    # the loss

    @torch.no_grad()
    def _cql_actions(self, tensordict: TensorDictBase, actor_td: TensorDictBase, next_actor_td: TensorDictBase,
                     rho_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The push-down term's ``3n`` actions per ρ state and each one's proposal log-density (no gradient).

        Args:
            tensordict: the batch ``(B,)`` (the previous-policy prior reads the actor's inputs from it).
            actor_td, next_actor_td: ``(B,)`` tensordicts on which the live actor's distribution was built at ``s``
                and ``s'``: they hold its parameters (``loc``, ``scale``, ...), which are reused, not recomputed.
            rho_rows: ``(B_ρ,)`` indices of ρ's rows, or ``None`` for all rows.

        Returns:
            ``actions (3n, B_ρ, A)`` ordered ``π(·|s)``, ``π(·|s')``, prior (``n`` each), and ``log_density
            (3n, B_ρ)`` (nats): ``log π(a|s)``, ``log π(a'|s')``, and ``-Σ log(high - low)`` (uniform) or
            ``log π_prev(a|s)`` (previous policy). All samples of the live policy come from one distribution over
            the ``2 B_ρ`` states.
        """
        n = self.num_action_samples

        def rows(x):
            return x if rho_rows is None else x.index_select(0, rho_rows)

        params = {k: torch.cat([rows(actor_td.get(k)).detach(), rows(next_actor_td.get(k)).detach()])
                  for k in self._dist_param_keys}
        size = next(iter(params.values())).shape[0]
        policy_dist = self.actor_network.build_dist_from_params(TensorDict(params, batch_size=[size]))
        policy_actions, policy_log_prob = rsample_and_log_prob(policy_dist, (n,))  # (n, 2 B_ρ, A), (n, 2 B_ρ)
        rho_size = size // 2
        # (n, [s | s'], B_ρ) -> ([s | s'], n, B_ρ): the n samples at s, then the n at s'
        actions = policy_actions.unflatten(1, (2, rho_size)).transpose(0, 1).reshape(2 * n, rho_size, -1)
        log_density = policy_log_prob.unflatten(1, (2, rho_size)).transpose(0, 1).reshape(2 * n, rho_size)
        if self.prior == "uniform":
            low, high = self.action_low, self.action_high
            prior_actions = low + (high - low) * torch.rand(n, rho_size, low.shape[-1], device=low.device)
            prior_log_density = (-(high - low).log().sum()).expand(n, rho_size)
        else:
            prior_td = TensorDict({k: rows(tensordict.get(k)) for k in self.actor_network.in_keys},
                                  batch_size=[rho_size])
            prior_dist = self._dist(prior_td, self.prior_actor_network_params)
            prior_actions, prior_log_density = rsample_and_log_prob(prior_dist, (n,))
        return torch.cat([actions, prior_actions]), torch.cat([log_density, prior_log_density])

    def split_rows(self, tensordict: TensorDictBase) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The batch's real/model split as row indices, checked: ``(real_rows, rho_rows)``.

        Args:
            tensordict: the batch ``(B,)`` with the boolean ``is_real (B, 1)`` key.

        Returns:
            ``real_rows (B_real,)`` (``None`` when every row is real) and ``rho_rows (B_ρ,)``, the model rows with
            ``rho="model"`` (``None`` with ``rho="mixed"``: all rows). Both on the batch's device; computing them
            reads the mask on the host (one synchronisation), which is why a compiled update takes them as inputs.

        Raises:
            KeyError: the batch has no ``is_real`` key (the message lists its keys).
            ValueError: no real row, or ``rho="model"`` and no model row.
        """
        keys = self.tensor_keys
        try:
            is_real = tensordict.get(keys.is_real)
        except KeyError:
            is_real = None
        if is_real is None:
            raise KeyError(f"COMBOLoss needs the boolean key {keys.is_real!r} (B, 1): True on dataset rows, False "
                           f"on model-rollout rows; the batch has keys {list(tensordict.keys(True, True))}")
        is_real = is_real.reshape(-1).bool()
        num_real = int(is_real.sum())
        if num_real == 0:
            raise ValueError(f"the batch has no real row ({keys.is_real!r} all False): the push-up term "
                             f"E_D[Q(s, a)] needs dataset transitions")
        real_rows = is_real.nonzero().squeeze(-1) if num_real < is_real.numel() else None
        rho_rows = None if self.rho == "mixed" else (~is_real).nonzero().squeeze(-1)
        if rho_rows is not None and rho_rows.numel() == 0:
            raise ValueError(f"rho='model' but the batch has no model row ({keys.is_real!r} all True)")
        return real_rows, rho_rows

    def _losses(self, tensordict: TensorDictBase, rows: tuple | None = None) -> tuple[torch.Tensor, ...]:
        """The terms and diagnostics of :meth:`forward`, in ``METRICS`` order, as tensors (no TensorDict).
        ``rows``: :meth:`split_rows` of the batch when already computed."""
        keys = self.tensor_keys
        real_rows, rho_rows = self.split_rows(tensordict) if rows is None else rows
        next_td = tensordict.get("next")
        actor_keys = self.actor_network.in_keys
        critic_keys = [k for k in self.qvalue_network.in_keys if k != keys.action]
        inputs = {k: tensordict.get(k) for k in critic_keys}
        next_inputs = {k: next_td.get(k) for k in critic_keys}
        alpha = self._alpha  # projects log α onto [min, max] first, as SACLoss
        n = self.num_action_samples

        # target (drawn first, as SACLoss.forward does, so that equal RNG states give equal samples)
        with torch.no_grad():
            next_actor_td = TensorDict({k: next_td.get(k) for k in actor_keys}, batch_size=tensordict.batch_size)
            next_dist = self._dist(next_actor_td)
            next_action, next_log_prob = rsample_and_log_prob(next_dist)
            next_value = self.qvalues(next_inputs, next_action, self.target_qvalue_network_params)
            if not self.deterministic_backup:
                next_value = next_value - alpha * next_log_prob
            target = self._one_step_target(next_td, next_value.min(0)[0])

        # actor (eq. 3 with SAC's entropy): its distribution's parameters also give the π(·|s) samples below
        actor_td = TensorDict({k: tensordict.get(k) for k in actor_keys}, batch_size=tensordict.batch_size)
        dist = self._dist(actor_td)
        action_pi, log_prob = rsample_and_log_prob(dist)
        q_pi = self.qvalues(inputs, action_pi, self.qvalue_network_params, detach=True).min(0)[0]
        loss_actor = (alpha * log_prob - q_pi).mean()
        log_prob = log_prob.detach()
        loss_alpha = self._alpha_loss(log_prob).mean()

        # Bellman error on d_f (all rows)
        q_data = self.qvalues(inputs, tensordict.get(keys.action), self.qvalue_network_params)  # (N, B)
        loss_qvalue = self._bellman_loss(tensordict, q_data, target)  # also writes the priority

        # CQL(H) push-down at ρ's states: 3n actions per state
        actions, log_density = self._cql_actions(tensordict, actor_td, next_actor_td, rho_rows)
        rho_inputs = inputs if rho_rows is None else {k: v.index_select(0, rho_rows) for k, v in inputs.items()}
        q_sampled = self.qvalues(rho_inputs, actions, self.qvalue_network_params)  # (N, 3n, B_ρ)
        if self.temperature == 1.0:
            pushdown = torch.logsumexp(q_sampled - log_density, dim=1)
        else:
            pushdown = self.temperature * torch.logsumexp((q_sampled - log_density) / self.temperature, dim=1)
        pushdown = pushdown.mean(-1)  # (N,)
        pushup = (q_data if real_rows is None else q_data.index_select(1, real_rows)).mean(-1)  # (N,)
        gap = pushdown - pushup  # (N,)
        beta = self.log_beta.exp().clamp(max=self.max_beta)
        loss_cql = beta.detach() * gap.sum()
        if self.learn_beta:
            loss_beta = -beta * (gap.detach().mean() - self.beta_threshold)
        else:
            loss_beta = torch.zeros((), device=beta.device)
        with torch.no_grad():
            policy_gap = (q_sampled[:, :n].mean((1, 2)) - pushup).mean()
        return (loss_actor, loss_qvalue, loss_cql, loss_alpha, loss_beta, alpha, -log_prob.mean(), beta.detach(),
                gap.detach().mean(), pushup.detach().mean(), pushdown.detach().mean(), policy_gap)


class COMBO(_Learner, nn.Module):
    """COMBO with a tanh-Gaussian actor and twin critics: :class:`COMBOLoss`, three (four) Adams, a soft update.

    The component the examples use like :class:`~cmbrl.agents.sac.SAC`: ``metrics = agent.update(batch)`` runs one
    backward pass over ``loss_actor + loss_qvalue + loss_cql + loss_alpha (+ loss_beta)`` (their parameters are
    disjoint), steps the optimisers (``foreach`` Adam), then the soft target update (one foreach op). With
    ``prior="previous_policy"`` the stored copy of the actor is refreshed every ``prior_update_interval`` updates
    (after the update that completes the interval, and at construction): the policy "from the previous iteration"
    of the report (§VI.B), one iteration of COMBO's Algorithm 1 being a model rollout and the 1000 gradient steps
    after it (OfflineRL-Kit's ``--rollout-freq 1000``).

    Cost (``benchmarks/combo_step.py``: O=11, A=3, batch 256 with 128 real rows, one CPU thread, process CPU time,
    medians of 3 interleaved blocks of 20 steps on a 2-core machine busy with two other training processes): with
    2 x 256 networks and the defaults (n = 10, ρ = the 128 model states), 77 ms per update against 23 ms for
    ``SAC.update`` (ratio 3.3); the regulariser's matrix products alone (``2 critics x 3840 rows``, forward and
    backward) take 53 ms, so no implementation of this update gets below ~3.3x SAC at these sizes. ``n = 1``: 1.1x
    SAC; ``rho="mixed"`` (256 states): 5.5x; 3 x 256 networks: 125 ms vs 34 ms (3.7x). Nearly all of it is the
    critics on the ``3n · B_ρ`` sampled actions, run by a fused stacked-critic function (``_StackedReluMLP``).

    Defaults: OfflineRL-Kit's ``run_example/run_combo.py`` (``../shared/HYPERPARAMETERS.md`` §3): 3 x 256 ReLU actor
    and critics, actor / critic / α learning rates 1e-4 / 3e-4 / 1e-4 (the example anneals the actor's with a
    cosine schedule, as Kit), γ 0.99, τ 0.005, automatic α with target ``-A``, β 5.0, 10 actions per source,
    temperature 1, deterministic backup, no Lagrange (its learning rate 3e-4 and threshold 10 when enabled). The
    actor's log σ is clamped to ``[-5, 2]`` (Kit's ``TanhDiagGaussian``).

    Args:
        observation_dim: ``O``.
        action_dim: ``A``.
        action_low, action_high: action bounds, scalar or ``(A,)``; also the uniform prior's box. Default ``[-1, 1]``.
        hidden_sizes: hidden widths of actor and critics. Default ``(256, 256, 256)`` (OfflineRL-Kit's COMBO).
        actor_lr, critic_lr, alpha_lr: Adam learning rates. Defaults 1e-4, 3e-4, 1e-4 (OfflineRL-Kit's COMBO).
        beta_lr: Adam learning rate of ``log β`` with ``learn_beta``. Default 3e-4 (OfflineRL-Kit ``cql-alpha-lr``).
        gamma: discount. Default 0.99.
        tau: soft target-update rate, ``target <- (1 - tau) target + tau online``. Default 0.005.
        target_entropy, alpha_init, max_alpha: as :class:`COMBOLoss` (``"auto"``, 1.0, ``None``).
        log_std_min, log_std_max: bounds of the actor's log σ (nats). Default ``-5, 2``.
        num_qvalue_nets, beta, num_action_samples, temperature, prior, rho, deterministic_backup: see
            :class:`COMBOLoss` (defaults 2, 5.0, 10, 1.0, ``"uniform"``, ``"model"``, ``True``).
        learn_beta, beta_threshold, max_beta: see :class:`COMBOLoss` (defaults ``False``, 10.0, 1e6).
        prior_update_interval: updates between refreshes of the previous-policy prior. Default 1000 (one iteration
            of Algorithm 1 at OfflineRL-Kit's rollout frequency). Ignored with ``prior="uniform"``.
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
        cudagraphs: capture the update in a CUDA graph (CUDA only; ``capturable`` Adams; fixed batch size and a fixed
            number of real rows per batch). Default ``False``.

    Raises:
        ValueError: a device this machine lacks, ``cudagraphs=True`` off CUDA, a bad ``compile``, non-positive sizes,
            ``tau`` outside ``(0, 1]``, a non-positive ``prior_update_interval``, bad bounds, or any :class:`COMBOLoss`
            argument outside its range.

    Batches given to :meth:`update` are TensorDicts of shape ``(B,)`` with TorchRL's keys and ``"is_real"``:
    ``"observation" (B, O)``, ``"action" (B, A)``, ``"is_real" (B, 1)`` (bool), ``("next", "observation") (B, O)``,
    ``("next", "reward") (B, 1)``, ``("next", "terminated") (B, 1)`` and ``("next", "done") (B, 1)``. Truncated
    transitions bootstrap.

    Reference: Yu et al., arXiv:2102.08363; Kumar et al., arXiv:2006.04779; OfflineRL-Kit (COMBO).

    Examples:
        >>> agent = COMBO(observation_dim=3, action_dim=2, hidden_sizes=(32, 32), seed=0)
        >>> batch = TensorDict({"observation": torch.randn(8, 3), "action": torch.rand(8, 2) * 2 - 1,
        ...     "is_real": (torch.arange(8) < 4).unsqueeze(-1),
        ...     "next": {"observation": torch.randn(8, 3), "reward": torch.randn(8, 1),
        ...              "terminated": torch.zeros(8, 1, dtype=torch.bool),
        ...              "done": torch.zeros(8, 1, dtype=torch.bool)}}, batch_size=[8])
        >>> metrics = agent.update(batch)
        >>> metrics["beta"], sorted(metrics)[:4]
        (5.0, ['alpha', 'beta', 'cql_gap', 'entropy'])
    """

    METRICS = COMBOLoss.METRICS

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        action_low: float | torch.Tensor = -1.0,
        action_high: float | torch.Tensor = 1.0,
        hidden_sizes: Sequence[int] = (256, 256, 256),
        actor_lr: float = 1e-4,
        critic_lr: float = 3e-4,
        alpha_lr: float = 1e-4,
        beta_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        target_entropy: str | float = "auto",
        alpha_init: float = 1.0,
        max_alpha: float | None = None,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        num_qvalue_nets: int = 2,
        beta: float = 5.0,
        num_action_samples: int = 10,
        temperature: float = 1.0,
        prior: str = "uniform",
        prior_update_interval: int = 1000,
        rho: str = "model",
        deterministic_backup: bool = True,
        learn_beta: bool = False,
        beta_threshold: float = 10.0,
        max_beta: float = 1e6,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        compile: bool | str | dict = False,
        cudagraphs: bool = False,
    ) -> None:
        super().__init__()
        check_dims(observation_dim, action_dim)
        self._init_device(device, compile, cudagraphs)
        check_tau(tau)
        check_count("prior_update_interval", prior_update_interval)
        if not log_std_min < log_std_max:
            raise ValueError(f"log_std_min must be < log_std_max, got {log_std_min}, {log_std_max}")
        low, high = check_bounds(action_dim, action_low, action_high)
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.prior_update_interval = prior_update_interval
        with seeded(seed):
            self.policy = make_sac_actor(observation_dim, action_dim, hidden_sizes, low, high,
                                         log_std_bounds=(log_std_min, log_std_max))
            qnet = MLP(in_features=observation_dim + action_dim, out_features=1, num_cells=list(hidden_sizes),
                       activation_class=nn.ReLU)
            self.loss_module = COMBOLoss(
                self.policy, _ValueOperator(qnet, in_keys=["observation", "action"]),
                num_qvalue_nets=num_qvalue_nets, beta=beta, num_action_samples=num_action_samples,
                temperature=temperature, prior=prior, rho=rho, deterministic_backup=deterministic_backup,
                learn_beta=learn_beta, beta_threshold=beta_threshold, max_beta=max_beta, gamma=gamma,
                alpha_init=alpha_init, max_alpha=max_alpha, target_entropy=target_entropy,
                action_spec=self.policy.spec["action"])
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._place()  # onto the device before the target updater and the optimisers read the parameters
        self.target_updater = _ForeachSoftUpdate(self.loss_module, tau=tau)
        self._make_optimizers(actor_lr, critic_lr, alpha_lr)
        self.OPTIMIZERS = ("actor_optim", "critic_optim", "alpha_optim")
        if learn_beta:
            self.beta_optim = self._adam([self.loss_module.log_beta], beta_lr)
            self.OPTIMIZERS += ("beta_optim",)

    def update(self, batch: TensorDictBase, sync: bool = True) -> dict[str, float] | dict[str, torch.Tensor]:
        """One gradient step on actor, critics, α (and β), a soft target update, and the prior's refresh when due.

        Args:
            batch: transitions, shape ``(B,)`` (see the class docstring for keys), best already on :attr:`device`
                (else moved there once per call). ``"td_error" (B,)`` is written into it (into the moved copy when
                it was elsewhere).
            sync: ``True``: floats (one device-to-host copy); ``False``: detached 0-d tensors on :attr:`device`
                without a synchronisation of their own (the batch's real/model split is still read on the host).

        Returns:
            Floats (or 0-d tensors), see :class:`COMBOLoss`: ``loss_actor``, ``loss_qvalue`` (Bellman part, squared
            reward units), ``loss_cql`` (``β Σ_j gap_j``), ``loss_alpha``, ``loss_beta``, ``alpha``, ``entropy``
            (nats), ``beta``, ``cql_gap``, ``q_data``, ``q_pushdown`` and ``policy_gap`` (reward units).

        Raises:
            KeyError: the batch lacks a key the update reads (a ``MissingKeysError`` naming the missing keys,
                every expected entry and its shape, and the batch's keys).
            ValueError: an entry's last dimension is not the expected one (``O``, ``A`` or 1).
            TypeError: ``batch`` is not a TensorDict, or an observation, action or reward is not floating point.
        """
        metrics = self._run(batch, sync)
        self.num_updates += 1
        if self.loss_module.prior == "previous_policy" and int(self.num_updates) % self.prior_update_interval == 0:
            self.loss_module.update_prior()
        return metrics

    @property
    def _EXTRA_KEYS(self) -> tuple:  # noqa: N802 - read by _Learner._batch_entries: the batch's "is_real" flag
        return (self.loss_module.tensor_keys.is_real,)

    def _compile_input(self, batch: TensorDictBase) -> TensorDictBase:
        # the real/model split is read on the host here, outside the compiled (or captured) loss
        real_rows, rho_rows = self.loss_module.split_rows(batch)
        inputs = {"batch": batch}
        if real_rows is not None:
            inputs["real_rows"] = real_rows
        if rho_rows is not None:
            inputs["rho_rows"] = rho_rows
        return TensorDict(inputs, batch_size=[])

    def _batch_of(self, inputs: TensorDictBase) -> TensorDictBase:
        return inputs.get("batch")

    def _loss_and_metrics(self, inputs: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        rows = (inputs.get("real_rows", None), inputs.get("rho_rows", None))
        values = self.loss_module._losses(inputs.get("batch"), rows)  # forward() without the output TensorDict
        return values[0] + values[1] + values[2] + values[3] + values[4], torch.stack([v.detach() for v in values])
