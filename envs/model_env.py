"""The learned dynamics ensemble as a batched TorchRL environment, and its conservative (penalised) version.

Reference: MOPO, Yu et al., arXiv:2005.13239 (section 4.3, Algorithm 2); MOReL, Kidambi et al., arXiv:2005.05951
(halting on disagreement); MBPO, Janner et al., arXiv:1906.08253 (member sampled per row).
"""
from __future__ import annotations

import contextvars

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, StepCounter, Transform, TransformedEnv

from cmbrl.components.devices import resolve_device
from cmbrl.components.ensemble import DynamicsEnsemble
from cmbrl.components.penalties import PenaltyFn, get_penalty, max_pairwise_diff, requires_all_members
from cmbrl.components.termination import TerminationFn, get_termination_fn

__all__ = ["ModelEnv", "UncertaintyPenalty", "ConservativeModelEnv"]

_COMPILE_ARG: contextvars.ContextVar = contextvars.ContextVar("cmbrl_model_env_compile", default=None)


def _keeps_compile_kwarg(env_meta: type) -> type:
    """A subclass of a TorchRL env metaclass that keeps ``compile=`` for cmbrl.

    TorchRL >= 0.14's env metaclass pops a ``compile=`` constructor argument and compiles the whole
    ``step_and_maybe_reset`` (TensorDict bookkeeping and the generator draws included). cmbrl's model envs give
    ``compile=`` their own meaning (the prediction step only, see :class:`ModelEnv`), so this metaclass takes it out
    of the arguments first and hands it to ``__init__`` through a context variable (older TorchRL versions pass it
    straight to ``__init__``, which works too). TorchRL's :meth:`~torchrl.envs.EnvBase.compile` method stays
    available on the instance.
    """

    class KeepCompileKwarg(env_meta):
        def __call__(cls, *args, **kwargs):
            token = _COMPILE_ARG.set(kwargs.pop("compile", None))
            try:
                return super().__call__(*args, **kwargs)
            finally:
                _COMPILE_ARG.reset(token)

    KeepCompileKwarg.__name__ = KeepCompileKwarg.__qualname__ = f"KeepCompileKwarg{env_meta.__name__}"
    return KeepCompileKwarg


def _compile_argument(compile: bool | str | dict | None) -> bool | str | dict:
    """The ``compile`` an ``__init__`` was given, directly or through :func:`_keeps_compile_kwarg`'s metaclass."""
    if compile is None:
        compile = _COMPILE_ARG.get()
    return False if compile is None else compile


