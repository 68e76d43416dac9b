"""Pieces shared by the learners :class:`~cmbrl.agents.SAC`, :class:`~cmbrl.agents.AWAC` and
:class:`~cmbrl.agents.COMBO` and by their losses :class:`~cmbrl.agents.AWACLoss` and :class:`~cmbrl.agents.COMBOLoss`.

* argument checks (:func:`check_dims`, :func:`check_count`, :func:`check_tau`, :func:`check_bounds`);
* :func:`seeded`, the seeded network initialisation that leaves the global RNG untouched;
* :class:`_Learner`, the components' device and optimiser plumbing: placement on ``device``, foreach Adams, one
  update step (eager, or compiled as one function), state dicts that carry the optimisers;
* :class:`_ActorCriticLoss`, the fast paths of the losses (the actor run without a parameter swap, stacked MLP
  critics run as batched matmuls), the one-step target, the Bellman loss and :meth:`forward`.
"""
from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictParams
from tensordict.utils import NestedKey
from torch import nn
from torchrl.modules import MLP

from cmbrl.components.devices import check_compile_options, compile_step, resolve_device
from cmbrl.components.errors import MissingKeysError


def check_dims(observation_dim: int, action_dim: int) -> None:
    """Raises ``ValueError`` unless both sizes are positive."""
    if observation_dim <= 0 or action_dim <= 0:
        raise ValueError(f"observation_dim and action_dim must be positive, got {observation_dim}, {action_dim}")


