"""Exploration wrappers for online fine-tuning: none, Gaussian action noise, and O3F's optimistic action selection.

An explorer is a TorchRL policy module around an actor: it reads what the actor reads and writes ``"action"``.
Three are interchangeable (:data:`EXPLORERS`): ``"none"`` (the actor itself, ``a ~ π(s)``), ``"gaussian"``
(``a + ε``, ``ε ~ N(0, σ²)``, clipped to the bounds: TorchRL's :class:`~torchrl.modules.AdditiveGaussianModule`)
and ``"o3f"`` (:class:`OptimisticExplorer`: the best of ``N`` candidates around ``a`` by the critic ensemble's
score). :class:`SwitchableExplorer` holds several around one actor and swaps the acting one with ``.use(name)``,
which is the whole swap on a running collector: TorchRL's :class:`~torchrl.collectors.Collector` calls the policy
object it was given (same process, same device), and explorers read the learner's actor and critics live, so no
weights are copied and no learner parameter changes.

Reference: Mark et al., "Fine-Tuning Offline Policies With Optimistic Action Selection" / "Offline-to-Online
Fine-tuning with Optimistic Action Selection" (O3F, OpenReview 2x8EKbGU51k), §5.1 (candidates
``c_i ~ N(a, σ²)``, ``a ~ π(s)``), §5.2 Eq. 2 (``f = Q_mean + ω Q_std``, population std), Algorithm 1, §5.3
(``N = 100``, ``σ = 0.2`` locomotion / 0.05 other tasks, ``ω = 0``), §6.3 (the Gaussian-noise baseline with the same
σ); Chen et al., "Randomized Ensembled Double Q-Learning", arXiv:2101.05982 (REDQ, the critic ensemble's
random-subset targets, used through :class:`~cmbrl.agents.AWAC`'s ``target_subset_size``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from torch import nn
from torchrl.data import Bounded, Composite
from torchrl.envs.utils import ExplorationType, exploration_type
from torchrl.modules import AdditiveGaussianModule
from torchrl.objectives.utils import _vmap_func

from ._common import MissingKeysError
from .awac import AWACLoss

__all__ = ["EXPLORERS", "OptimisticExplorer", "SwitchableExplorer", "ensemble_qvalues", "make_explorer",
           "make_explorers"]

EXPLORERS = ("none", "gaussian", "o3f")
"""Explorer names accepted by :func:`make_explorer`."""

QValues = Callable[[TensorDictBase, torch.Tensor], torch.Tensor]


def ensemble_qvalues(critics) -> QValues:
    """A function ``(tensordict (B,), action (K, B, A)) -> Q (N, K, B)`` over a critic ensemble of ``N`` members.

    Accepted forms of ``critics``:

    * a learner holding a loss module in ``.loss_module`` (:class:`~cmbrl.agents.AWAC`,
      :class:`~cmbrl.agents.SAC`): its loss module, as below;
    * an :class:`~cmbrl.agents.AWACLoss`: :meth:`~cmbrl.agents.AWACLoss.qvalues` on its online (not target)
      critics, one batched matmul per layer for all members;
    * any TorchRL loss module with vmapped critics, i.e. ``qvalue_network`` and stacked ``qvalue_network_params``
      (:class:`~torchrl.objectives.IQLLoss`, :class:`~torchrl.objectives.SACLoss`, ``CQLLoss``): one
      ``torch.vmap`` call over the members (TorchRL's ``_vmap_func``, as the losses use);
    * a callable with the signature above (e.g. a hand-built critic in a test), used as is.

    The returned function reads the parameters at call time, so it follows the learner's updates (optimiser
    steps and ``load_state_dict`` write in place). Observations are broadcast over the leading ``K`` dimension.

    Raises:
        TypeError: for anything else (the message names the type received).
    """
    loss = getattr(critics, "loss_module", critics)
    if isinstance(loss, AWACLoss):
        return lambda tensordict, action: loss.qvalues(tensordict, action, loss.qvalue_network_params)
    if isinstance(loss, nn.Module) and hasattr(loss, "qvalue_network") and hasattr(loss, "qvalue_network_params"):
        qnet = loss.qvalue_network
        vmapped = _vmap_func(qnet, (None, 0), randomness="different")
        out_key = qnet.out_keys[0]
        action_key = getattr(getattr(loss, "tensor_keys", None), "action", "action")

        def qvalues(tensordict: TensorDictBase, action: torch.Tensor) -> torch.Tensor:
            params = loss.qvalue_network_params
            if params.ndim == 0:  # TorchRL stores a single critic without the ensemble dimension
                params = params.unsqueeze(0)
            batch = action.shape[:-1]
            inputs = {key: action if key == action_key else tensordict.get(key).expand(*batch, -1)
                      for key in qnet.in_keys}
            return vmapped(TensorDict(inputs, batch_size=batch), params).get(out_key).squeeze(-1)

        return qvalues
    if callable(loss) and not isinstance(loss, nn.Module):
        return loss
    raise TypeError("critics must be an AWAC/SAC agent, an AWACLoss, a TorchRL loss module with qvalue_network and "
                    f"qvalue_network_params, or a callable (tensordict, action (K, B, A)) -> (N, K, B); got "
                    f"{type(critics).__name__}")


def _action_bounds(actor: nn.Module, action_spec, action_key) -> tuple[torch.Tensor, torch.Tensor]:
    spec = action_spec if action_spec is not None else getattr(actor, "spec", None)
    if isinstance(spec, Composite):
        spec = spec.get(action_key, None)
    if not isinstance(spec, Bounded):
        raise ValueError(f"need bounded actions: give action_spec=Bounded(...) or an actor whose spec has a Bounded "
                         f"{action_key!r} entry; got {type(spec).__name__}")
    return spec.space.low.clone(), spec.space.high.clone()


def _input_widths(actor: nn.Module) -> dict:
    """``{in_key: width}`` for an actor reading one key through an ``nn.Linear`` first (SAC's, AWAC's and BC's
    actors: the ``in_features`` of the first linear layer); ``{}`` when that cannot be read off the module."""
    in_keys = list(getattr(actor, "in_keys", ()))
    if len(in_keys) != 1:
        return {}
    first = next((m for m in actor.modules() if isinstance(m, nn.Linear)), None)
    if first is None or isinstance(first, nn.LazyLinear) or not first.in_features:
        return {}
    return {in_keys[0]: first.in_features}


def _check_input(what: str, tensordict, in_keys, widths: dict) -> None:
    """The explorers' input check: a TensorDict holding ``in_keys``, each with its width from ``widths``.

    Raises:
        TypeError: not a TensorDict.
        MissingKeysError: keys missing (the message names them, the expected keys and the keys present).
        ValueError: an observation's last dimension differs from the actor's input width.
    """
    if not isinstance(tensordict, TensorDictBase):
        raise TypeError(f"{what} takes a TensorDict with {list(in_keys)}, got {type(tensordict).__name__}")
    values = [tensordict.get(key, None) for key in in_keys]
    missing = [key for key, value in zip(in_keys, values) if value is None]
    if missing:
        expected = ", ".join(f"{key!r} (*B, {widths[key]})" if key in widths else repr(key) for key in in_keys)
        raise MissingKeysError(f"{what}: the tensordict is missing {', '.join(map(repr, missing))}; the actor reads "
                               f"{expected}; the tensordict has keys {list(tensordict.keys(True, True))}")
    for key, value in zip(in_keys, values):
        width = widths.get(key)
        if width is not None and (value.ndim == 0 or value.shape[-1] != width):
            raise ValueError(f"{what}: {key!r} must have shape (*B, {width}) (the actor's input width), got "
                             f"{tuple(value.shape)}")


class OptimisticExplorer(TensorDictModuleBase):
    r"""O3F's optimistic action selection around any actor: the best of ``N`` Gaussian candidates by the critics.

    Per state ``s`` (O3F, Algorithm 1, lines 2-4 and Eq. 2):

    1. ``a ~ π(s)``: the actor's action as the actor gives it under the current exploration type. In a collector
       (``ExplorationType.RANDOM``, TorchRL's default) that is a **sample** of the policy, as the paper writes
       (``a ~ π_φ(a|s)``), not its mean or mode.
    2. ``c_i = clip(a + σ ε_i, low, high)``, ``ε_i ~ N(0, I)``, ``i = 1..N`` (the paper does not say how
       candidates outside the action box are handled; clipping keeps them executable).
    3. ``f(s, c) = Q_mean(s, c) + ω Q_std(s, c)`` over the ``M`` critics, with the population std
       ``sqrt((1/M) Σ_j (Q_j - Q_mean)²)`` (Eq. 2).
    4. execute ``argmax_i f(s, c_i)`` (ties: the lowest ``i``).

    All states, all ``N + 1`` actions (the candidates and ``a`` itself, scored for logging only, never executed
    unless it is a candidate) and all critics go through **one** critic call (``(N + 1) · B`` rows per member).
    No gradients are taken. Under a non-random exploration type (``ExplorationType.DETERMINISTIC``, ``MODE``,
    ``MEAN``: evaluation) the module is the bare actor, as TorchRL's ``AdditiveGaussianModule`` is.

    Args:
        actor: a TorchRL policy module writing ``action_key`` (e.g. ``AWAC(...).policy``), with a
            :class:`~torchrl.data.Bounded` action spec unless ``action_spec`` is given.
        critics: the critic ensemble, in any form :func:`ensemble_qvalues` accepts (an AWAC agent or
            :class:`~cmbrl.agents.AWACLoss`, a TorchRL ``IQLLoss``/``SACLoss``, or a callable
            ``(tensordict (B,), action (K, B, A)) -> (M, K, B)``). Read live, never copied or modified.
        num_candidates: ``N`` candidates per state, ``>= 1``. Default 100 (O3F §5.3, every task).
        sigma: ``σ``, std of the candidates around ``a``, in action units, ``>= 0``. Default 0.2 (O3F §5.3,
            locomotion; 0.05 elsewhere). ``σ = 0`` executes ``a``.
        optimism: ``ω`` in Eq. 2, any finite float. Default 0 (O3F's main experiments; ``ω = 1`` in §6.3).
        action_spec: a :class:`~torchrl.data.Bounded` spec (or a Composite holding one under ``action_key``)
            giving the clip bounds; default the actor's ``spec``.
        action_key: where the actor writes its action and the explorer its choice. Default ``"action"``.
        score_key: where ``f`` of the executed candidate is written, shape ``(*B)``, reward units (a discounted
            return estimate). Default ``"explorer_score"``.
        policy_score_key: where ``f(s, a)`` of the actor's own action is written, ``(*B)``. Default
            ``"policy_score"``. ``score - policy_score`` is what the search gained over ``a`` by the critics'
            own estimate (negative when no candidate beats ``a``, which is not itself a candidate).
        generator: optional ``torch.Generator`` for the candidates' noise (the actor samples with its own RNG);
            best on the actor's device (one on another device draws there and the noise is moved).

    Devices: the explorer follows its actor and critics: the candidates and the noise are created on the device of
    the actor's action, and the clip bounds (from the actor's spec, which the learners move with their networks)
    are moved there if they are elsewhere. Give it tensordicts on the actor's device.

    Raises:
        ValueError: for ``num_candidates < 1``, a negative or non-finite ``sigma``, a non-finite ``optimism``,
            unbounded actions, or a critic function returning a shape other than ``(M, N + 1, B)``.
        TypeError: for a ``critics`` form :func:`ensemble_qvalues` does not accept.

    Cost (``benchmarks/explorer_speed.py``: O=11, A=3, 5 critics and actor 3 x 256, N = 100, one CPU thread, CPU
    time, on a 2-core machine with load average ~4.5): 4.3 ms per action on one state against 0.47 ms for the bare
    actor and 36.6 ms for one AWAC update (batch 256), i.e. 12 % of an update; 4.4 s for 1,000 states at once
    (compute bound: 101 actions x 5 critics x ~135k multiply-adds per state).

    Shapes: the input tensordict has any batch shape ``(*B)`` (``()`` for one state, as a single-env collector
    gives); actions ``(*B, A)``.

    Examples:
        >>> from cmbrl.agents import AWAC
        >>> agent = AWAC(3, 2, hidden_sizes=(16,), actor_hidden_sizes=(16,), num_qvalue_nets=5,
        ...              target_subset_size=2, seed=0)
        >>> explorer = OptimisticExplorer(agent.policy, agent, num_candidates=10)
        >>> td = explorer(TensorDict({"observation": torch.randn(4, 3)}, batch_size=[4]))
        >>> td["action"].shape, td["explorer_score"].shape, td["policy_score"].shape
        (torch.Size([4, 2]), torch.Size([4]), torch.Size([4]))
    """

    def __init__(
        self,
        actor: TensorDictModuleBase,
        critics,
        num_candidates: int = 100,
        sigma: float = 0.2,
        optimism: float = 0.0,
        *,
        action_spec=None,
        action_key="action",
        score_key="explorer_score",
        policy_score_key="policy_score",
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(num_candidates, int) or num_candidates < 1:
            raise ValueError(f"num_candidates must be an integer >= 1, got {num_candidates!r}")
        if not (float(sigma) >= 0 and torch.isfinite(torch.tensor(float(sigma)))):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        if not torch.isfinite(torch.tensor(float(optimism))):
            raise ValueError(f"optimism must be finite, got {optimism!r}")
        super().__init__()
        self.actor = actor
        self._qvalues = ensemble_qvalues(critics)
        low, high = _action_bounds(actor, action_spec, action_key)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.num_candidates, self.sigma, self.optimism = num_candidates, float(sigma), float(optimism)
        self.action_key, self.score_key, self.policy_score_key = action_key, score_key, policy_score_key
        self.generator = generator
        self.in_keys = list(actor.in_keys)
        self.out_keys = list(dict.fromkeys([*actor.out_keys, action_key, score_key, policy_score_key]))
        self._widths = _input_widths(actor)

    def scores(self, tensordict: TensorDictBase, action: torch.Tensor) -> torch.Tensor:
        """``f = Q_mean + ω Q_std`` (Eq. 2, population std) of ``action (K, B, A)`` at the states of
        ``tensordict (B,)``, shape ``(K, B)``, reward units. No gradients."""
        with torch.no_grad():
            q = self._qvalues(tensordict, action)
        if q.ndim != 3 or q.shape[1:] != action.shape[:-1]:
            raise ValueError(f"the critics returned shape {tuple(q.shape)}; expected (M, {action.shape[0]}, "
                             f"{action.shape[1]}) (members, candidates, states)")
        if self.optimism == 0.0:
            return q.mean(0)
        return q.mean(0) + self.optimism * q.std(0, correction=0)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Acts on ``tensordict (*B)``: writes ``action (*B, A)``, ``score_key (*B)`` and ``policy_score_key (*B)``.

        Raises:
            TypeError: ``tensordict`` is not a TensorDict.
            KeyError: a key the actor reads is missing (a ``MissingKeysError`` naming it and the keys present).
            ValueError: the observation's last dimension is not the actor's input width.
        """
        _check_input("OptimisticExplorer", tensordict, self.in_keys, self._widths)
        tensordict = self.actor(tensordict)
        if exploration_type() not in (ExplorationType.RANDOM, None):
            return tensordict
        batch = tensordict.batch_size
        action = tensordict.get(self.action_key)
        flat = tensordict.reshape(-1) if len(batch) != 1 else tensordict  # (B,)
        a = action.reshape(-1, action.shape[-1]).detach()  # (B, A)
        if self.generator is None or self.generator.device == a.device:
            noise = torch.randn((self.num_candidates, *a.shape), generator=self.generator, dtype=a.dtype,
                                device=a.device)
        else:  # a generator on another device than the actor: draw there, move once
            noise = torch.randn((self.num_candidates, *a.shape), generator=self.generator, dtype=a.dtype,
                                device=self.generator.device).to(a.device)
        if self.action_low.device != a.device:  # follow the actor (e.g. moved with .to() after construction)
            self.action_low, self.action_high = self.action_low.to(a.device), self.action_high.to(a.device)
        candidates = torch.clamp(a + self.sigma * noise, self.action_low, self.action_high)  # (N, B, A)
        scores = self.scores(flat, torch.cat([a.unsqueeze(0), candidates]))  # (N + 1, B): row 0 is a itself
        best, index = scores[1:].max(0)  # (B,)
        rows = torch.arange(a.shape[0], device=a.device)
        tensordict.set(self.action_key, candidates[index, rows].reshape(action.shape))
        tensordict.set(self.score_key, best.reshape(batch))
        tensordict.set(self.policy_score_key, scores[0].reshape(batch))
        return tensordict

    def extra_repr(self) -> str:
        return f"num_candidates={self.num_candidates}, sigma={self.sigma}, optimism={self.optimism}"


def make_explorer(name: str, actor: TensorDictModuleBase, critics=None, *, sigma: float = 0.2,
                  num_candidates: int = 100, optimism: float = 0.0, action_spec=None,
                  action_key="action") -> TensorDictModuleBase:
    """One explorer around ``actor``: ``"none"``, ``"gaussian"`` or ``"o3f"`` (see the module docstring).

    Args:
        name: one of :data:`EXPLORERS`.
        actor: the policy module (its action spec must be Bounded unless ``action_spec`` is given).
        critics: the critic ensemble for ``"o3f"`` (forms of :func:`ensemble_qvalues`); ignored otherwise.
        sigma: σ of the Gaussian noise and of O3F's candidates, action units. Default 0.2 (O3F §5.3, §6.3: the
            noise baseline uses O3F's σ).
        num_candidates, optimism: O3F's ``N`` and ``ω`` (:class:`OptimisticExplorer`).
        action_spec: bounds for clipping (default the actor's spec).
        action_key: the action's key. Default ``"action"``.

    Returns:
        ``"none"``: ``actor`` itself; ``"gaussian"``: ``TensorDictSequential(actor, AdditiveGaussianModule)`` with a
        constant σ (``sigma_init = sigma_end``), noise projected onto the action box; ``"o3f"``:
        :class:`OptimisticExplorer`. Each adds noise only under ``ExplorationType.RANDOM`` (or none set).

    Raises:
        ValueError: for an unknown name, a negative σ, ``"o3f"`` without critics, or unbounded actions.
    """
    if name not in EXPLORERS:
        raise ValueError(f"explorer must be one of {EXPLORERS}, got {name!r}")
    if not float(sigma) >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    if name == "none":
        return actor
    if name == "gaussian":
        low, high = _action_bounds(actor, action_spec, action_key)
        noise = AdditiveGaussianModule(Bounded(low=low, high=high, shape=low.shape), sigma_init=float(sigma),
                                       sigma_end=float(sigma), annealing_num_steps=1,
                                       action_key=action_key).to(low.device)  # the actor's spec's device
        return TensorDictSequential(actor, noise)
    if critics is None:
        raise ValueError("the 'o3f' explorer needs critics")
    return OptimisticExplorer(actor, critics, num_candidates, sigma, optimism, action_spec=action_spec,
                              action_key=action_key)


class SwitchableExplorer(TensorDictModuleBase):
    """Several explorers around one actor; the one named by :meth:`use` acts.

    Swapping explorers during a run is ``explorer.use(name)``, also on a running TorchRL
    :class:`~torchrl.collectors.Collector` built with this module as its policy (``collector.policy.use(name)``):
    the collector calls this very object (same process and device: TorchRL neither copies nor wraps a
    ``TensorDictModuleBase`` policy), so the next frame is taken by the new explorer. Nothing is copied and no
    parameter changes (the explorers hold no trainable state of their own; they share the learner's actor and
    read its critics live).

    Every call writes the same keys whichever explorer acts, so a collector's output keeps one layout: keys that
    some member writes and the active one does not (O3F's scores under ``"none"``/``"gaussian"``, or under a
    deterministic exploration type) are set to NaN of shape ``(*B)``, overwriting stale values (a collector
    reuses one tensordict from step to step).

    Args:
        explorers: ``name -> explorer`` (e.g. :func:`make_explorer` results around one actor); at least one.
        active: the name to start with. Default the first.

    Raises:
        ValueError: for no explorers, or an ``active``/:meth:`use` name not among them (the message lists them).

    Examples:
        >>> from cmbrl.agents import AWAC
        >>> agent = AWAC(3, 2, hidden_sizes=(16,), actor_hidden_sizes=(16,), num_qvalue_nets=5, seed=0)
        >>> explorer = make_explorers(agent.policy, agent, active="none")
        >>> explorer.use("o3f")
        >>> explorer.active
        'o3f'
    """

    def __init__(self, explorers: Mapping[str, TensorDictModuleBase], active: str | None = None) -> None:
        if not explorers:
            raise ValueError("need at least one explorer")
        super().__init__()
        self.explorers = nn.ModuleDict(dict(explorers))
        self._active = next(iter(self.explorers))
        if active is not None:
            self.use(active)
        self.in_keys = list(dict.fromkeys(k for e in self.explorers.values() for k in e.in_keys))
        self.out_keys = list(dict.fromkeys(k for e in self.explorers.values() for k in e.out_keys))
        self._action_key = next((e.action_key for e in self.explorers.values() if isinstance(e, OptimisticExplorer)),
                                "action")
        self._widths = {}
        for explorer in self.explorers.values():
            self._widths.update(explorer._widths if isinstance(explorer, OptimisticExplorer)
                                else _input_widths(getattr(explorer, "module", [explorer])[0]
                                                   if isinstance(explorer, TensorDictSequential) else explorer))
        self._scalar_keys = list(dict.fromkeys(
            k for e in self.explorers.values() if isinstance(e, OptimisticExplorer)
            for k in (e.score_key, e.policy_score_key)))

    @property
    def active(self) -> str:
        """The name of the explorer that acts."""
        return self._active

    def use(self, name: str) -> None:
        """Makes ``name`` the acting explorer from the next call on (the swap; changes no parameter)."""
        if name not in self.explorers:
            raise ValueError(f"no explorer {name!r}; have {list(self.explorers)}")
        self._active = name

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Runs the active explorer on ``tensordict (*B)``; sets the scalar keys it did not write to NaN.

        Raises:
            TypeError, KeyError, ValueError: as :meth:`OptimisticExplorer.forward`, for every explorer (``"none"`` and
                ``"gaussian"`` included): not a TensorDict, a missing key, a wrong observation width.
        """
        _check_input("SwitchableExplorer", tensordict, self.in_keys, self._widths)
        explorer = self.explorers[self._active]
        tensordict = explorer(tensordict)
        written = ((explorer.score_key, explorer.policy_score_key) if isinstance(explorer, OptimisticExplorer)
                   and exploration_type() in (ExplorationType.RANDOM, None) else ())
        device = tensordict.device
        for key in self._scalar_keys:  # overwrite, too: a collector reuses one tensordict from step to step
            if key not in written:
                if device is None:  # the device of the action the explorer just wrote
                    device = tensordict.get(self._action_key).device
                tensordict.set(key, torch.full(tensordict.batch_size, float("nan"), device=device))
        return tensordict

    def extra_repr(self) -> str:
        return f"active={self._active!r}"


def make_explorers(actor: TensorDictModuleBase, critics=None, names: Sequence[str] = EXPLORERS,
                   active: str | None = None, **kwargs) -> SwitchableExplorer:
    """A :class:`SwitchableExplorer` of :func:`make_explorer` ``(name, actor, critics, **kwargs)`` for each name.

    Args:
        actor, critics: as :func:`make_explorer`; ``critics`` is needed when ``"o3f"`` is among ``names``.
        names: explorer names, a subset of :data:`EXPLORERS`. Default all three.
        active: the acting one at first. Default the first name.
        **kwargs: ``sigma``, ``num_candidates``, ``optimism``, ``action_spec``, ``action_key``.

    Raises:
        ValueError: as :func:`make_explorer` and :class:`SwitchableExplorer`.
    """
    return SwitchableExplorer({name: make_explorer(name, actor, critics, **kwargs) for name in names}, active)