class ModelEnv(EnvBase, metaclass=_keeps_compile_kwarg(type(EnvBase))):
    """A batch of ``B`` model MDPs driven by a :class:`DynamicsEnsemble` (no reward penalty, no horizon).

    ``reset`` draws start states uniformly from ``start_states``; partial resets (TorchRL's ``"_reset"`` mask, as
    collectors send) draw new start states for the masked rows only. ``step`` clips the action to
    ``[action_low, action_high]`` (as MuJoCo clamps controls to their ``ctrlrange``; the ``"action"`` entry itself is
    left as given), samples one elite member per row (uniformly), draws ``(next_observation, reward) ~
    N(mean_k, std_k²)`` from it, and writes:

    - ``("next", "observation") (B, O)``: the model's sample, as MOPO's and OfflineRL-Kit's model envs do. With
      ``clip_observations=True`` it is clipped to ``[observation_low, observation_high]`` (default: the range of
      ``start_states`` and their next observations) *after* the termination function has judged the unclipped
      prediction, so a predicted fall is never hidden by the clip.
    - ``("next", "reward") (B, 1)`` and ``("next", "model_reward") (B, 1)``: the sampled (unpenalised) reward.
      :class:`UncertaintyPenalty` later lowers ``"reward"`` and leaves ``"model_reward"`` for logging.
    - ``("next", "uncertainty") (B, 1)``: ``u(s, a)`` of the chosen ``penalty`` (reward units), computed over the
      members named by ``penalty_members``.
    - ``("next", "terminated")``: from ``termination_fn`` (on the model's own, unclipped prediction), from halting
      (``halt_threshold``), or because the prediction was not finite. ``("next", "truncated")`` is always False here
      (the horizon lives in :class:`ConservativeModelEnv`); ``"done" = terminated | truncated``.

    A NaN or infinite prediction never reaches the user: that row keeps its observation, gets reward 0 and
    ``u = 0``, and terminates; :attr:`num_nonfinite` counts such rows since construction.

    Args:
        ensemble: a fitted :class:`DynamicsEnsemble`; its elites are used.
        start_states: ``(N, O)`` observations, or a transition TensorDict with ``"observation"``
            (and optionally ``("next", "observation")``) such as :func:`cmbrl.components.load_dataset` returns.
        penalty: a name in :data:`cmbrl.components.PENALTIES` or a callable ``(mean, std, member) -> (B,)``.
            Default ``"max_aleatoric"`` (MOPO).
        penalty_members: ``"all"`` (default: the penalty reads all ``E`` members, non-elites included, as MOPO's
            code (``FakeEnv.step``) and OfflineRL-Kit (``EnsembleDynamics.step``) do) or ``"elites"``. Next states
            are always sampled from an elite.
        batch_size: ``B``, number of parallel model rollouts. Default 50,000 (MOPO's rollout batch).
        termination_fn: ``"hopper"``, ``"walker2d"``, ``"halfcheetah"``, a callable
            ``(observation, action, next_observation) -> terminated (B,)``, or None (never terminates).
        action_low, action_high: action bounds (scalar or ``(A,)``). Default ``[-1, 1]``. Actions outside them are
            clipped before the model sees them (MuJoCo clamps controls the same way).
        clip_observations: clip predicted observations to ``[observation_low, observation_high]`` (after
            termination is judged). Default False (MOPO, OfflineRL-Kit: no clipping).
        observation_low, observation_high: ``(O,)`` clip range; default from ``start_states``. Giving either
            turns clipping on.
        halt_threshold: MOReL-style halting: a row whose members' (those of ``penalty_members``) maximum pairwise
            disagreement ``max_{i,j} ||mean_i − mean_j||_2`` exceeds it terminates. None (default) disables halting.
        halt_penalty: the model reward written on the step where a row halts (MOReL's ``−κ``). Default 0.
        chunk_size: rows per chunk in the ensemble forward pass (CPU cache efficiency), or None (one pass over the
            whole batch). Default ``"auto"``: 4096 on the CPU, None on a GPU.
        seed: seeds the env's generator (start states, members, Gaussian noise), which lives on ``device``: a seed
            reproduces a rollout on the same device (CPU and CUDA generators draw different numbers).
        device: the env's device: all its tensors, its generator and the ensemble live there. None (default): the
            ensemble's :attr:`~cmbrl.components.DynamicsEnsemble.device`; otherwise any
            :func:`~cmbrl.components.devices.resolve_device` argument, and the ensemble is moved there (in place,
            ``ensemble.to(device)``). ``start_states`` (and the transitions the clip range comes from),
            ``observation_low``/``observation_high`` and the action bounds may come on any device (datasets load on
            the CPU): they are copied to ``device`` once, here, never per step. Actions given to ``step`` must be on
            ``device`` (TorchRL's collectors put them there).
        compile: run the prediction step (action clipping, the ensemble's forward pass, the sampled member's
            Gaussian sample, the penalty, halting, the non-finite guard, termination and clipping) through
            ``torch.compile``. False (default; None is the same): eager. True: ``torch.compile``'s default
            (inductor); a string: that ``torch.compile`` ``mode`` (``"reduce-overhead"`` and ``"max-autotune"``
            capture CUDA graphs on a GPU; their outputs are cloned before they leave the step); a dict: keyword
            arguments of ``torch.compile`` (e.g. ``{"backend": "aot_eager"}``, which compiles in seconds, for
            tests). The compiled function computes every member in use for every row and gathers the sampled
            member's output, with no data-dependent Python control flow (for one-member penalties such as
            ``"individual_std"`` off the CPU that is all elites for every row; on the CPU those keep the eager
            grouped forward pass of the sampled member, ``num_elites`` times less work, and compile the rest). The
            member indices and the Gaussian noise are drawn outside it from the env's
            generator, so compiled and eager rollouts with the same seed agree to float tolerance. It uses the
            ensemble's own layers (a subclass overriding ``forward`` is not consulted). The first step of each chunk
            shape compiles (inductor: tens of seconds on a small CPU). cmbrl's ``compile=`` replaces TorchRL's own
            constructor argument of that name (which compiles the whole ``step_and_maybe_reset``); TorchRL's
            ``env.compile(...)`` method is still there.

    Raises:
        ValueError: on shapes that do not match the ensemble, unknown penalty or termination names, an empty or
            non-finite ``start_states``, a ``compile`` of the wrong type, or a CUDA ``device`` on a machine without
            one (naming it).
    """

    def __init__(
        self,
        ensemble: DynamicsEnsemble,
        start_states: torch.Tensor | TensorDictBase,
        *,
        penalty: str | PenaltyFn = "max_aleatoric",
        penalty_members: str = "all",
        batch_size: int = 50_000,
        termination_fn: str | TerminationFn | None = None,
        action_low: float | torch.Tensor = -1.0,
        action_high: float | torch.Tensor = 1.0,
        clip_observations: bool = False,
        observation_low: torch.Tensor | None = None,
        observation_high: torch.Tensor | None = None,
        halt_threshold: float | None = None,
        halt_penalty: float = 0.0,
        chunk_size: int | None | str = "auto",
        seed: int | None = None,
        device: str | torch.device | None = None,
        compile: bool | str | dict | None = None,
    ) -> None:
        compile = _compile_argument(compile)
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        device = ensemble.device if device is None else resolve_device(device)
        super().__init__(device=device, batch_size=torch.Size([batch_size]))
        self.ensemble = ensemble.to(self.device).eval()
        self.penalty = get_penalty(penalty)
        self.termination_fn = get_termination_fn(termination_fn)
        width = getattr(self.termination_fn, "observation_dim", None)  # the registered functions' observation width
        if width is not None and width != ensemble.observation_dim:
            raise ValueError(f"termination_fn {termination_fn!r} reads {width}-dimensional observations; the "
                             f"ensemble's observation_dim is {ensemble.observation_dim}")
        self.halt_threshold, self.halt_penalty = halt_threshold, float(halt_penalty)
        if chunk_size == "auto":
            chunk_size = 4096 if self.device.type == "cpu" else None
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                       or chunk_size <= 0):
            raise ValueError(f"chunk_size must be a positive int, None or 'auto', got {chunk_size!r}")
        self.chunk_size = chunk_size
        self._num_nonfinite = torch.zeros((), dtype=torch.int64, device=self.device)
        if penalty_members not in ("all", "elites"):
            raise ValueError(f"penalty_members must be 'all' or 'elites', got {penalty_members!r}")
        self.penalty_members = penalty_members
        self._needs_all_members = requires_all_members(self.penalty) or halt_threshold is not None
        self.clip_observations = bool(clip_observations or observation_low is not None or observation_high is not None)
        obs_dim, act_dim = ensemble.observation_dim, ensemble.action_dim

        if isinstance(start_states, TensorDictBase):
            observations = start_states["observation"]
            bounds_from = [observations]
            if ("next", "observation") in start_states.keys(include_nested=True):
                bounds_from.append(start_states["next", "observation"])
        else:
            observations = torch.as_tensor(start_states)
            bounds_from = [observations]
        if observations.ndim != 2 or observations.shape[-1] != obs_dim or observations.shape[0] == 0:
            raise ValueError(f"start_states must be (N, {obs_dim}) with N > 0 (the ensemble's observation_dim), "
                             f"got {tuple(observations.shape)}")
        if not torch.isfinite(observations).all():
            raise ValueError("start_states contain NaN or infinite values")
        # Moved once, here: datasets load on the CPU, rollouts run on the env's device.
        self.start_states = observations.to(self.device, torch.float32)
        data = torch.cat([b.to(self.device, torch.float32) for b in bounds_from])
        self.observation_low = (data.amin(0) if observation_low is None
                                else torch.as_tensor(observation_low, dtype=torch.float32, device=self.device))
        self.observation_high = (data.amax(0) if observation_high is None
                                 else torch.as_tensor(observation_high, dtype=torch.float32, device=self.device))

        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(int(torch.empty((), dtype=torch.int64).random_()) if seed is None else seed)

        shape = self.batch_size
        self.observation_spec = Composite(
            observation=Unbounded((*shape, obs_dim)),
            uncertainty=Unbounded((*shape, 1)),
            model_reward=Unbounded((*shape, 1)),
            shape=shape,
        )
        low = torch.as_tensor(action_low, dtype=torch.float32).expand(act_dim)
        high = torch.as_tensor(action_high, dtype=torch.float32).expand(act_dim)
        if not bool((low < high).all()):
            raise ValueError(f"action_low must be below action_high in every dimension, got {low.tolist()} and "
                             f"{high.tolist()}")
        self.action_low, self.action_high = low.to(self.device), high.to(self.device)
        self.action_spec = Bounded(low=low.expand(*shape, act_dim).clone(), high=high.expand(*shape, act_dim).clone(),
                                   shape=(*shape, act_dim))
        self.reward_spec = Unbounded((*shape, 1))
        self.done_spec = Composite(
            done=Categorical(2, (*shape, 1), dtype=torch.bool),
            terminated=Categorical(2, (*shape, 1), dtype=torch.bool),
            truncated=Categorical(2, (*shape, 1), dtype=torch.bool),
            shape=shape,
        )
        # Every member in use for every row: all E when the penalty or halting reads all of them, else the elites.
        self._dense_all = self._needs_all_members and self.penalty_members == "all"
        self._finish_options = dict(halt_penalty=self.halt_penalty, termination_fn=self.termination_fn,
                                    clip=self.clip_observations)
        self.compile_options = compile  # not `self.compile`: nn.Module.compile is a method
        # One-member penalties on the CPU: only the sampled member's forward pass, rows grouped by member.
        self._grouped_members = not self._needs_all_members and self.device.type == "cpu"
        self._compiled, self._cudagraphs = None, False
        if compile:
            if self._grouped_members:
                step = _make_member_tail(penalty=self.penalty, **self._finish_options)
            else:
                step = _make_dense_step(dense_all=self._dense_all, needs_all=self._needs_all_members,
                                        penalty=self.penalty, halt_threshold=halt_threshold, **self._finish_options)
            options = _compile_kwargs(compile)
            self._compiled = torch.compile(step, **options)
            # "reduce-overhead" / "max-autotune" capture CUDA graphs (torch.compile's own mode names).
            self._cudagraphs = self.device.type == "cuda" and options.get("mode") in ("reduce-overhead",
                                                                                  "max-autotune")

    @property
    def num_nonfinite(self) -> int:
        """Rows whose prediction was NaN or infinite (and were terminated) since construction."""
        return int(self._num_nonfinite)

    def _set_seed(self, seed: int | None) -> None:
        self.rng.manual_seed(int(torch.empty((), dtype=torch.int64).random_()) if seed is None else seed)

    def _sample_start_states(self, n: int) -> torch.Tensor:
        idx = torch.randint(self.start_states.shape[0], (n,), generator=self.rng, device=self.device)
        return self.start_states[idx]

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        batch = self.batch_size[0]
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None or "observation" not in tensordict.keys():
            observation = self._sample_start_states(batch)
        else:  # partial reset: only the masked rows get new start states
            reset = reset.reshape(batch)
            observation = tensordict["observation"].clone()
            observation[reset] = self._sample_start_states(int(reset.sum()))
        zeros = torch.zeros(batch, 1, device=self.device)
        false = torch.zeros(batch, 1, dtype=torch.bool, device=self.device)
        return TensorDict(
            {"observation": observation, "uncertainty": zeros, "model_reward": zeros.clone(),
             "done": false, "terminated": false.clone(), "truncated": false.clone()},
            batch_size=self.batch_size, device=self.device,
        )

    @torch.no_grad()
    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        observation, action = self._step_inputs(tensordict)
        batch, dim = observation.shape[0], self.ensemble.observation_dim + 1
        # Drawn outside any compiled code, in this order, so that eager and compiled rollouts see the same numbers.
        member = torch.randint(self.ensemble.num_elites, (batch,), generator=self.rng, device=self.device)
        noise = torch.randn(batch, dim, generator=self.rng, device=self.device)
        chunk = batch if self.chunk_size is None else self.chunk_size
        if self._compiled is not None and self._grouped_members:
            action = action.clamp(self.action_low, self.action_high)
            step = self._grouped_compiled_step
            chunk *= self.ensemble.num_elites
        elif self._compiled is not None:
            tensors = self._step_tensors()
            step = lambda *rows: self._compiled(*rows, tensors)  # noqa: E731
            if self._cudagraphs:  # outputs live in the CUDA graph's pool: a later replay overwrites them
                step = lambda *rows: self._cudagraph_call(rows, tensors)  # noqa: E731
        else:
            action = action.clamp(self.action_low, self.action_high)
            step = self._eager_step
            # The one-member CPU path groups each chunk's rows by member, so its chunks are num_elites times larger.
            if self._grouped_members:
                chunk *= self.ensemble.num_elites
        # Chunks of rows go through forward pass, member choice, penalty, sampling and termination while they sit in
        # cache (on the CPU; a GPU takes the whole batch at once).
        parts = [step(*rows) for rows in zip(observation.split(chunk), action.split(chunk), member.split(chunk),
                                             noise.split(chunk))]
        if len(parts) == 1:
            next_observation, reward, uncertainty, terminated, nonfinite = parts[0]
        else:
            next_observation, reward, uncertainty, terminated = (torch.cat(p) for p in list(zip(*parts))[:4])
            nonfinite = sum(p[4] for p in parts)
        self._num_nonfinite += nonfinite
        reward = reward.unsqueeze(-1)
        terminated = terminated.unsqueeze(-1)
        return TensorDict(
            {"observation": next_observation, "reward": reward, "model_reward": reward.clone(),
             "uncertainty": uncertainty.unsqueeze(-1), "terminated": terminated,
             "truncated": torch.zeros_like(terminated), "done": terminated.clone()},
            batch_size=self.batch_size, device=self.device,
        )

    def _step_inputs(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """``observation (B, O)`` and ``action (B, A)`` (float32) of a step's input, checked.

        Raises:
            KeyError: ``"observation"`` or ``"action"`` is missing (the message names the keys present).
            ValueError: the action's shape is not ``(B, A)`` (the message names both), or the observation's is not
                ``(B, O)``.
        """
        observation, action = tensordict.get("observation", None), tensordict.get("action", None)
        batch, obs_dim, act_dim = self.batch_size[0], self.ensemble.observation_dim, self.ensemble.action_dim
        if observation is None or action is None:
            missing = [key for key, value in (("observation", observation), ("action", action)) if value is None]
            raise KeyError(f"{type(self).__name__}.step: the tensordict is missing {missing}; a step reads "
                           f"'observation' (B, O) = ({batch}, {obs_dim}) and 'action' (B, A) = ({batch}, {act_dim}); "
                           f"it has keys {list(tensordict.keys(True, True))}")
        if action.shape != (batch, act_dim):
            raise ValueError(f"{type(self).__name__}.step: the action has shape {tuple(action.shape)}; expected "
                             f"(B, A) = ({batch}, {act_dim}) (the env's batch size, the ensemble's action_dim)")
        if observation.shape != (batch, obs_dim):
            raise ValueError(f"{type(self).__name__}.step: the observation has shape {tuple(observation.shape)}; "
                             f"expected (B, O) = ({batch}, {obs_dim}) (the env's batch size, the ensemble's "
                             f"observation_dim)")
        if action.dtype != torch.float32:  # a float64 (or integer) action would stop at the ensemble's matmul
            action = action.to(torch.float32)
        return observation, action

    def _cudagraph_call(self, rows, tensors) -> tuple:
        torch.compiler.cudagraph_mark_step_begin()
        return tuple(t.clone() for t in self._compiled(*rows, tensors))

    def _grouped_compiled_step(self, observation, action, member, noise):
        """One chunk, compiled, one-member penalty on the CPU: the sampled member's forward pass eagerly
        (``forward_member``: rows grouped by member, data-dependent sizes), the rest compiled."""
        mean_k, std_k = self.ensemble.forward_member(observation, action, self.ensemble.elite_indices[member])
        return self._compiled(observation, action, mean_k, std_k, member, noise, self.observation_low,
                              self.observation_high)

    def _eager_step(self, observation, action, member, noise):
        """One chunk, eager: the ensemble's own ``forward`` (all members in use) or, on the CPU for one-member
        penalties, ``forward_member`` (rows grouped by member), then :meth:`_finish`."""
        ensemble = self.ensemble
        halted = None
        if not self._grouped_members:
            members = self.penalty_members if self._needs_all_members else "elites"
            mean, std = ensemble(observation, action, members=members)
            index = ensemble.elite_indices[member] if members == "all" else member
            rows = torch.arange(observation.shape[0], device=observation.device)
            mean_k, std_k = mean[index, rows], std[index, rows]
            if self._needs_all_members:
                uncertainty = self.penalty(mean, std, index)
                if self.halt_threshold is not None:
                    halted = max_pairwise_diff(mean, std, index) > self.halt_threshold
            else:
                uncertainty = self.penalty(mean_k.unsqueeze(0), std_k.unsqueeze(0), torch.zeros_like(member))
        else:  # only the sampled member's forward pass
            mean_k, std_k = ensemble.forward_member(observation, action, ensemble.elite_indices[member])
            uncertainty = self.penalty(mean_k.unsqueeze(0), std_k.unsqueeze(0), torch.zeros_like(member))
        sample = torch.addcmul(mean_k, std_k, noise)
        return _finish(observation, action, sample, uncertainty, halted, self.observation_low, self.observation_high,
                       **self._finish_options)

    def _step_tensors(self) -> tuple:
        """The tensors the compiled step reads, passed as inputs (not captured) so that a refit or ``.to()``
        of the ensemble reaches the compiled function without a recompile."""
        ensemble = self.ensemble
        weights = ensemble._weights(None if self._dense_all else ensemble.elite_indices)
        return (tuple(weights), ensemble.input_mean, ensemble.input_std, ensemble.max_logvar, ensemble.min_logvar,
                ensemble.elite_indices, self.action_low, self.action_high, self.observation_low,
                self.observation_high)


def _finish(observation, action, sample, uncertainty, halted, observation_low, observation_high, *,
            halt_penalty: float, termination_fn, clip: bool):
    """Sample ``(b, O + 1)`` -> next observation ``(b, O)``, reward ``(b,)``, ``u`` ``(b,)``, terminated ``(b,)``
    and the number of non-finite rows (0-d): halting (``halted`` ``(b,)`` bool or None), the non-finite guard (the
    row keeps its observation, reward 0, ``u = 0``, terminates), the termination function on the model's own
    prediction, then the optional clip. Branch-free (no host sync; ``torch.compile`` friendly)."""
    next_observation, reward = sample[:, :-1], sample[:, -1]
    finite = torch.isfinite(sample).all(-1) & torch.isfinite(uncertainty)
    terminated = ~finite
    if halted is not None:
        terminated = terminated | halted
        reward = torch.where(halted, torch.full_like(reward, halt_penalty), reward)
    next_observation = torch.where(finite.unsqueeze(-1), next_observation, observation)
    reward = torch.where(finite, reward, torch.zeros_like(reward))
    uncertainty = torch.where(finite, uncertainty, torch.zeros_like(uncertainty))
    if termination_fn is not None:  # judged on the model's own prediction, before any clipping
        terminated = terminated | termination_fn(observation, action, next_observation).reshape(-1)
    if clip:
        next_observation = next_observation.clamp(observation_low, observation_high)
    return next_observation, reward, uncertainty, terminated, (~finite).sum()


def _make_dense_step(*, dense_all: bool, needs_all: bool, penalty, halt_threshold: float | None, **finish):
    """The prediction step of one chunk as a pure tensor function (what ``ModelEnv(compile=...)`` compiles): every
    member in use for every row (all ``E`` when ``dense_all``, else the elites), the sampled member's output
    gathered, then :func:`_finish`. No data-dependent Python control flow, no random numbers."""

    def dense_step(observation, action, member, noise, tensors):
        (weights, input_mean, input_std, max_logvar, min_logvar, elite_indices, action_low, action_high,
         observation_low, observation_high) = tensors
        action = action.clamp(action_low, action_high)
        num = weights[0][0].shape[0]
        x = (torch.cat([observation, action], dim=-1) - input_mean) / input_std
        mean, logvar = DynamicsEnsemble._mlp(x.unsqueeze(0).expand(num, -1, -1), weights, max_logvar, min_logvar)
        mean = torch.cat([mean[..., :-1] + observation, mean[..., -1:]], dim=-1)
        std = (0.5 * logvar).exp()
        index = elite_indices[member] if dense_all else member
        rows = torch.arange(observation.shape[0], device=observation.device)
        mean_k, std_k = mean[index, rows], std[index, rows]
        halted = None
        if needs_all:
            uncertainty = penalty(mean, std, index)
            if halt_threshold is not None:
                halted = max_pairwise_diff(mean, std, index) > halt_threshold
        else:
            uncertainty = penalty(mean_k.unsqueeze(0), std_k.unsqueeze(0), torch.zeros_like(member))
        sample = torch.addcmul(mean_k, std_k, noise)
        return _finish(observation, action, sample, uncertainty, halted, observation_low, observation_high, **finish)

    return dense_step


def _make_member_tail(*, penalty, **finish):
    """What ``ModelEnv(compile=...)`` compiles for a one-member penalty on the CPU, where the sampled member's forward
    pass runs eagerly (rows grouped by member): the penalty, the Gaussian sample and :func:`_finish`."""

    def member_tail(observation, action, mean_k, std_k, member, noise, observation_low, observation_high):
        uncertainty = penalty(mean_k.unsqueeze(0), std_k.unsqueeze(0), torch.zeros_like(member))
        sample = torch.addcmul(mean_k, std_k, noise)
        return _finish(observation, action, sample, uncertainty, None, observation_low, observation_high, **finish)

    return member_tail


def _compile_kwargs(compile: bool | str | dict) -> dict:
    """``torch.compile`` keyword arguments for a ``compile`` argument (True, a mode string or a kwargs dict)."""
    if compile is True:
        return {}
    if isinstance(compile, str):
        return {} if compile == "default" else {"mode": compile}
    if isinstance(compile, dict):
        return dict(compile)
    raise ValueError(f"compile must be a bool, a torch.compile mode string or a dict of torch.compile keyword "
                     f"arguments, got {compile!r}")


class UncertaintyPenalty(Transform):
    """Reward transform ``reward ← reward − penalty_coef · uncertainty`` (MOPO's penalised reward).

    Reads the ``"uncertainty"`` entry that :class:`ModelEnv` writes next to the reward; the unpenalised reward
    stays available as ``"model_reward"``.

    Args:
        penalty_coef: λ in MOPO (reward units per unit of uncertainty). Must be >= 0. Default 1.0.
        in_keys: reward key(s) to penalise. Default ``["reward"]``.
        uncertainty_key: where ``u(s, a)`` is read. Default ``"uncertainty"``.

    Reference: MOPO, arXiv:2005.13239, section 4.3: ``r̃(s, a) = r̂(s, a) − λ u(s, a)``.
    """

    def __init__(self, penalty_coef: float = 1.0, in_keys=None, uncertainty_key: str = "uncertainty") -> None:
        if penalty_coef < 0:
            raise ValueError(f"penalty_coef must be >= 0, got {penalty_coef}")
        in_keys = ["reward"] if in_keys is None else in_keys
        super().__init__(in_keys=in_keys, out_keys=in_keys)
        self.uncertainty_key = uncertainty_key
        self.register_buffer("penalty_coef", torch.tensor(float(penalty_coef)))

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        uncertainty = next_tensordict.get(self.uncertainty_key)
        for in_key, out_key in zip(self.in_keys, self.out_keys):
            next_tensordict.set(out_key, next_tensordict.get(in_key) - self.penalty_coef * uncertainty)
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return tensordict_reset


class ConservativeModelEnv(TransformedEnv, metaclass=_keeps_compile_kwarg(type(TransformedEnv))):
    """The conservative model MDP: :class:`ModelEnv` + a rollout ``horizon`` + :class:`UncertaintyPenalty`.

    ``ConservativeModelEnv(ensemble, ...)`` is ``TransformedEnv(ModelEnv(ensemble, ...),
    Compose(StepCounter(horizon), UncertaintyPenalty(penalty_coef)))``: reaching the horizon yields ``truncated``
    (bootstrap from it); the termination function, halting and non-finite predictions yield ``terminated``.
    The reward is ``r − penalty_coef · u(s, a)``; ``"model_reward"`` and ``"uncertainty"`` sit next to it.

    Args:
        ensemble: fitted :class:`DynamicsEnsemble`.
        penalty: uncertainty estimator name or callable (see :data:`cmbrl.components.PENALTIES`).
            Default ``"max_aleatoric"``.
        penalty_coef: λ (MOPO). Default 1.0; MOPO uses 5.0 on hopper-medium (see HYPERPARAMETERS.md).
        horizon: ``h``, steps before truncation. Default 5 (MOPO).
        start_states, batch_size, termination_fn, halt_threshold, halt_penalty, seed, ...: see :class:`ModelEnv`.
        device: None (default): the ensemble's device; see :class:`ModelEnv` (start states are moved there once).
        compile: the prediction step through ``torch.compile`` (False, True, a mode string or a dict of
            ``torch.compile`` keyword arguments); see :class:`ModelEnv`.

    Examples:
        >>> import torch
        >>> from cmbrl import DynamicsEnsemble, ConservativeModelEnv
        >>> ensemble = DynamicsEnsemble(observation_dim=11, action_dim=3, seed=0)
        >>> env = ConservativeModelEnv(ensemble, penalty="combined", start_states=torch.randn(100, 11),
        ...                            batch_size=8, termination_fn="hopper", seed=0)
        >>> env.rollout(5).batch_size
        torch.Size([8, 5])

    Reference: MOPO, arXiv:2005.13239, Algorithm 2.
    """

    def __init__(
        self,
        ensemble: DynamicsEnsemble,
        penalty: str | PenaltyFn = "max_aleatoric",
        penalty_coef: float = 1.0,
        horizon: int = 5,
        *,
        start_states: torch.Tensor | TensorDictBase,
        batch_size: int = 50_000,
        termination_fn: str | TerminationFn | None = None,
        seed: int | None = None,
        device: str | torch.device | None = None,
        compile: bool | str | dict | None = None,
        **kwargs,
    ) -> None:
        compile = _compile_argument(compile)
        if not isinstance(horizon, int) or horizon <= 0:
            raise ValueError(f"horizon must be a positive int, got {horizon!r}")
        base = ModelEnv(ensemble, start_states, penalty=penalty, batch_size=batch_size,
                        termination_fn=termination_fn, seed=seed, device=device, compile=compile, **kwargs)
        super().__init__(base)
        self.append_transform(StepCounter(max_steps=horizon))
        self.append_transform(UncertaintyPenalty(penalty_coef))
        self.horizon = horizon

    @property
    def num_nonfinite(self) -> int:
        """Rows whose prediction was NaN or infinite (and were terminated) since construction."""
        return self.base_env.num_nonfinite