def check_count(name: str, value, *, allow_bool: bool = True) -> None:
    """Raises ``ValueError`` unless ``value`` is an integer ``>= 1`` (``bool`` too, unless ``allow_bool=False``)."""
    if not isinstance(value, int) or (not allow_bool and isinstance(value, bool)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_tau(tau: float) -> None:
    """Raises ``ValueError`` unless the soft target-update rate is in ``(0, 1]``."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau!r}")


def check_bounds(action_dim: int, low: float | torch.Tensor,
                 high: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Action bounds as two float32 ``(A,)`` tensors; ``ValueError`` for a shape other than scalar or ``(A,)``, or
    bounds that are not finite with ``low < high``."""
    low = torch.as_tensor(low, dtype=torch.float32)
    high = torch.as_tensor(high, dtype=torch.float32)
    for name, bound in (("action_low", low), ("action_high", high)):
        if bound.ndim > 1 or (bound.ndim == 1 and bound.shape[0] != action_dim):
            raise ValueError(f"{name} must be a scalar or have shape ({action_dim},), got shape {tuple(bound.shape)}")
    low, high = low.expand(action_dim).clone(), high.expand(action_dim).clone()
    if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
        raise ValueError(f"action bounds must be finite with action_low < action_high, got {low.tolist()}, "
                         f"{high.tolist()}")
    return low, high


@contextlib.contextmanager
def seeded(seed: int | None):
    """Within the block, the global RNG is seeded with ``seed`` (if not ``None``) and restored after it."""
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def _key_name(key: NestedKey) -> str:
    """``'action'`` or ``('next', 'reward')`` (a one-element tuple key as its string)."""
    return repr(key if isinstance(key, str) or len(key) > 1 else key[0])


def check_batch_entries(batch: TensorDictBase, entries: Sequence[tuple[NestedKey, int | None, str]],
                        what: str) -> None:
    """Checks that ``batch`` holds every entry of ``entries`` (``(key, last dimension or None, kind)``, kind one of
    ``"float"``, ``"flag"``, ``"any"``) with that last dimension and a floating-point dtype for ``"float"``.

    Raises:
        MissingKeysError: keys are missing; the message names them, every expected entry and the batch's keys.
        ValueError: an entry's last dimension is not the expected one (the message names its shape).
        TypeError: a ``"float"`` entry is not floating point.
    """
    missing, values = [], []
    for key, _, _ in entries:
        value = batch.get(key, None)
        if value is None:
            missing.append(key)
        values.append(value)
    if missing:
        raise MissingKeysError(
            f"{what}: the batch is missing {', '.join(map(_key_name, missing))}; it expects "
            f"{describe_entries(entries)}; the batch has keys [{', '.join(map(_key_name, batch.keys(True, True)))}]")
    for (key, width, kind), value in zip(entries, values):
        if width is not None and (value.ndim == 0 or value.shape[-1] != width):
            raise ValueError(f"{what}: batch entry {_key_name(key)} must have shape (B, {width}), got "
                             f"{tuple(value.shape)}")
        if kind == "float" and not value.is_floating_point():
            raise TypeError(f"{what}: batch entry {_key_name(key)} must be floating point, got {value.dtype}")


def describe_entries(entries: Sequence[tuple[NestedKey, int | None, str]]) -> str:
    """``'observation' (B, 11), 'action' (B, 3), ...`` for :func:`check_batch_entries`' messages."""
    parts = []
    for key, width, kind in entries:
        shape = "(B, ...)" if width is None else f"(B, {width})"
        parts.append(f"{_key_name(key)} {shape}{' bool' if kind == 'flag' else ''}")
    return ", ".join(parts)


def on_device(batch: TensorDictBase, device: torch.device) -> TensorDictBase:
    """``batch`` itself when all its tensors are on ``device`` (no copy), else ``batch.to(device)`` (one copy).

    Raises ``TypeError`` naming the type received when ``batch`` is not a TensorDict."""
    if not isinstance(batch, TensorDictBase):
        raise TypeError(f"batch must be a TensorDict of transitions, got {type(batch).__name__}")
    where = batch.device
    if where == device or (where is None and all(t.device == device for t in batch.values(True, True))):
        return batch
    return batch.to(device)


@contextlib.contextmanager
def no_distribution_validation():
    """Within the block, ``torch.distributions`` skips its argument checks (``validate_args`` defaults to
    ``False``), restored after it. The checks read every parameter back on the host (``bool(valid.all())``): one
    synchronisation per distribution built on a GPU, and an error inside a CUDA-graph capture."""
    previous = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(previous)


def move_policy_extras(policy: nn.Module, device: torch.device) -> None:
    """Moves what ``nn.Module.to`` leaves behind in a TorchRL policy: the tensors in the
    ``distribution_kwargs`` of its ``ProbabilisticTensorDictModule`` s (``TanhNormal``'s ``low``/``high``) and its
    action spec (so explorers and collectors read bounds on the policy's device)."""
    for module in policy.modules():
        kwargs = getattr(module, "distribution_kwargs", None)
        if isinstance(kwargs, dict):
            for key, value in kwargs.items():
                if isinstance(value, torch.Tensor):
                    kwargs[key] = value.to(device)
    spec = getattr(policy, "spec", None)
    if spec is not None:
        policy.spec = spec.to(device)


def _optimizer_state_to(optim: torch.optim.Optimizer, device: torch.device, capturable: bool) -> None:
    """After ``Optimizer.load_state_dict``: the ``capturable`` flag this learner was built with, and Adam's
    ``step`` counters where they belong (on the parameters' device when capturable, on the CPU otherwise).

    ``Optimizer.load_state_dict`` already casts the moments (``exp_avg``, ...) to each parameter's device and dtype,
    but keeps the saved ``capturable`` flag and leaves ``step`` where it was saved unless that flag is set; a
    checkpoint of a CUDA-graph learner (``capturable=True``, ``step`` on the GPU) loaded on the CPU would otherwise
    keep a CUDA ``step`` and a flag the CPU Adam refuses."""
    for group in optim.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
    for state in optim.state.values():
        step = state.get("step")
        if isinstance(step, torch.Tensor):
            where = device if capturable else torch.device("cpu")
            if step.device != where:
                state["step"] = step.to(where, torch.float32 if capturable else step.dtype)


def _without_fullgraph(compile):
    """``compile`` without a ``fullgraph`` entry (torch.optim breaks the graph around ``step`` by design)."""
    if isinstance(compile, dict) and "fullgraph" in compile:
        return {key: value for key, value in compile.items() if key != "fullgraph"}
    return compile


class _Learner:
    """What the components (an ``nn.Module`` owning ``loss_module`` and ``target_updater``) share around their loss:

    * :meth:`_init_device`/:meth:`_place`: the ``device``, ``compile`` and ``cudagraphs`` arguments (checked), and
      the networks moved onto ``device`` (the loss module with its targets, ``log α``, bounds, the policy's
      distribution bounds and spec) before the optimisers are built;
    * :meth:`_make_optimizers`: foreach Adams on the loss module's actor and critic parameters (and ``log α``),
      ``capturable`` under CUDA graphs;
    * :meth:`_step`: one gradient step of the optimisers named in ``OPTIMIZERS`` on a summed loss, then the soft
      target update;
    * :meth:`_run`: :meth:`update`'s common part: the batch moved to ``device`` if it is elsewhere, the subclass's
      ``_loss_and_metrics`` and the step run eagerly or compiled (:meth:`_build_compiled_update`), the metrics
      returned as floats (``sync=True``) or as 0-d tensors on ``device`` (``sync=False``); off the eager CPU path
      ``torch.distributions``' argument checks are off during the update (:func:`no_distribution_validation`);
    * ``state_dict``/``load_state_dict`` that also carry the optimisers named in ``OPTIMIZERS`` (a checkpoint
      resumes training exactly, Adam moments included);
    * a second, critic-only step (``part="critic"`` of :meth:`_run`): the subclass's ``_critic_loss_and_metrics``,
      only the optimisers in ``CRITIC_OPTIMIZERS`` and the target update, metrics ``CRITIC_METRICS``; the learners
      expose it as ``update_critic`` (REDQ's G critic updates per actor update, arXiv:2101.05982 Algorithm 1).
    """

    OPTIMIZERS: tuple[str, ...] = ()
    METRICS: tuple[str, ...] = ()
    CRITIC_OPTIMIZERS: tuple[str, ...] = ("critic_optim",)
    CRITIC_METRICS: tuple[str, ...] = ()

    def _init_device(self, device: str | torch.device, compile: bool | str | dict, cudagraphs: bool) -> None:
        """Resolves and checks ``device``, ``compile`` and ``cudagraphs`` (``ValueError`` naming what was given)."""
        self.device = resolve_device(device)
        check_compile_options(self.device, compile, cudagraphs)
        self._compile, self.cudagraphs = compile, bool(cudagraphs)  # not self.compile: nn.Module.compile
        self._compiled_updates = {}  # part ("all" or "critic") -> the compiled update

    def _place(self) -> None:
        """Moves the networks onto ``self.device``; under ``compile`` or ``cudagraphs``, the critics run through
        autograd (the hand-written ``_StackedReluMLP`` backward breaks dynamo, and its workspace of reused buffers
        is not capturable). Call before building the optimisers."""
        if self.device.type != "cpu":
            self.to(self.device)
            move_policy_extras(self.policy, self.device)
        if (self._compile is not False or self.cudagraphs) and hasattr(self.loss_module, "_fused"):
            self.loss_module._fused = False  # its reused workspace buffers are no place for a captured graph either

    def _adam(self, params, lr: float) -> torch.optim.Adam:
        """A foreach Adam (``capturable`` under CUDA graphs: its step counter stays on the GPU)."""
        # foreach: the multi-tensor Adam, bit-identical to the default single-tensor loop on CPU and faster
        return torch.optim.Adam(params, lr=lr, foreach=True, capturable=self.cudagraphs)

    def _make_optimizers(self, actor_lr: float, critic_lr: float, alpha_lr: float | None = None) -> None:
        """Sets ``actor_optim``, ``critic_optim`` and, given ``alpha_lr``, ``alpha_optim`` (on ``log_alpha``)."""
        self.actor_optim = self._adam(self.loss_module.actor_network_params.flatten_keys().values(), actor_lr)
        self.critic_optim = self._adam(self.loss_module.qvalue_network_params.flatten_keys().values(), critic_lr)
        if alpha_lr is not None:
            self.alpha_optim = self._adam([self.loss_module.log_alpha], alpha_lr)

    def _zero_grad(self, optimizers: tuple[str, ...] | None = None) -> None:
        """``Optimizer.zero_grad(set_to_none=True)`` of ``optimizers`` (default ``OPTIMIZERS``), without its profiler
        scope."""
        for name in self.OPTIMIZERS if optimizers is None else optimizers:
            for group in getattr(self, name).param_groups:
                for param in group["params"]:
                    param.grad = None

    def _optim_step(self, optimizers: tuple[str, ...] | None = None) -> None:
        """Steps ``optimizers`` (default ``OPTIMIZERS``), then the soft target update."""
        for name in self.OPTIMIZERS if optimizers is None else optimizers:
            getattr(self, name).step()
        self.target_updater.step()

    def _step(self, loss: torch.Tensor, optimizers: tuple[str, ...] | None = None) -> None:
        """Clears the gradients of ``optimizers`` (default ``OPTIMIZERS``), backpropagates ``loss``, steps them,
        updates the targets."""
        self._zero_grad(optimizers)
        loss.backward()
        self._optim_step(optimizers)

    def _part(self, part: str) -> tuple[object, tuple[str, ...], tuple[str, ...]]:
        """``(loss-and-metrics function, optimisers, metric names)`` of an update ``part``: ``"all"`` (the learner's
        whole update) or ``"critic"`` (critics only, :meth:`update_critic`)."""
        if part == "all":
            return self._loss_and_metrics, self.OPTIMIZERS, self.METRICS
        if not self.CRITIC_METRICS:
            raise NotImplementedError(f"{type(self).__name__} has no critic-only update")
        return self._critic_loss_and_metrics, self.CRITIC_OPTIMIZERS, self.CRITIC_METRICS

    def _critic_loss_and_metrics(self, inputs: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """The critic-only loss and its detached metrics stacked in ``CRITIC_METRICS`` order."""
        raise NotImplementedError

    def _batch_entries(self) -> tuple[tuple[NestedKey, int | None, str], ...]:
        """What :meth:`update` reads from a batch, as :func:`check_batch_entries` takes it: the loss module's
        transition keys (observations ``O`` wide, the action ``A`` wide, under ``"next"`` the observations, the
        reward and the terminated flag, each ``1`` wide) and the subclass's ``_EXTRA_KEYS``. Built once."""
        entries = self.__dict__.get("_batch_entries_cache")
        if entries is None:
            loss = self.loss_module
            keys = loss.tensor_keys
            extra = getattr(self, "_EXTRA_KEYS", ())
            entries = []
            for key in loss._transition_in_keys(*extra):
                leaf = key[-1] if isinstance(key, tuple) else key
                if leaf == keys.action:
                    entries.append((key, self.action_dim, "float"))
                elif leaf in (keys.reward,):
                    entries.append((key, 1, "float"))
                elif leaf == keys.terminated or key in extra:
                    entries.append((key, 1, "flag"))
                elif leaf == "observation":
                    entries.append((key, self.observation_dim, "float"))
                else:
                    entries.append((key, None, "any"))
            entries = self.__dict__["_batch_entries_cache"] = tuple(entries)
        return entries

    def _compile_input(self, batch: TensorDictBase) -> TensorDictBase:
        """What :meth:`_loss_and_metrics` takes: the batch (COMBO wraps it with its real/model row indices)."""
        return batch

    def _batch_of(self, inputs: TensorDictBase) -> TensorDictBase:
        """The batch inside :meth:`_compile_input`'s output (the one the loss writes its priority into)."""
        return inputs

    def _loss_and_metrics(self, inputs: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss to backpropagate and the detached metrics stacked in ``METRICS`` order,
        ``(len(METRICS),)``, from :meth:`_compile_input`'s output on ``device``."""
        raise NotImplementedError

    def _build_compiled_update(self, part: str = "all"):
        """The compiled update of ``part`` (see :meth:`_part`): the loss (forward; AOTAutograd compiles its backward)
        and the optimiser + target step as two ``torch.compile`` d functions, the backward between them (a graph
        break in any case: two functions spare dynamo the restart it makes at a break inside one, ~3x less compile
        time), the whole captured by ``CudaGraphModule`` under ``cudagraphs``
        (:func:`~cmbrl.components.devices.compile_step`). ``compile={"fullgraph": True, ...}`` applies to the loss
        only: torch.optim breaks the graph around every ``Optimizer.step`` on purpose."""
        loss_and_metrics, optimizers, _ = self._part(part)
        loss_fn = compile_step(loss_and_metrics, compile=self._compile)
        step_fn = compile_step(lambda: self._optim_step(optimizers), compile=_without_fullgraph(self._compile))

        def update(inputs: TensorDictBase) -> TensorDictBase:
            loss, metrics = loss_fn(inputs)
            self._zero_grad(optimizers)
            loss.backward()
            step_fn()
            out = {"metrics": metrics}
            # a captured graph writes into its own copy of the batch: hand the priority back to _run
            priority = self._batch_of(inputs).get(self._priority_key, None)
            if priority is not None:
                out["priority"] = priority.detach()
            return TensorDict(out, batch_size=[])

        return compile_step(update, compile=False, cudagraphs=self.cudagraphs)

    @property
    def _priority_key(self):
        return getattr(getattr(self.loss_module, "tensor_keys", None), "priority", "td_error")

    def _run(self, batch: TensorDictBase, sync: bool, part: str = "all"):
        """:meth:`update`'s (``part="all"``) or ``update_critic``'s (``part="critic"``) body: ``batch`` onto
        ``device`` (one copy if elsewhere), the update eager or compiled, the metrics as floats (``sync``) or 0-d
        tensors on ``device``."""
        loss_and_metrics, optimizers, names = self._part(part)
        batch = on_device(batch, self.device)
        # a missing key or a wrong width is named here, not as an AttributeError or a matmul error inside the loss
        check_batch_entries(batch, self._batch_entries(), f"{type(self).__name__}.update")
        if self._compile is False and not self.cudagraphs:
            inputs = self._compile_input(batch)
            if self.device.type == "cpu":  # the eager CPU path, torch.distributions' checks on as everywhere
                loss, values = loss_and_metrics(inputs)
                self._step(loss, optimizers)
            else:  # on a GPU the checks would synchronise at every distribution
                with no_distribution_validation():
                    loss, values = loss_and_metrics(inputs)
                    self._step(loss, optimizers)
        else:
            if part not in self._compiled_updates:
                self._compiled_updates[part] = self._build_compiled_update(part)
            # a shallow copy without the priority an earlier update wrote: a batch given twice keeps the structure
            # the compiled graph was traced (or captured) with, instead of a recompilation per new key set
            inputs = self._compile_input(batch.exclude(self._priority_key))
            with no_distribution_validation():  # traced (and captured) without host reads
                out = self._compiled_updates[part](inputs)
            values = out.get("metrics")
            if not sync and not self.cudagraphs:
                # inductor's CUDA-graph modes ("reduce-overhead") reuse their output buffers at the next call
                values = values.clone()
            priority = out.get("priority", None)
            if priority is not None:
                batch.set(self._priority_key, priority)
        if sync:
            return dict(zip(names, values.tolist()))  # one device-to-host copy for all metrics
        return dict(zip(names, values.unbind()))

    def state_dict(self, *args, **kwargs):  # noqa: D102 - adds optimiser states to the module's
        state = {"modules": super().state_dict(*args, **kwargs)}
        state["optimizers"] = {name: getattr(self, name).state_dict() for name in self.OPTIMIZERS}
        return state

    def load_state_dict(self, state, strict: bool = True):  # noqa: D102
        super().load_state_dict(state["modules"], strict=strict)
        for name, optim_state in state["optimizers"].items():
            # torch.optim keeps same-device state tensors by reference: copy, or two agents share Adam moments
            optim = getattr(self, name)
            optim.load_state_dict(copy.deepcopy(optim_state))
            for group in optim.param_groups:  # states saved before foreach=True carry foreach=None
                group["foreach"] = True
            _optimizer_state_to(optim, self.device, self.cudagraphs)


def _stacked_mlp_plan(qvalue_network: TensorDictModule, params: TensorDictParams):
    """How to run ``qvalue_network`` on its stacked ``(N, ...)`` parameters with batched matmuls, or ``None``.

    Applies when the critic is a TensorDictModule around a TorchRL :class:`~torchrl.modules.MLP` (inputs
    concatenated in ``in_keys`` order) of ``nn.Linear`` layers and parameter-free elementwise/last-dimension layers
    (ReLU, Tanh, ...). Returns a list whose items are either ``(weight_key, bias_key | None)`` or a layer to apply.
    """
    module = getattr(qvalue_network, "module", None)
    if not isinstance(qvalue_network, TensorDictModule):
        return None
    if not isinstance(module, MLP) or module._reshape_out or len(qvalue_network.out_keys) != 1:
        return None
    keys = set(params.keys(True, True))
    plan = []
    for name, layer in module.named_children():
        if isinstance(layer, nn.Linear):
            weight, bias = ("module", name, "weight"), ("module", name, "bias")
            if weight not in keys:
                return None
            plan.append((weight, bias if layer.bias is not None else None))
        elif next(layer.parameters(), None) is not None or next(layer.buffers(), None) is not None:
            return None
        else:
            plan.append(layer)
    return plan


def critic_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The critic's inputs ``(*S, F_i)`` (broadcast to one batch shape) concatenated in order, as rows ``(R, ΣF)``."""
    x = torch.cat(tensors, -1) if len(tensors) > 1 else tensors[0]
    return x.reshape(-1, x.shape[-1])


class _ActorCriticLoss:
    """What :class:`~cmbrl.agents.AWACLoss` and :class:`~cmbrl.agents.COMBOLoss` share (a mixin placed before their
    TorchRL base class; the subclass provides ``_losses`` and ``out_keys`` and calls :meth:`_init_fast_paths` at the
    end of its construction):

    * the actor is run on its own tensors, without TorchRL's parameter swap, when ``actor_network_params`` are
      the actor module's own (``convert_to_functional`` shares them; checked again after device/dtype casts);
    * stacked MLP critics run as one batched matmul per layer over the ``(N, out, in)`` weights
      (:meth:`_stacked_qvalues`), what TorchRL's vmap computes without its per-call dispatch;
    * the one-step target (:meth:`_one_step_target`), the Bellman loss with its priority (:meth:`_bellman_loss`),
      and :meth:`forward` around ``_losses``.
    """

    def _init_fast_paths(self) -> None:
        self._actor_shared = self._actor_params_shared()
        self._plan = _stacked_mlp_plan(self.qvalue_network, self.qvalue_network_params)
        # Linear/ReLU critics with one output unit run as one autograd node with a lean backward (_StackedReluMLP)
        self._fused = _relu_chain(self._plan) and self.qvalue_network.module[-1].out_features == 1
        self._workspace: dict = {}  # the fused critics' reused buffers (see _StackedReluMLP)

    def _actor_params_shared(self) -> bool:
        """Whether ``actor_network_params`` are the actor module's own tensors (so no swap is needed to run it)."""
        params = {".".join(key): value for key, value in self.actor_network_params.items(True, True)}
        own = dict(self.actor_network.named_parameters())
        own.update(self.actor_network.named_buffers())
        return params.keys() == own.keys() and all(params[key] is own[key] for key in own)

    def _apply(self, *args, **kwargs):  # device/dtype casts may replace parameter tensors: check the sharing again
        out = super()._apply(*args, **kwargs)
        self._actor_shared = self._actor_params_shared()
        return out

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass  # no value estimator: the one-step target is computed in forward

    def _transition_in_keys(self, *extra: NestedKey) -> list[NestedKey]:
        """The keys a batch must hold: observations, action, ``extra``, the observations, reward and terminated flag
        under ``"next"``."""
        keys = self.tensor_keys
        obs_keys = [k for k in (*self.actor_network.in_keys, *self.qvalue_network.in_keys) if k != keys.action]
        obs_keys = list(dict.fromkeys(obs_keys))
        return [*obs_keys, keys.action, *extra, *[("next", k) for k in obs_keys], ("next", keys.reward),
                ("next", keys.terminated)]

    def _critic_values(self, x: torch.Tensor, params: TensorDictBase, detach: bool = False) -> torch.Tensor:
        """``(N, R)`` outputs of the stacked MLP critics on rows ``x (R, F)``: the fused ReLU path when it applies
        (``self._fused``), else :meth:`_stacked_qvalues`. ``detach``: the weights are read detached."""
        if self._fused:
            flat = [t for step in self._plan[::2] for t in (params.get(step[0]), params.get(step[1]))]
            if detach:
                flat = [t.detach() for t in flat]
            return _StackedReluMLP.apply(self._workspace, x, *flat)
        return self._stacked_qvalues(x, params, detach=detach).squeeze(-1)

    def _stacked_qvalues(self, x: torch.Tensor, params: TensorDictBase, subset: torch.Tensor | None = None,
                         detach: bool = False) -> torch.Tensor:
        """``(N, R, 1)`` (or ``(M, R, 1)``) outputs of the stacked MLP critics (``self._plan``) on rows ``x (R, F)``.

        One batched matmul per layer over the stacked ``(N, out, in)`` weights of ``params`` (or of
        ``params[subset]``, ``subset`` ``(M,)`` indices), what vmap computes without its per-call dispatch (~1 ms
        less per call on CPU for 3 x 256 twin critics). ``detach``: the weights are read detached.
        """
        n = self.num_qvalue_nets if subset is None else subset.shape[0]
        x = x.expand(n, *x.shape)
        for step in self._plan:
            if isinstance(step, tuple):
                weight = params.get(step[0])
                bias = None if step[1] is None else params.get(step[1])
                if subset is not None:
                    weight, bias = weight[subset], None if bias is None else bias[subset]
                if detach:
                    weight, bias = weight.detach(), None if bias is None else bias.detach()
                x = torch.bmm(x, weight.mT) if bias is None else torch.baddbmm(bias.unsqueeze(-2), x, weight.mT)
            else:
                x = step(x)
        return x

    def _one_step_target(self, next_td: TensorDictBase, next_value: torch.Tensor) -> torch.Tensor:
        """``y = r + γ (1 - terminated) V(s')`` (TD(0), as TorchRL's ``td0_return_estimate``) from ``next_value
        (*B)`` and the ``(*B, 1)`` reward and terminated flag of ``next_td``; only ``terminated`` stops
        bootstrapping."""
        keys = self.tensor_keys
        reward = next_td.get(keys.reward).squeeze(-1)
        not_terminated = 1.0 - next_td.get(keys.terminated).squeeze(-1).to(reward.dtype)
        return reward + self.gamma * not_terminated * next_value

    def _bellman_loss(self, tensordict: TensorDictBase, q_data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``Σ_j mean_B (Q_j(s, a) - y)²`` (SACLoss's ``"l2"``) from ``q_data (N, *B)`` and ``target (*B)``; writes
        the per-sample TD error ``max_j |Q_j(s, a) - y|`` into ``tensordict`` under the priority key."""
        with torch.no_grad():
            tensordict.set(self.tensor_keys.priority, (q_data - target).abs().max(0)[0])
        return (q_data - target).pow(2).sum(0).mean()

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the losses and the diagnostics (see the class docstring) for a batch; returns them under
        ``out_keys`` in a TensorDict with no batch dimension."""
        values = self._losses(tensordict)
        self._clear_weakrefs(tensordict, "actor_network_params", "qvalue_network_params",
                             "target_qvalue_network_params")
        return TensorDict(dict(zip(self.out_keys, values)), batch_size=[])


def _relu_chain(plan) -> bool:
    """Whether a stacked-MLP plan (``_stacked_mlp_plan``) is ``Linear (+ bias), ReLU, ..., Linear`` with biases."""
    if plan is None or len(plan) % 2 == 0:
        return False
    linear = all(isinstance(step, tuple) and step[1] is not None for step in plan[::2])
    return linear and all(isinstance(step, nn.ReLU) for step in plan[1::2])


class _StackedReluMLP(torch.autograd.Function):
    """``(N, R)`` outputs of ``N`` stacked ReLU MLPs with one output unit on shared inputs ``x (R, F)``.

    The forward is the batched matmuls of the stacked critics (``baddbmm`` per layer, ReLU in place). The backward
    is written by hand to do less than autograd's: the ReLU mask is applied in place on the incoming gradient, the
    one-unit output layer's weight gradient is a ``(N, 1, R) @ (N, R, H)`` product (the ``(N, H, R) @ (N, R, 1)``
    orientation is ~20x slower on CPU) and its input gradient a broadcast product (not an outer-product ``bmm``).
    With ``3n·B_ρ`` rows per critic this is most of a COMBO step (``benchmarks/combo_step.py``). Gradients are
    computed only for the inputs that require them (``x``, or the weights and biases).

    Memory: the ``(N, R, H)`` hidden activations and the backward's temporaries live in ``workspace`` (a dict the
    caller keeps) and are reused from step to step, because a fresh tensor of that size costs more in page faults
    than the product that fills it (~12 ms of a ~85 ms step at the benchmark's sizes). A saved activation buffer is
    reused only once the graph that saved it is gone (a weak reference to its autograd node is dead); otherwise a
    fresh tensor is allocated, so several forwards before one backward, or ``retain_graph=True``, stay correct (and
    autograd's version counters would catch any overwrite). The backward's temporaries never leave it (the
    gradients returned are new tensors). One thread at a time.

    Args (of ``apply``): ``workspace`` (dict), ``x (R, F)``, then ``w_1, b_1, ..., w_L, b_L`` with
    ``w_l (N, out, in)``, ``b_l (N, out)`` and ``out = 1`` for the last layer.
    """

    @staticmethod
    def _buffer(workspace: dict, slot: int, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        key = (slot, tuple(shape), like.dtype, like.device)
        buffer = workspace.get(key)
        if buffer is None:
            if len(workspace) >= 16:  # batch shapes changed: drop the old buffers rather than keep them all
                workspace.clear()
            buffer = workspace[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buffer

    @staticmethod
    def _activation(workspace: dict, layer: int, shape: torch.Size, like: torch.Tensor, owner) -> torch.Tensor:
        """A buffer for a saved activation: the workspace's when no live graph holds it, else a fresh tensor."""
        key = ("activation", layer, tuple(shape), like.dtype, like.device)
        entry = workspace.get(key)
        if entry is None:
            if len(workspace) >= 16:  # batch shapes changed: drop the old buffers rather than keep them all
                workspace.clear()
            entry = workspace[key] = [torch.empty(shape, dtype=like.dtype, device=like.device), None]
        elif entry[1] is not None and entry[1]() is not None:  # still saved by a graph that may run backward
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        entry[1] = weakref.ref(owner)
        return entry[0]

    @staticmethod
    def forward(ctx, workspace, x, *params):
        num_layers = len(params) // 2
        h = x.expand(params[0].shape[0], *x.shape)
        saved = [x]
        keep = x.requires_grad or any(p.requires_grad for p in params)  # activations are saved for a backward
        for layer in range(num_layers):
            weight, bias = params[2 * layer], params[2 * layer + 1]
            if keep and layer < num_layers - 1:
                out = _StackedReluMLP._activation(workspace, layer, (*h.shape[:-1], weight.shape[1]), x, ctx)
                h = torch.baddbmm(bias.unsqueeze(-2), h, weight.mT, out=out)
            else:
                h = torch.baddbmm(bias.unsqueeze(-2), h, weight.mT)
            if layer < num_layers - 1:
                h = h.relu_()
                saved.append(h)
        ctx.save_for_backward(*saved, *params[0::2])
        ctx.num_layers, ctx.workspace = num_layers, workspace
        return h.squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad (N, R)
        num_layers = ctx.num_layers
        saved = ctx.saved_tensors
        activations, weights = saved[:num_layers], saved[num_layers:]  # activations[0] is x
        needs = ctx.needs_input_grad[1:]  # x, w_1, b_1, ...
        grads = [None] * (2 * num_layers)
        grad_x = None
        d = grad.unsqueeze(-1)  # (N, R, out)
        for layer in range(num_layers - 1, -1, -1):
            h_in = activations[layer] if layer > 0 else activations[0].expand(d.shape[0], *activations[0].shape)
            if needs[1 + 2 * layer]:
                grads[2 * layer] = torch.bmm(d.mT, h_in)  # (N, out, in)
            if needs[2 + 2 * layer]:
                grads[2 * layer + 1] = d.sum(1)
            if layer == 0:
                if needs[0]:  # x is shared by the critics: its gradient sums over them
                    grad_x = torch.bmm(d, weights[0]).sum(0)
                break
            if not (needs[0] or any(needs[1:1 + 2 * layer])):
                break
            out = _StackedReluMLP._buffer(ctx.workspace, layer % 2, activations[layer].shape, grad)
            if d.shape[-1] == 1:  # one output unit: a broadcast product, not an outer-product bmm
                d = torch.mul(d, weights[layer], out=out)
            else:
                d = torch.bmm(d, weights[layer], out=out)
            # ReLU's backward in place: zero the gradient where the activation was clipped
            d = torch.ops.aten.threshold_backward.grad_input(d, activations[layer], 0.0, grad_input=d)
        return (None, grad_x, *grads)
