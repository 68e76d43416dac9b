"""Pieces shared by the learners :class:`~cmbrl.agents.SAC`, :class:`~cmbrl.agents.AWAC` and
:class:`~cmbrl.agents.COMBO` and by their losses :class:`~cmbrl.agents.AWACLoss` and :class:`~cmbrl.agents.COMBOLoss`.

* argument checks (:func:`check_dims`, :func:`check_count`, :func:`check_tau`, :func:`check_bounds`);
* :func:`seeded`, the seeded network initialisation that leaves the global RNG untouched;
* :class:`_Learner`, the components' optimiser plumbing: foreach Adams, one update step, state dicts that carry the
  optimisers;
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


class _Learner:
    """What the components (an ``nn.Module`` owning ``loss_module`` and ``target_updater``) share around their loss:

    * :meth:`_make_optimizers`: foreach Adams on the loss module's actor and critic parameters (and ``log α``);
    * :meth:`_step`: one gradient step of the optimisers named in ``OPTIMIZERS`` on a summed loss, then the soft
      target update;
    * ``state_dict``/``load_state_dict`` that also carry the optimisers named in ``OPTIMIZERS`` (a checkpoint
      resumes training exactly, Adam moments included).
    """

    OPTIMIZERS: tuple[str, ...] = ()

    def _make_optimizers(self, actor_lr: float, critic_lr: float, alpha_lr: float | None = None) -> None:
        """Sets ``actor_optim``, ``critic_optim`` and, given ``alpha_lr``, ``alpha_optim`` (on ``log_alpha``)."""
        # foreach: the multi-tensor Adam, bit-identical to the default single-tensor loop on CPU and faster
        self.actor_optim = torch.optim.Adam(self.loss_module.actor_network_params.flatten_keys().values(),
                                            lr=actor_lr, foreach=True)
        self.critic_optim = torch.optim.Adam(self.loss_module.qvalue_network_params.flatten_keys().values(),
                                             lr=critic_lr, foreach=True)
        if alpha_lr is not None:
            self.alpha_optim = torch.optim.Adam([self.loss_module.log_alpha], lr=alpha_lr, foreach=True)

    def _step(self, loss: torch.Tensor) -> None:
        """Clears the gradients of the ``OPTIMIZERS``, backpropagates ``loss``, steps them, updates the targets."""
        optims = [getattr(self, name) for name in self.OPTIMIZERS]
        for optim in optims:  # Optimizer.zero_grad(set_to_none=True) without its profiler scope
            for group in optim.param_groups:
                for param in group["params"]:
                    param.grad = None
        loss.backward()
        for optim in optims:
            optim.step()
        self.target_updater.step()

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
