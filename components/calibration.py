"""Uncertainty calibration: how well a penalty ``u(s, a)`` predicts a dynamics ensemble's true one-step error.

Conservative model-based offline RL rests on one assumption: the penalty ``u(s, a)`` is large where the model is
wrong (MOPO, arXiv:2005.13239, section 4: ``|G(s, a)| <= u(s, a)``; MOReL, arXiv:2005.05951, section 4: halt where
the members disagree). MB2PO (seeds/000, section 4) argues that ensemble uncertainty is poorly calibrated; the penalty
study (seeds/003, Table I) compares six penalties by final return only. The Gymnasium v5 MuJoCo locomotion tasks are
simulators that can be reset to any state, so the assumption can be measured directly:

1. :func:`simulate_transitions` sets the simulator to each observation (``qpos[1:]`` then ``qvel``; the x position
   that the observation omits does not change the dynamics, the reward or the termination) and steps it with the
   action: the true ``(next_observation, reward, terminated)``.
2. :func:`calibration_data` puts the ensemble's one-step error next to every penalty (the catalogue's and user
   callables) and MOReL's halting statistic, row by row.
3. :func:`calibration_metrics` scores each penalty: Spearman rank correlation with the error, AUROC for flagging the
   worst ``worst_fraction`` of errors, a reliability curve (mean error in equal-count bins of ``u``), and MOReL's
   halting rule's precision and recall against the same worst rows; :func:`plot_reliability` draws the curves.

Conventions: ``E`` members, ``B`` rows, ``O`` observation dim, ``A`` action dim, ``D = O + 1`` (next observation
and reward, as the penalties see them). Errors and penalties are in the units of the predicted quantities (the
observation's own units, reward per step), unnormalised L2 norms over ``D`` like the penalties themselves.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

from .ensemble import DynamicsEnsemble
from .penalties import PenaltyFn, get_penalty, max_pairwise_diff

__all__ = ["CALIBRATION_ENVS", "CALIBRATION_PENALTIES", "simulate_transitions", "calibration_data",
           "calibration_metrics", "morel_halt_threshold", "spearman", "auroc", "plot_reliability",
           "format_calibration_table", "ranking_agreement"]

CALIBRATION_ENVS: dict[str, float | None] = {"Hopper-v5": 10.0, "Walker2d-v5": 10.0, "HalfCheetah-v5": None}
"""Environments whose observation is ``qpos[1:]`` then ``qvel`` (Gymnasium v5 defaults), with the bound the
observation clips ``qvel`` to (``None``: no clipping). A row whose velocity sits at that bound does not determine the
simulator state and is marked invalid."""

CALIBRATION_PENALTIES: tuple[str, ...] = ("combined", "max_aleatoric", "individual_std", "max_center_distance",
                                          "ensemble_std", "max_pairwise_diff")
"""The catalogue's six penalties (no aliases, no ``"none"``), in the penalty study's order by return (seeds/003,
Table I: combined > max_aleatoric > individual > center > ensemble > pairwise)."""


def simulate_transitions(env_id: str, observation: torch.Tensor | np.ndarray, action: torch.Tensor | np.ndarray,
                         *, x_position: float = 0.0) -> TensorDict:
    """Steps the real MuJoCo simulator once from each observation: the ground truth for a dynamics model.

    For each row the simulator's state is set to ``qpos = [x_position, observation[:nq - 1]]`` and
    ``qvel = observation[nq - 1:]`` (``env.unwrapped.set_state``), then stepped with the action clipped to the action
    space (``ModelEnv`` clips the same way). The x position the observation omits does not enter the dynamics, the
    reward (the forward reward is the x *displacement* over ``dt``) or the termination; ``tests/test_calibration.py``
    checks this, and that a recorded transition is reproduced to float rounding (≤ 1e-9; not bit for bit, because a
    different x changes the rounding of world coordinates, and MuJoCo's solver warm start is not in the observation).

    A row is invalid (``valid`` False, outputs NaN) when its observation or action is not finite, when a velocity
    sits at or beyond the bound the observation clips it to (:data:`CALIBRATION_ENVS`: Hopper and Walker2d clip
    ``qvel`` to ±10, so the observation does not determine the state), or when MuJoCo flags the step as unstable
    (a ``BADQACC``/``BADQPOS``/``BADQVEL`` warning; MuJoCo then silently resets the state) or returns a non-finite
    observation.

    Args:
        env_id: one of :data:`CALIBRATION_ENVS` (``"Hopper-v5"``, ``"Walker2d-v5"``, ``"HalfCheetah-v5"``).
        observation: ``(B, O)`` observations (float32 or float64), ``O = nq − 1 + nv``.
        action: ``(B, A)`` actions.
        x_position: the x coordinate (metres) the simulator is placed at. Default 0.

    Returns:
        TensorDict of batch size ``(B,)``: ``("next", "observation") (B, O)`` float64, ``("next", "reward") (B, 1)``
        float64 (reward per step), ``("next", "terminated") (B, 1)`` bool (Gymnasium's health rule) and
        ``"valid" (B,)`` bool.

    Raises:
        ValueError: ``env_id`` not in :data:`CALIBRATION_ENVS`, or shapes that do not match its spaces.

    Examples:
        >>> import gymnasium as gym
        >>> env = gym.make("Hopper-v5")
        >>> obs, _ = env.reset(seed=0)
        >>> action = env.action_space.sample()
        >>> next_obs, reward, *_ = env.step(action)
        >>> truth = simulate_transitions("Hopper-v5", obs[None], action[None])
        >>> bool(abs(truth["next", "reward"].item() - reward) < 1e-9)
        True
    """
    import gymnasium as gym
    import mujoco

    if env_id not in CALIBRATION_ENVS:
        raise ValueError(f"env_id must be one of {sorted(CALIBRATION_ENVS)} (observations qpos[1:] + qvel), "
                         f"got {env_id!r}")
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    nq, nv = env.model.nq, env.model.nv
    observation = torch.as_tensor(observation).detach().cpu().to(torch.float64)
    action = torch.as_tensor(action).detach().cpu().to(torch.float64)
    obs_dim, act_dim = nq - 1 + nv, env.action_space.shape[0]
    if observation.ndim != 2 or observation.shape[1] != obs_dim or action.shape != (observation.shape[0], act_dim):
        raise ValueError(f"{env_id} needs observation (B, {obs_dim}) and action (B, {act_dim}), got "
                         f"{tuple(observation.shape)} and {tuple(action.shape)}")
    low, high = env.action_space.low, env.action_space.high
    bound = CALIBRATION_ENVS[env_id]
    valid = torch.isfinite(observation).all(-1) & torch.isfinite(action).all(-1)
    if bound is not None:
        valid &= observation[:, nq - 1:].abs().amax(-1) < bound
    num = observation.shape[0]
    next_observation = torch.full((num, obs_dim), math.nan, dtype=torch.float64)
    reward = torch.full((num, 1), math.nan, dtype=torch.float64)
    terminated = torch.zeros(num, 1, dtype=torch.bool)
    unstable = [int(w) for w in (mujoco.mjtWarning.mjWARN_BADQACC, mujoco.mjtWarning.mjWARN_BADQPOS,
                                 mujoco.mjtWarning.mjWARN_BADQVEL)]
    # the env's own action dtype (float32): Gymnasium's control cost then rounds as in a real episode
    obs_np, act_np = observation.numpy(), np.clip(action.numpy(), low, high).astype(env.action_space.dtype)
    for row in torch.nonzero(valid).flatten().tolist():
        env.set_state(np.concatenate([[x_position], obs_np[row, :nq - 1]]), obs_np[row, nq - 1:])
        for w in unstable:
            env.data.warning[w].number = 0
        next_obs, r, term, _, _ = env.step(act_np[row])
        if any(env.data.warning[w].number for w in unstable) or not np.isfinite(next_obs).all():
            valid[row] = False
            continue
        next_observation[row] = torch.from_numpy(np.asarray(next_obs, dtype=np.float64))
        reward[row, 0], terminated[row, 0] = float(r), bool(term)
    env.close()
    return TensorDict({"next": {"observation": next_observation, "reward": reward, "terminated": terminated},
                       "valid": valid}, batch_size=[num])


def _resolve_penalties(penalties: Sequence[str | PenaltyFn] | Mapping[str, PenaltyFn]) -> dict[str, PenaltyFn]:
    if isinstance(penalties, Mapping):
        items = [(str(name), get_penalty(fn)) for name, fn in penalties.items()]
    elif isinstance(penalties, (str, bytes)) or not isinstance(penalties, Sequence):
        raise TypeError(f"penalties must be a sequence of names / callables or a name -> callable mapping, "
                        f"got {type(penalties).__name__}")
    else:
        items = [(p if isinstance(p, str) else getattr(p, "__name__", f"penalty_{i}"), get_penalty(p))
                 for i, p in enumerate(penalties)]
    names = [name for name, _ in items]
    if not items or len(set(names)) != len(names):
        raise ValueError(f"penalties must be non-empty with unique names, got {names}")
    return dict(items)


@torch.no_grad()
def calibration_data(
    ensemble: DynamicsEnsemble,
    env_id: str,
    observation: torch.Tensor,
    action: torch.Tensor,
    *,
    penalties: Sequence[str | PenaltyFn] | Mapping[str, PenaltyFn] = CALIBRATION_PENALTIES,
    penalty_members: str = "all",
    truth: TensorDict | None = None,
    seed: int = 0,
) -> TensorDict:
    """The ensemble's true one-step error next to every penalty, row by row.

    Each row is assigned one elite member ``k`` uniformly at random (seeded), as :class:`cmbrl.envs.ModelEnv` does
    when it samples a next state; the model's prediction is that member's mean, and its error is measured against
    :func:`simulate_transitions`. The penalties and MOReL's statistic read the members named by ``penalty_members``
    (the model env's default: all ``E``), with ``member`` pointing at ``k``.

    Args:
        ensemble: a fitted :class:`DynamicsEnsemble` for ``env_id``'s observation and action sizes.
        env_id: one of :data:`CALIBRATION_ENVS`.
        observation: ``(B, O)``.
        action: ``(B, A)``; clipped to ``[-1, 1]`` before the model sees it (as ``ModelEnv`` does; the three
            environments' action space).
        penalties: names in :data:`cmbrl.components.PENALTIES` and/or callables ``(mean (E, B, D), std (E, B, D),
            member (B,)) -> (B,)`` (named by ``__name__``), or a ``name -> penalty`` mapping. Default: the
            catalogue's six (:data:`CALIBRATION_PENALTIES`).
        penalty_members: ``"all"`` (default; MOPO's and OfflineRL-Kit's code) or ``"elites"``.
        truth: the output of :func:`simulate_transitions` for these rows, if already computed.
        seed: seeds the per-row member draw.

    Devices: the ensemble may live on any device (its forward pass runs there, on a copy of the inputs); the inputs
    may come on any device; the truth (MuJoCo) and the returned TensorDict are on the CPU.

    Returns:
        TensorDict of batch size ``(B,)``: ``"observation"``, ``"action"``, the truth's ``"next"`` entries,
        ``"valid" (B,)`` (the truth is valid and the prediction finite), ``"member" (B,)`` long (index into all
        ``E``), ``"error" (B,)`` (``||mean_k − (s', r)||_2`` over ``D``), ``"observation_error" (B,)`` (over the
        ``O`` observation columns), ``"reward_error" (B,)`` (``|r̂_k − r|``, reward per step),
        ``"ensemble_mean_error" (B,)`` (the elites' average mean's error), ``"uncertainty"`` (one ``(B,)`` entry per
        penalty, reward units) and ``"disagreement" (B,)`` (``max_{i,j} ||mean_i − mean_j||_2``, the statistic
        ``ModelEnv``'s ``halt_threshold`` compares). Float entries are float32 except the truth (float64).

    Raises:
        ValueError: bad ``env_id``, shapes, ``penalty_members``, unknown penalty names or duplicate names.
        TypeError: ``penalties`` of the wrong type.
    """
    if penalty_members not in ("all", "elites"):
        raise ValueError(f"penalty_members must be 'all' or 'elites', got {penalty_members!r}")
    fns = _resolve_penalties(penalties)
    observation = torch.as_tensor(observation, dtype=torch.float32).cpu()
    action = torch.as_tensor(action, dtype=torch.float32).cpu().clamp(-1.0, 1.0)
    if (observation.ndim != 2 or observation.shape[1] != ensemble.observation_dim
            or action.shape != (observation.shape[0], ensemble.action_dim)):
        raise ValueError(f"the ensemble needs observation (B, {ensemble.observation_dim}) and action "
                         f"(B, {ensemble.action_dim}), got {tuple(observation.shape)} and {tuple(action.shape)}")
    if truth is None:
        truth = simulate_transitions(env_id, observation, action)
    num = observation.shape[0]
    generator = torch.Generator().manual_seed(seed)
    position = torch.randint(ensemble.num_elites, (num,), generator=generator)
    elites = ensemble.elite_indices.cpu()
    member = elites[position]
    was_training = ensemble.training
    ensemble.eval()
    device = ensemble.input_mean.device  # the ensemble may live on a GPU; the truth and the metrics stay on the CPU
    mean, std = ensemble(observation.to(device), action.to(device), members=penalty_members, chunk_size=4096)
    mean, std = mean.cpu(), std.cpu()
    ensemble.train(was_training)
    member_in_use = member if penalty_members == "all" else position
    rows = torch.arange(num)
    target = torch.cat([truth["next", "observation"], truth["next", "reward"]], -1).float()
    difference = mean[member_in_use, rows] - target
    elite_positions = elites if penalty_members == "all" else torch.arange(ensemble.num_elites)
    uncertainty = {name: fn(mean, std, member_in_use).float() for name, fn in fns.items()}
    for name, value in uncertainty.items():
        if value.shape != (num,):
            raise ValueError(f"penalty {name!r} returned shape {tuple(value.shape)}, expected ({num},)")
    out = TensorDict({
        "observation": observation, "action": action, "next": truth["next"].clone(), "member": member,
        "error": difference.norm(dim=-1), "observation_error": difference[:, :-1].norm(dim=-1),
        "reward_error": difference[:, -1].abs(),
        "ensemble_mean_error": (mean[elite_positions].mean(0) - target).norm(dim=-1),
        "disagreement": max_pairwise_diff(mean, std, member_in_use),
        "uncertainty": TensorDict(uncertainty, batch_size=[num]),
    }, batch_size=[num])
    finite = torch.isfinite(mean).all(-1).all(0) & torch.isfinite(std).all(-1).all(0)
    out["valid"] = truth["valid"] & finite
    return out


@torch.no_grad()
def morel_halt_threshold(ensemble: DynamicsEnsemble, observation: torch.Tensor, action: torch.Tensor, *,
                         pessimism_coef: float = 1.0, members: str = "all") -> float:
    """MOReL's halting threshold: the dataset's largest member disagreement over ``pessimism_coef``.

    ``max_b max_{i,j} ||mean_i(s_b, a_b) − mean_j(s_b, a_b)||_2 / pessimism_coef`` over the dataset pairs, as MOReL's
    code sets ``truncate_lim``; the statistic is the one ``ModelEnv(halt_threshold=...)`` compares (here over the
    next observation *and* the reward, as every cmbrl penalty; MOReL's models predict the next state only).

    Args:
        ensemble: fitted :class:`DynamicsEnsemble`.
        observation: ``(N, O)`` dataset observations.
        action: ``(N, A)`` dataset actions.
        pessimism_coef: κ > 0; larger halts sooner. Default 1.0 (no dataset pair halts).
        members: ``"all"`` (default, ``ModelEnv``'s ``penalty_members``) or ``"elites"``.

    Returns:
        The threshold, in the units of the predictions.

    Raises:
        ValueError: ``pessimism_coef <= 0``, or shapes the ensemble rejects.

    Reference: MOReL, Kidambi et al., arXiv:2005.05951, section 4.2 (unknown state-action detector).
    """
    if not pessimism_coef > 0:
        raise ValueError(f"pessimism_coef must be > 0, got {pessimism_coef!r}")
    was_training = ensemble.training
    ensemble.eval()
    device = ensemble.input_mean.device  # inputs (any device) go to the ensemble's
    mean, std = ensemble(torch.as_tensor(observation, dtype=torch.float32).to(device),
                         torch.as_tensor(action, dtype=torch.float32).to(device), members=members, chunk_size=4096)
    ensemble.train(was_training)
    member = torch.zeros(mean.shape[1], dtype=torch.long, device=mean.device)
    return max_pairwise_diff(mean, std, member).max().item() / pessimism_coef


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties sharing their average rank (float64)."""
    values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks) of two ``(B,)`` tensors.

    Returns NaN when either is constant (the correlation is undefined).

    Raises:
        ValueError: shapes differ, are not 1-D, or hold fewer than 2 rows.
    """
    if x.ndim != 1 or x.shape != y.shape or x.numel() < 2:
        raise ValueError(f"spearman needs two 1-D tensors of the same length >= 2, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.pow(2).sum() * ry.pow(2).sum()).sqrt()
    return math.nan if denominator == 0 else (rx * ry).sum().div(denominator).item()


def auroc(score: torch.Tensor, label: torch.Tensor) -> float:
    """Area under the ROC curve of ``score`` for the boolean ``label`` (Mann–Whitney U over average ranks).

    1: every positive scores above every negative; 0.5: chance. Ties count one half. NaN when only one class occurs.

    Raises:
        ValueError: shapes differ or are not 1-D.
    """
    if score.ndim != 1 or score.shape != label.shape:
        raise ValueError(f"auroc needs 1-D score and label of the same length, got {tuple(score.shape)} and "
                         f"{tuple(label.shape)}")
    label = label.bool()
    positives, negatives = int(label.sum()), int((~label).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = _average_ranks(score)
    return ((ranks[label].sum() - positives * (positives + 1) / 2) / (positives * negatives)).item()


def calibration_metrics(data: TensorDict, *, worst_fraction: float = 0.1, num_bins: int = 10,
                        halt_thresholds: Mapping[str, float] | None = None, error_key: str = "error") -> dict:
    """Scores each penalty of :func:`calibration_data`'s output against the true error, on its valid rows.

    Args:
        data: :func:`calibration_data`'s TensorDict.
        worst_fraction: share of rows with the largest error that a penalty should flag (AUROC's positives and the
            halting rule's ground truth): the top ``max(1, round(worst_fraction · n))`` rows. Default 0.1.
        num_bins: equal-count bins of ``u`` for the reliability curve. Default 10.
        halt_thresholds: ``label -> threshold`` on ``data["disagreement"]`` (e.g. from :func:`morel_halt_threshold`);
            each gets the precision and recall of "halt = disagreement > threshold" for the worst rows.
        error_key: the error column to score (``"error"``, ``"observation_error"``, ``"reward_error"`` or
            ``"ensemble_mean_error"``). Default ``"error"``.

    Returns:
        A JSON-serialisable dict: ``num_rows``, ``num_valid``, ``error_mean``, ``error_threshold`` (the smallest
        error among the worst rows), ``penalties``: ``{name: {"spearman", "auroc", "uncertainty_mean", "bins":
        {"uncertainty", "error", "count"}}}`` (bin means, low to high ``u``), and ``halting``: ``{label:
        {"threshold", "halted_fraction", "precision", "recall"}}`` (precision NaN when nothing halts).

    Raises:
        ValueError: ``worst_fraction`` outside (0, 1), ``num_bins < 1``, an unknown ``error_key``, or fewer than 2
            valid rows.
    """
    if not 0 < worst_fraction < 1:
        raise ValueError(f"worst_fraction must be in (0, 1), got {worst_fraction!r}")
    if not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    allowed = ("error", "observation_error", "reward_error", "ensemble_mean_error")
    if error_key not in allowed:
        raise ValueError(f"error_key must be one of {allowed}, got {error_key!r}")
    uncertainty = data["uncertainty"]
    names = list(uncertainty.keys())
    valid = data["valid"] & torch.isfinite(data[error_key])
    for name in names:
        valid &= torch.isfinite(uncertainty[name])
    num_valid = int(valid.sum())
    if num_valid < 2:
        raise ValueError(f"need at least 2 valid rows, got {num_valid} of {data.shape[0]}")
    error = data[error_key][valid].double()
    num_worst = max(1, round(worst_fraction * num_valid))
    order = torch.sort(error, descending=True, stable=True).indices
    worst = torch.zeros(num_valid, dtype=torch.bool)
    worst[order[:num_worst]] = True
    result = {"num_rows": data.shape[0], "num_valid": num_valid, "error_mean": error.mean().item(),
              "error_threshold": error[order[num_worst - 1]].item(), "penalties": {}, "halting": {}}
    for name in names:
        u = uncertainty[name][valid].double()
        bins = torch.tensor_split(torch.sort(u, stable=True).indices, min(num_bins, num_valid))
        result["penalties"][name] = {
            "spearman": spearman(u, error), "auroc": auroc(u, worst), "uncertainty_mean": u.mean().item(),
            "bins": {"uncertainty": [u[b].mean().item() for b in bins], "error": [error[b].mean().item() for b in bins],
                     "count": [b.numel() for b in bins]},
        }
    disagreement = data["disagreement"][valid]
    for label, threshold in (halt_thresholds or {}).items():
        halted = disagreement > threshold
        hits = int((halted & worst).sum())
        result["halting"][label] = {
            "threshold": float(threshold), "halted_fraction": halted.double().mean().item(),
            "precision": hits / int(halted.sum()) if halted.any() else math.nan, "recall": hits / num_worst}
    return result


def plot_reliability(path: str | Path, results: Mapping[str, dict], title: str) -> None:
    """One panel per penalty: mean true error against mean ``u`` in equal-count bins, one line per state set.

    A dotted diagonal marks ``error = u`` (MOPO's assumption, arXiv:2005.13239 section 4, is ``error <= u`` up to
    scale: the curve's rank order matters, not its height).

    Deterministic for deterministic inputs (no timestamps in the PNG). Log axes when all values are positive.

    Args:
        path: the PNG to write.
        results: ``state set label -> calibration_metrics(...)`` (the same penalties in each).
        title: the figure title.

    Raises:
        ValueError: ``results`` is empty.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    if not results:
        raise ValueError("results must hold at least one state set")
    names = list(next(iter(results.values()))["penalties"])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        logscale = True
        for label, metrics in results.items():
            entry = metrics["penalties"][name]
            u, err = entry["bins"]["uncertainty"], entry["bins"]["error"]
            logscale &= min(u) > 0 and min(err) > 0
            ax.plot(u, err, "o-", ms=3, label=f"{label} (ρ {entry['spearman']:.2f}, AUROC {entry['auroc']:.2f})")
        low = min(min(m["penalties"][name]["bins"]["uncertainty"] + m["penalties"][name]["bins"]["error"])
                  for m in results.values())
        high = max(max(m["penalties"][name]["bins"]["uncertainty"] + m["penalties"][name]["bins"]["error"])
                   for m in results.values())
        ax.plot([low, high], [low, high], ":", color="grey", lw=1, label="error = u")
        if logscale:
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):  # minor labels of a log axis collide
                axis.set_minor_formatter(NullFormatter())
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("u(s, a), bin mean")
        ax.set_ylabel("true one-step error, bin mean")
        ax.legend(fontsize=6.5)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def format_calibration_table(rows: Sequence[Mapping], table: str = "penalties") -> str:
    """A markdown table over runs of :func:`calibration_metrics`.

    Args:
        rows: dicts with ``"ensemble"``, ``"state_set"`` (labels) and ``"metrics"`` (:func:`calibration_metrics`'
            output), one per table row.
        table: ``"penalties"`` (default: Spearman ρ / AUROC in one column per penalty), ``"halting"`` (threshold,
            halted share, precision and recall per halting rule) or ``"agreement"`` (the penalties ordered by ρ,
            and :func:`ranking_agreement` with the penalty study's order by ρ and by AUROC; "—" where a run lacks
            one of :data:`CALIBRATION_PENALTIES`).

    Returns:
        The markdown text.

    Raises:
        ValueError: ``rows`` is empty or ``table`` unknown.
    """
    if not rows:
        raise ValueError("rows must not be empty")
    if table == "penalties":
        names = list(rows[0]["metrics"]["penalties"])
        lines = ["| ensemble | state set | valid rows | mean error | " + " | ".join(names) + " |",
                 "|---|---|---|---|" + "---|" * len(names)]
        for row in rows:
            m = row["metrics"]
            cells = [f"{m['penalties'][n]['spearman']:.2f} / {m['penalties'][n]['auroc']:.2f}" for n in names]
            lines.append(f"| {row['ensemble']} | {row['state_set']} | {m['num_valid']:,}/{m['num_rows']:,} | "
                         f"{m['error_mean']:.3f} | " + " | ".join(cells) + " |")
    elif table == "halting":
        lines = ["| ensemble | state set | rule | threshold | halted | precision | recall |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {row['ensemble']} | {row['state_set']} | {rule} | {h['threshold']:.3f} | "
                  f"{100 * h['halted_fraction']:.1f} % | {h['precision']:.2f} | {h['recall']:.2f} |"
                  for row in rows for rule, h in row["metrics"]["halting"].items()]
    elif table == "agreement":
        lines = ["| ensemble | state set | by ρ, best > worst | agreement (ρ) | agreement (AUROC) |",
                 "|---|---|---|---|---|"]
        for row in rows:
            m = row["metrics"]
            order = sorted(m["penalties"], key=lambda n: -m["penalties"][n]["spearman"])
            complete = all(name in m["penalties"] for name in CALIBRATION_PENALTIES)
            cells = [f"{ranking_agreement(m, score=k):+.2f}" if complete else "—" for k in ("spearman", "auroc")]
            lines.append(f"| {row['ensemble']} | {row['state_set']} | {' > '.join(order)} | {cells[0]} | {cells[1]} |")
    else:
        raise ValueError(f"table must be 'penalties', 'halting' or 'agreement', got {table!r}")
    return "\n".join(lines)


def ranking_agreement(metrics: Mapping, reference: Sequence[str] = CALIBRATION_PENALTIES,
                      score: str = "spearman") -> float:
    """Spearman correlation between a reference ranking of penalties and their ranking by a calibration score.

    1: the penalties calibrate in exactly the reference's order; −1: in the reverse order; ~0: unrelated.

    Args:
        metrics: :func:`calibration_metrics`' output holding every penalty of ``reference``.
        reference: penalty names, best first. Default: the penalty study's order by return (seeds/003, Table I),
            :data:`CALIBRATION_PENALTIES`.
        score: ``"spearman"`` or ``"auroc"`` (higher is better calibrated).

    Raises:
        ValueError: an unknown ``score``, or a reference penalty missing from ``metrics``.
    """
    if score not in ("spearman", "auroc"):
        raise ValueError(f"score must be 'spearman' or 'auroc', got {score!r}")
    missing = [name for name in reference if name not in metrics["penalties"]]
    if missing:
        raise ValueError(f"metrics lack the reference penalties {missing}; it holds {list(metrics['penalties'])}")
    scores = torch.tensor([metrics["penalties"][name][score] for name in reference], dtype=torch.float64)
    return spearman(scores, -torch.arange(len(reference), dtype=torch.float64))
