"""The learned dynamics ensemble as a batched TorchRL environment, and its conservative (penalised) version.

Reference: MOPO, Yu et al., arXiv:2005.13239 (section 4.3, Algorithm 2); MOReL, Kidambi et al., arXiv:2005.05951
(halting on disagreement); MBPO, Janner et al., arXiv:1906.08253 (member sampled per row).
"""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, StepCounter, Transform, TransformedEnv

from cmbrl.components.ensemble import DynamicsEnsemble
from cmbrl.components.penalties import PenaltyFn, get_penalty, max_pairwise_diff, requires_all_members
from cmbrl.components.termination import TerminationFn, get_termination_fn

__all__ = ["ModelEnv", "UncertaintyPenalty", "ConservativeModelEnv"]


class ModelEnv(EnvBase):
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
        chunk_size: rows per chunk in the ensemble forward pass (CPU cache efficiency). Default 4096.
        seed: seeds the env's generator (start states, members, Gaussian noise).
        device: torch device of the env and its tensors.

    Raises:
        ValueError: on shapes that do not match the ensemble, unknown penalty or termination names, an empty or
            non-finite ``start_states``.
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
        chunk_size: int | None = 4096,
        seed: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        super().__init__(device=device, batch_size=torch.Size([batch_size]))
        self.ensemble = ensemble.to(self.device).eval()
        self.penalty = get_penalty(penalty)
        self.termination_fn = get_termination_fn(termination_fn)
        self.halt_threshold, self.halt_penalty = halt_threshold, float(halt_penalty)
        self.chunk_size = chunk_size
        self.num_nonfinite = 0
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
        observation = tensordict["observation"]
        action = tensordict["action"].clamp(self.action_low, self.action_high)
        batch, dim = observation.shape[0], self.ensemble.observation_dim + 1
        member = torch.randint(self.ensemble.num_elites, (batch,), generator=self.rng, device=self.device)
        noise = torch.randn(batch, dim, generator=self.rng, device=self.device)
        sample = torch.empty(batch, dim, device=self.device)
        uncertainty = torch.empty(batch, device=self.device)
        halted = torch.zeros(batch, dtype=torch.bool, device=self.device)
        # Chunks of rows go through forward pass, member choice, penalty and sampling while they sit in cache.
        # The one-member path groups each chunk's rows by member, so its chunks are num_elites times larger.
        chunk = batch if self.chunk_size is None else self.chunk_size
        if not self._needs_all_members:
            chunk *= self.ensemble.num_elites
        for start in range(0, batch, chunk):
            rows = slice(start, start + chunk)
            self._predict(observation[rows], action[rows], member[rows], noise[rows], sample[rows],
                          uncertainty[rows], halted[rows])
        next_observation = sample[:, :-1]
        reward = sample[:, -1]

        finite = torch.isfinite(sample).all(-1) & torch.isfinite(uncertainty)
        terminated = ~finite | halted
        if self.halt_threshold is not None:
            reward = torch.where(halted, torch.full_like(reward, self.halt_penalty), reward)
        if not bool(finite.all()):
            self.num_nonfinite += int((~finite).sum())
            next_observation = torch.where(finite.unsqueeze(-1), next_observation, observation)
            reward = torch.where(finite, reward, torch.zeros_like(reward))
            uncertainty = torch.where(finite, uncertainty, torch.zeros_like(uncertainty))
        if self.termination_fn is not None:  # judged on the model's own prediction, before any clipping
            terminated = terminated | self.termination_fn(observation, action, next_observation).reshape(batch)
        if self.clip_observations:
            next_observation = next_observation.clamp(self.observation_low, self.observation_high)
        reward = reward.unsqueeze(-1)
        terminated = terminated.unsqueeze(-1)
        return TensorDict(
            {"observation": next_observation, "reward": reward, "model_reward": reward.clone(),
             "uncertainty": uncertainty.unsqueeze(-1), "terminated": terminated,
             "truncated": torch.zeros_like(terminated), "done": terminated.clone()},
            batch_size=self.batch_size, device=self.device,
        )

    def _predict(self, observation, action, member, noise, sample_out, uncertainty_out, halted_out) -> None:
        """One chunk: writes the Gaussian sample ``(b, O + 1)``, ``u`` ``(b,)`` and the halting mask ``(b,)``."""
        ensemble = self.ensemble
        if self._needs_all_members:
            mean, std = ensemble(observation, action, members=self.penalty_members)
            if self.penalty_members == "all":  # member: position among the elites -> index among all members
                member = ensemble.elite_indices[member]
            rows = torch.arange(observation.shape[0], device=self.device)
            mean_k, std_k = mean[member, rows], std[member, rows]
            uncertainty_out.copy_(self.penalty(mean, std, member))
            if self.halt_threshold is not None:
                halted_out.copy_(max_pairwise_diff(mean, std, member) > self.halt_threshold)
        else:  # only the sampled member's forward pass
            mean_k, std_k = ensemble.forward_member(observation, action, ensemble.elite_indices[member])
            uncertainty_out.copy_(self.penalty(mean_k.unsqueeze(0), std_k.unsqueeze(0), torch.zeros_like(member)))
        torch.addcmul(mean_k, std_k, noise, out=sample_out)


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


class ConservativeModelEnv(TransformedEnv):
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
        **kwargs,
    ) -> None:
        if not isinstance(horizon, int) or horizon <= 0:
            raise ValueError(f"horizon must be a positive int, got {horizon!r}")
        base = ModelEnv(ensemble, start_states, penalty=penalty, batch_size=batch_size,
                        termination_fn=termination_fn, seed=seed, **kwargs)
        super().__init__(base)
        self.append_transform(StepCounter(max_steps=horizon))
        self.append_transform(UncertaintyPenalty(penalty_coef))
        self.horizon = horizon

    @property
    def num_nonfinite(self) -> int:
        """Rows whose prediction was NaN or infinite (and were terminated) since construction."""
        return self.base_env.num_nonfinite
