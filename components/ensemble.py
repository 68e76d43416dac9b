"""Probabilistic dynamics ensemble (MBPO / MOPO style), all members in one batched module.

Reference: Janner et al., MBPO, arXiv:1906.08253; Yu et al., MOPO, arXiv:2005.13239, section 4.3;
Chua et al., PETS, arXiv:1805.12114 (soft-bounded log-variance).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from torch import nn

from .checkpoints import save_atomic
from .devices import check_same_device, resolve_device
from .errors import MissingKeysError

__all__ = ["DynamicsEnsemble", "EnsembleLinear"]


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied as one batched matmul.

    Args:
        num_members: ``E``.
        in_features, out_features: layer sizes.
        weight_decay: L2 coefficient of this layer's weights (used by :meth:`DynamicsEnsemble.fit`).

    Input ``(E, B, in)``, output ``(E, B, out)``. Weights ``(E, in, out)`` are initialised from a truncated normal
    with std ``1 / (2 sqrt(in))`` and zero bias, as in MBPO / MOPO.
    """

    def __init__(self, num_members: int, in_features: int, out_features: int, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(num_members, 1, out_features))
        self.weight_decay = weight_decay
        std = 1.0 / (2.0 * math.sqrt(in_features))
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class DynamicsEnsemble(nn.Module):
    """Ensemble of Gaussian MLPs predicting ``(Δobservation, reward)`` from ``(observation, action)``.

    Each member outputs a diagonal Gaussian. Inputs are z-scored with statistics fitted on the training data; targets
    are ``[next_observation − observation, reward]`` (reward last). The log-variance is soft-bounded between learned
    bounds ``min_logvar``/``max_logvar`` (initialised at −10 and 0.5 nats), which a small loss term pulls together.

    Calling the ensemble returns, for every member, the mean and standard deviation of the *next observation and
    reward* (the delta is added back):

    >>> ensemble = DynamicsEnsemble(observation_dim=3, action_dim=2, num_members=4, num_elites=2, seed=0)
    >>> mean, std = ensemble(torch.zeros(5, 3), torch.zeros(5, 2))
    >>> mean.shape, std.shape
    (torch.Size([4, 5, 4]), torch.Size([4, 5, 4]))

    Args:
        observation_dim: ``O``.
        action_dim: ``A``.
        num_members: ``E``, ensemble size. Default 7 (MOPO).
        num_elites: members kept for rollouts, chosen by held-out error in :meth:`fit`. Default 5 (MOPO).
        hidden_sizes: hidden widths, SiLU activations. Default four layers of 200 (MOPO / MBPO).
        weight_decay: L2 coefficient per linear layer (len(hidden_sizes) + 1 values). Default MOPO's
            ``(2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)``.
        seed: seeds the weight initialisation (the global RNG is untouched). The weights are drawn on the CPU and
            then moved, so a seed gives the same initial weights on every device.
        device: where the parameters live: ``"cpu"`` (None, the default), ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a
            :class:`torch.device`, resolved by :func:`cmbrl.components.devices.resolve_device` (``ValueError``
            naming the device when CUDA is asked for and missing). :attr:`device` follows later ``.to()`` calls.
            Inputs of :meth:`forward` / :meth:`forward_member` must be on this device (``ValueError`` naming both
            devices otherwise); :meth:`fit` moves its data here once.

    Reference: MBPO arXiv:1906.08253 (appendix), MOPO arXiv:2005.13239 (section 4.3), PETS arXiv:1805.12114.
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        num_members: int = 7,
        num_elites: int = 5,
        hidden_sizes: Sequence[int] = (200, 200, 200, 200),
        weight_decay: Sequence[float] = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4),
        seed: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        device = resolve_device("cpu" if device is None else device)
        if not 0 < num_elites <= num_members:
            raise ValueError(f"need 0 < num_elites <= num_members, got num_elites={num_elites}, "
                             f"num_members={num_members}")
        if len(weight_decay) != len(hidden_sizes) + 1:
            raise ValueError(f"weight_decay needs one value per linear layer ({len(hidden_sizes) + 1}), "
                             f"got {len(weight_decay)}")
        self.config = dict(observation_dim=observation_dim, action_dim=action_dim, num_members=num_members,
                           num_elites=num_elites, hidden_sizes=list(hidden_sizes), weight_decay=list(weight_decay))
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.num_members, self.num_elites = num_members, num_elites
        in_dim, out_dim = observation_dim + action_dim, observation_dim + 1
        sizes = [in_dim, *hidden_sizes]
        generator_state = torch.random.fork_rng(enabled=seed is not None)
        with generator_state:
            if seed is not None:
                torch.manual_seed(seed)
            self.layers = nn.ModuleList(
                EnsembleLinear(num_members, a, b, wd) for a, b, wd in zip(sizes[:-1], sizes[1:], weight_decay)
            )
            self.output = EnsembleLinear(num_members, sizes[-1], 2 * out_dim, weight_decay[-1])
        self.max_logvar = nn.Parameter(torch.full((1, 1, out_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, out_dim), -10.0))
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.register_buffer("elite_indices", torch.arange(num_elites))
        self.to(device)

    @property
    def device(self) -> torch.device:
        """The device of the parameters (kept right by ``.to()``)."""
        return self.output.weight.device

    # ------------------------------------------------------------------ forward
    def _weights(self, members: torch.Tensor | slice | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(weight, bias)`` of every layer for the given members. A slice gives views (no copy); an index tensor
        gathers copies, which under ``torch.no_grad`` are cached until the parameters or the index change, so
        rollouts do not copy the weights at every step. The cache is keyed on the index tensor's identity and
        version (no device sync: the elites' buffer hits without reading its values), or for another CPU tensor on
        its values."""
        layers = [*self.layers, self.output]
        if members is None:
            return [(layer.weight, layer.bias) for layer in layers]
        if isinstance(members, slice) or torch.is_grad_enabled():
            return [(layer.weight[members], layer.bias[members]) for layer in layers]
        params = tuple((p._version, p.data_ptr()) for layer in layers for p in (layer.weight, layer.bias))
        cache = self.__dict__.get("_weight_cache")
        if cache is not None:
            cached_members, cached_version, cached_params, weights = cache
            same_members = (cached_members is members and cached_version == members._version) or (
                members.device.type == "cpu" and cached_members.device == members.device
                and cached_members.shape == members.shape and torch.equal(cached_members, members))
            if same_members and cached_params == params:
                return weights
        weights = [(layer.weight[members].contiguous(), layer.bias[members].contiguous()) for layer in layers]
        self.__dict__["_weight_cache"] = (members, members._version, params, weights)
        return weights

    @staticmethod
    def _mlp(x: torch.Tensor, weights: Sequence[tuple[torch.Tensor, torch.Tensor]], max_logvar: torch.Tensor,
             min_logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pure tensor function (no Python control flow on values; ``torch.compile`` friendly): normalised inputs
        ``(E', B, in)`` and per-layer ``(weight (E', in, out), bias (E', 1, out))`` -> target mean and soft-bounded
        log-variance, each ``(E', B, O + 1)``."""
        *hidden, (weight, bias) = weights
        for w, b in hidden:
            x = F.silu(torch.baddbmm(b, x, w))
        mean, logvar = torch.baddbmm(bias, x, weight).chunk(2, dim=-1)
        logvar = max_logvar - F.softplus(max_logvar - logvar)
        logvar = min_logvar + F.softplus(logvar - min_logvar)
        return mean, logvar

    def _raw(self, x: torch.Tensor, members: torch.Tensor | slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised inputs ``(E', B, in)`` -> target mean and log-variance ``(E', B, O + 1)``."""
        return self._mlp(x, self._weights(members), self.max_logvar, self.min_logvar)

    def _normalise(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if not isinstance(observation, torch.Tensor) or not isinstance(action, torch.Tensor):
            raise TypeError(f"observation and action must be torch tensors (torch.as_tensor(array) for NumPy), got "
                            f"{type(observation).__name__} and {type(action).__name__}")
        if observation.shape[-1] != self.observation_dim or action.shape[-1] != self.action_dim:
            raise ValueError(f"expected observation (..., {self.observation_dim}) and action (..., {self.action_dim}),"
                             f" got {tuple(observation.shape)} and {tuple(action.shape)}")
        if observation.shape[:-1] != action.shape[:-1]:
            raise ValueError(f"observation and action batch shapes differ: {tuple(observation.shape)} vs "
                             f"{tuple(action.shape)}")
        device = self.input_mean.device
        if observation.device != device or action.device != device:
            check_same_device("observation", observation, device, "the ensemble")
            check_same_device("action", action, device, "the ensemble")
        dtype = self.input_mean.dtype
        if observation.dtype != dtype or action.dtype != dtype:  # float64 (MuJoCo's) inputs: the ensemble's float32
            observation, action = observation.to(dtype), action.to(dtype)
        return (torch.cat([observation, action], dim=-1) - self.input_mean) / self.input_std

    def forward(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        members: str | torch.Tensor = "all",
        chunk_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member Gaussian over ``(next_observation, reward)``.

        Args:
            observation: ``(B, O)``.
            action: ``(B, A)``.
            members: ``"all"`` (``E`` members), ``"elites"`` (``num_elites`` members) or an index tensor ``(E',)``.
            chunk_size: if given, rows are processed in chunks of this size (faster on CPU for large ``B``: the
                activations stay in cache). Results are identical.

        Returns:
            ``mean`` and ``std``, each ``(E', B, O + 1)``: next observation in the first ``O`` columns, reward (per
            step) last.

            All on the ensemble's :attr:`device`.

        Inputs of another floating dtype (MuJoCo's float64) are cast to the ensemble's float32.

        Raises:
            TypeError: ``observation`` or ``action`` is not a tensor (a NumPy array, say).
            ValueError: wrong feature sizes, mismatched batch shapes, or inputs on another device than the ensemble
                (naming both devices).
        """
        index = self._member_index(members)
        x = self._normalise(observation, action)
        observation = observation.to(x.dtype)  # float64 inputs are computed in the ensemble's float32
        num = self.num_members if index is None else index.numel()
        if chunk_size is None or x.shape[0] <= chunk_size:
            mean, logvar = self._raw(x.unsqueeze(0).expand(num, -1, -1), index)
        else:
            parts = [self._raw(c.unsqueeze(0).expand(num, -1, -1), index) for c in x.split(chunk_size)]
            mean, logvar = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        mean = torch.cat([mean[..., :-1] + observation, mean[..., -1:]], dim=-1)
        return mean, (0.5 * logvar).exp()

    def forward_member(self, observation: torch.Tensor, action: torch.Tensor, member: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian of one given member per row, computing only that member's forward pass.

        Rows are grouped by member, so the cost is one member's forward pass per row instead of ``E``. The grouping
        reads the per-member row counts on the host (``bincount(...).tolist()``: one device sync on CUDA, and not
        traceable by ``torch.compile``); on a GPU, computing the elites for every row and gathering the chosen
        member's output (what :class:`~cmbrl.envs.ModelEnv` does off the CPU and when compiled) is faster.

        Args:
            observation: ``(B, O)``, on the ensemble's device.
            action: ``(B, A)``, on the ensemble's device.
            member: ``(B,)`` long, member index (into all ``E`` members) for each row (any device).

        Returns:
            ``mean``, ``std``: ``(B, O + 1)`` (next observation, reward last), on the ensemble's device.

        Raises:
            TypeError: ``observation`` or ``action`` is not a tensor.
            ValueError: wrong shapes (``member`` not ``(B,)`` included), a member index ``>= E``, or inputs on another
                device than the ensemble.
        """
        x = self._normalise(observation, action)
        if not isinstance(member, torch.Tensor) or member.shape != x.shape[:1]:
            raise ValueError(f"member must be a (B,) = ({x.shape[0]},) tensor of member indices (one per row), got "
                             f"{tuple(member.shape) if isinstance(member, torch.Tensor) else type(member).__name__}")
        member = member.to(x.device)
        observation = observation.to(x.dtype)
        mean = x.new_empty(x.shape[0], self.observation_dim + 1)
        logvar = torch.empty_like(mean)
        order = torch.argsort(member)
        counts = torch.bincount(member, minlength=self.num_members).tolist()
        if len(counts) > self.num_members:
            raise ValueError(f"member indices must be in [0, {self.num_members}) (all E members), got "
                             f"{len(counts) - 1}")
        for k, rows in enumerate(order.split(counts)):
            if rows.numel():
                m, lv = self._raw(x[rows].unsqueeze(0), slice(k, k + 1))  # views: keeps the elites' cache intact
                mean[rows], logvar[rows] = m[0], lv[0]
        mean = torch.cat([mean[:, :-1] + observation, mean[:, -1:]], dim=-1)
        return mean, (0.5 * logvar).exp()

    def _member_index(self, members: str | torch.Tensor) -> torch.Tensor | None:
        if isinstance(members, str):
            if members == "all":
                return None
            if members == "elites":
                return self.elite_indices
            raise ValueError(f"members must be 'all', 'elites' or an index tensor, got {members!r}")
        return members

    # ------------------------------------------------------------------ training
    def fit(
        self,
        transitions: TensorDictBase,
        *,
        holdout_ratio: float = 0.2,
        max_holdout: int = 1000,
        batch_size: int = 256,
        lr: float = 1e-3,
        max_epochs: int | None = None,
        patience: int = 5,
        improvement_threshold: float = 0.01,
        logvar_bound_coef: float = 0.01,
        seed: int = 0,
        progress: bool = False,
    ) -> dict[str, list[float] | float | list[int] | int]:
        """Maximum-likelihood training with bootstrapped members, a held-out split and early stopping.

        Follows MOPO/MBPO: a random held-out set of ``min(holdout_ratio · N, max_holdout)`` transitions; each member
        trains on its own bootstrap resample of the rest with the Gaussian NLL (mean over rows and dimensions) plus
        each layer's L2 weight decay and ``logvar_bound_coef · (Σ max_logvar − Σ min_logvar)``; after every epoch
        each member's held-out MSE is measured and its weights are snapshotted when it improved by more than
        ``improvement_threshold`` (relative); training stops once no member improved for ``patience`` epochs (or at
        ``max_epochs``), the best snapshots are restored and the ``num_elites`` lowest-MSE members become elites.

        Args:
            transitions: TensorDict ``(N,)`` with ``observation (N, O)``, ``action (N, A)``,
                ``("next", "observation") (N, O)`` and ``("next", "reward") (N, 1)``.
            holdout_ratio, max_holdout: held-out split size.
            batch_size: rows per member per gradient step. Default 256.
            lr: Adam learning rate. Default 1e-3.
            max_epochs: cap on epochs, >= 1 (None: until early stopping).
            patience: epochs without improvement before stopping. Default 5.
            improvement_threshold: relative held-out improvement that counts. Default 0.01.
            logvar_bound_coef: weight of the log-variance bound term. Default 0.01.
            seed: seeds the split, bootstraps and minibatch order. These indices are drawn from a CPU generator and
                moved to the ensemble's device (bootstraps once, the minibatch order once per epoch), so the same
                data, seed and device give an identical fit, and the same batches on every device.
            progress: show a tqdm bar over epochs.

        Training runs on the ensemble's :attr:`device`; ``transitions`` (any device, typically the CPU where
        datasets load) are moved there once, before the first epoch. The returned lists are Python floats/ints.

        Returns:
            ``holdout_mse`` (per epoch, mean over members, target units²), ``holdout_mse_initial`` and
            ``holdout_mse_final`` (per member), ``train_loss`` (per epoch), ``epochs``, ``elites``.

        Raises:
            TypeError: ``transitions`` is not a TensorDict.
            KeyError: missing keys (a ``MissingKeysError``, also a ``ValueError``, naming them and the keys present).
            ValueError: wrong shapes (``("next", "observation")`` not ``(N, O)``, a reward not ``(N, 1)``/``(N,)``),
                non-finite values, fewer than 2 transitions, ``holdout_ratio`` outside ``[0, 1)``, ``max_holdout``,
                ``batch_size`` or ``patience`` not a positive int, or ``max_epochs`` not a positive int or None.
        """
        if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int)
                                       or max_epochs < 1):
            raise ValueError(f"max_epochs must be a positive int or None (no cap), got {max_epochs!r}")
        if not 0.0 <= holdout_ratio < 1.0:
            raise ValueError(f"holdout_ratio must be in [0, 1), got {holdout_ratio!r}")
        for name, value in (("max_holdout", max_holdout), ("batch_size", batch_size), ("patience", patience)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        observation, action, next_observation, reward = self._check_transitions(transitions)
        device = self.device
        observation, action, next_observation, reward = (t.to(device) for t in (observation, action,
                                                                                 next_observation, reward))
        n = observation.shape[0]
        generator = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=generator)
        num_holdout = max(1, min(int(holdout_ratio * n), max_holdout))
        hold, train = perm[:num_holdout].to(device), perm[num_holdout:].to(device)
        inputs = torch.cat([observation, action], -1)
        targets = torch.cat([next_observation - observation, reward], -1)
        mean = inputs[train].mean(0)
        std = inputs[train].std(0)
        self.input_mean.copy_(mean)
        self.input_std.copy_(torch.where(std < 1e-12, torch.ones_like(std), std))
        x_train, y_train = (inputs[train] - self.input_mean) / self.input_std, targets[train]
        x_hold, y_hold = (inputs[hold] - self.input_mean) / self.input_std, targets[hold]
        num_train = x_train.shape[0]
        boot = torch.randint(num_train, (self.num_members, num_train), generator=generator).to(device)

        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        decays = [(layer.weight, layer.weight_decay) for layer in [*self.layers, self.output]]

        def holdout_mse() -> torch.Tensor:
            with torch.no_grad():
                m, _ = self._raw(x_hold.unsqueeze(0).expand(self.num_members, -1, -1))
                return ((m - y_hold) ** 2).mean(dim=(1, 2))

        best = holdout_mse()
        initial = best.clone()
        best_state = [self._member_state(k) for k in range(self.num_members)]
        history: dict = {"holdout_mse": [], "train_loss": [], "holdout_mse_initial": initial.tolist()}
        epochs_since_update, epoch = 0, 0
        import tqdm  # local: library import time stays small

        bar = tqdm.tqdm(desc="fit dynamics ensemble", unit="epoch", disable=not progress)
        while max_epochs is None or epoch < max_epochs:
            order = boot[:, torch.randperm(num_train, generator=generator).to(device)]
            losses = []
            for start in range(0, num_train, batch_size):
                idx = order[:, start:start + batch_size]
                m, logvar = self._raw(x_train[idx], None)
                nll = (((m - y_train[idx]) ** 2) * torch.exp(-logvar) + logvar).mean(dim=(1, 2)).sum()
                loss = nll + logvar_bound_coef * (self.max_logvar.sum() - self.min_logvar.sum())
                loss = loss + sum(wd * 0.5 * (w ** 2).sum() for w, wd in decays)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
            epoch += 1
            mse = holdout_mse()
            improved = (best - mse) / best > improvement_threshold
            for k in torch.nonzero(improved).flatten().tolist():
                best[k] = mse[k]
                best_state[k] = self._member_state(k)
            epochs_since_update = 0 if improved.any() else epochs_since_update + 1
            history["holdout_mse"].append(float(mse.mean()))
            history["train_loss"].append(float(torch.stack(losses).mean()))
            bar.update()
            bar.set_postfix(holdout_mse=f"{float(mse.mean()):.4f}", stale=epochs_since_update)
            if epochs_since_update >= patience:
                break
        bar.close()
        for k in range(self.num_members):
            self._load_member_state(k, best_state[k])
        final = holdout_mse()
        self.elite_indices.copy_(torch.argsort(final)[: self.num_elites])
        history.update(holdout_mse_final=final.tolist(), epochs=epoch, elites=self.elite_indices.tolist())
        return history

    def _member_state(self, k: int) -> list[torch.Tensor]:
        return [p[k].detach().clone() for layer in [*self.layers, self.output] for p in (layer.weight, layer.bias)]

    def _load_member_state(self, k: int, state: list[torch.Tensor]) -> None:
        params = [p for layer in [*self.layers, self.output] for p in (layer.weight, layer.bias)]
        with torch.no_grad():
            for p, s in zip(params, state):
                p[k] = s

    def _check_transitions(self, transitions: TensorDictBase) -> tuple[torch.Tensor, ...]:
        if not isinstance(transitions, TensorDictBase):
            raise TypeError(f"transitions must be a TensorDict (N,) of transitions (load_dataset's output), got "
                            f"{type(transitions).__name__}")
        keys = ["observation", "action", ("next", "observation"), ("next", "reward")]
        missing = [k for k in keys if k not in transitions.keys(include_nested=True)]
        if missing:
            raise MissingKeysError(f"transitions lack keys {missing}; need {keys}; they have "
                                   f"{list(transitions.keys(True, True))}")
        observation = transitions["observation"].float()
        action = transitions["action"].float()
        next_observation = transitions["next", "observation"].float()
        reward = transitions["next", "reward"].float()
        if observation.ndim != 2 or observation.shape[-1] != self.observation_dim:
            raise ValueError(f"observation must be (N, {self.observation_dim}), got {tuple(observation.shape)}")
        if next_observation.shape != observation.shape:
            raise ValueError(f"('next', 'observation') must be (N, {self.observation_dim}) like 'observation' "
                             f"{tuple(observation.shape)}, got {tuple(next_observation.shape)}")
        if reward.shape not in ((observation.shape[0],), (observation.shape[0], 1)):
            raise ValueError(f"('next', 'reward') must be (N, 1) or (N,) with N = {observation.shape[0]}, got "
                             f"{tuple(reward.shape)}")
        reward = reward.reshape(-1, 1)
        if action.ndim != 2 or action.shape[-1] != self.action_dim:
            raise ValueError(f"action must be (N, {self.action_dim}), got {tuple(action.shape)}")
        if observation.shape[0] < 2:
            raise ValueError(f"need at least 2 transitions, got {observation.shape[0]}")
        for name, t in (("observation", observation), ("action", action), ("next observation", next_observation),
                        ("reward", reward)):
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).any(-1).sum())
                raise ValueError(f"{name} has non-finite values in {bad} transitions")
        return observation, action, next_observation, reward

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Saves weights, normaliser, elites and constructor arguments to ``path`` (a torch file)."""
        save_atomic({"config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu",
             device: str | torch.device | None = None) -> "DynamicsEnsemble":
        """Rebuilds an ensemble saved by :meth:`save` (on any device: a CUDA-saved file loads on a CPU-only machine).

        Args:
            path: the file :meth:`save` wrote.
            map_location: where ``torch.load`` puts the saved tensors; default ``"cpu"``, so files saved from a GPU
                load anywhere. Any ``torch.load`` ``map_location`` (a string, device, dict or callable).
            device: the returned ensemble's device; None (default): ``map_location`` when it names a device, else the
                CPU. Resolved by :func:`~cmbrl.components.devices.resolve_device`.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: ``device`` (or ``map_location``) names a CUDA device this machine lacks.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no saved ensemble at {path}")
        if device is None:
            device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        device = resolve_device(device)
        if isinstance(map_location, (str, torch.device)):
            map_location = resolve_device(map_location)
        saved = torch.load(path, map_location=map_location, weights_only=True)
        ensemble = cls(**saved["config"], device=device)
        ensemble.load_state_dict(saved["state_dict"])
        return ensemble
