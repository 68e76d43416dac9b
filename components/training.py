"""Pieces every offline learner's training script needs: a cached ensemble fit, Q diagnostics, evaluation, plots.

``examples/mopo.py``, ``examples/awac.py`` and ``examples/mb2po.py`` share these, so a diagnostic means the same
thing in every row of the learning benchmark.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from .checkpoints import save_atomic
from .datasets import DATASET_RECIPES, resolve_dataset_id
from .ensemble import DynamicsEnsemble

MOPO_HYPERPARAMETERS: dict[str, tuple[int, float]] = {
    # dataset -> (horizon h, penalty_coef λ). OfflineRL-Kit's suggested hypers (run_example/run_mopo.py, D4RL v2);
    # the random datasets, which Kit does not list, from MOPO's configs (examples/config/d4rl/*_random.py).
    "halfcheetah-random": (5, 0.5), "hopper-random": (5, 1.0), "walker2d-random": (1, 1.0),
    "halfcheetah-medium": (5, 0.5), "hopper-medium": (5, 5.0), "walker2d-medium": (5, 0.5),
    "halfcheetah-medium-replay": (5, 0.5), "hopper-medium-replay": (5, 2.5), "walker2d-medium-replay": (1, 2.5),
    "halfcheetah-medium-expert": (5, 2.5), "hopper-medium-expert": (5, 5.0), "walker2d-medium-expert": (1, 2.5),
}
"""Per-dataset MOPO rollout horizon ``h`` and penalty coefficient ``λ`` (``../shared/HYPERPARAMETERS.md`` §2)."""
DEFAULT_MOPO_HYPERPARAMETERS = (5, 1.0)
"""``(h, λ)`` for datasets outside the table (e.g. the expert sets): MOPO's most common values."""

COMBO_HYPERPARAMETERS: dict[str, tuple[int, float]] = {
    # dataset -> (horizon h, β). OfflineRL-Kit's suggested hypers (run_example/run_combo.py docstring, D4RL v2);
    # β is Kit's cql_weight, the scale of cmbrl.agents.COMBOLoss (twice eq. 2's β, see its docstring).
    "halfcheetah-medium": (5, 0.5), "hopper-medium": (5, 5.0), "walker2d-medium": (1, 5.0),
    "halfcheetah-medium-replay": (5, 0.5), "hopper-medium-replay": (5, 0.5), "walker2d-medium-replay": (1, 0.5),
    "halfcheetah-medium-expert": (5, 5.0), "hopper-medium-expert": (5, 5.0), "walker2d-medium-expert": (1, 5.0),
}
"""Per-dataset COMBO rollout horizon ``h`` and conservatism ``β`` (``../shared/HYPERPARAMETERS.md`` §3)."""
DEFAULT_COMBO_HYPERPARAMETERS = (5, 5.0)
"""``(h, β)`` for datasets outside the table (random, expert): OfflineRL-Kit's ``run_combo.py`` defaults
(``--rollout-length 5``, ``--cql-weight 5.0``); the COMBO paper's own table is not available here (unverified)."""

__all__ = ["MOPO_HYPERPARAMETERS", "mopo_hyperparameters", "dataset_env_id", "resolve_model_settings",
           "parse_dataclass_args", "resolve_run_device", "compile_setting", "learner_kwargs", "device_record",
           "make_eval_env", "observation_stats", "standardized", "observation_norm", "load_checkpoint", "rng_state", "restore_rng_state", "accumulate_metrics",
           "mean_metrics", "discounted_returns_to_go", "make_q_probe", "critic_values", "evaluate_policy",
           "file_lock", "fit_or_load_ensemble", "plot_learning_curve", "COMBO_HYPERPARAMETERS",
           "combo_hyperparameters", "train_in_model", "default_max_transitions", "negative_reward_warning",
           "rollout_stats", "RESULTS_DIR", "reference_scores", "reference_lines", "final_score_line"]

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
"""The saved benchmark results (``benchmarks/results/<folder>/results.csv``) where BC's reference rows are read."""


def mopo_hyperparameters(dataset_id: str) -> tuple[int, float]:
    """``(horizon, penalty_coef)`` for a dataset id (``cmbrl/hopper/medium-v0`` or ``hopper-medium``)."""
    name = dataset_id.removeprefix("cmbrl/").removesuffix("-v0").replace("/", "-")
    return MOPO_HYPERPARAMETERS.get(name, DEFAULT_MOPO_HYPERPARAMETERS)


def combo_hyperparameters(dataset_id: str) -> tuple[int, float]:
    """``(horizon, beta)`` for a dataset id (``cmbrl/hopper/medium-v0`` or ``hopper-medium``)."""
    name = dataset_id.removeprefix("cmbrl/").removesuffix("-v0").replace("/", "-")
    return COMBO_HYPERPARAMETERS.get(name, DEFAULT_COMBO_HYPERPARAMETERS)


def default_max_transitions(num_transitions: int) -> int:
    """The model-based examples' default ``--max-transitions`` for a dataset of ``num_transitions``: 0 (all) up to
    200k transitions (the medium-replay sets), else the first 100k (the 1M-step sets; a CPU budget, not a paper's)."""
    return 0 if num_transitions <= 200_000 else 100_000


def dataset_env_id(dataset: str, env_id: str = "") -> tuple[str, str]:
    """Resolves a dataset name to its Minari id and the Gymnasium env id it was recorded in (``env_id`` if given).

    cmbrl's recipes answer without touching the disk; other Minari ids read the dataset's spec (loads it).
    """
    import minari

    dataset = resolve_dataset_id(dataset)
    if not env_id:
        env_id = (DATASET_RECIPES[dataset].env_id if dataset in DATASET_RECIPES
                  else minari.load_dataset(dataset).spec.env_spec.id)
    return dataset, env_id


def resolve_model_settings(args):
    """Fills a model-based example's dataset-dependent defaults; returns a new dataclass of the same type.

    ``args`` is a dataclass with ``dataset``, ``env_id``, ``termination_fn``, ``horizon`` (0: MOPO's value for the
    dataset), ``penalty_coef`` (negative: MOPO's value), ``ensemble_seed`` (negative: ``seed``) and ``seed``.
    """
    import dataclasses

    dataset, env_id = dataset_env_id(args.dataset, args.env_id)
    horizon, penalty_coef = mopo_hyperparameters(dataset)
    return dataclasses.replace(
        args, dataset=dataset, env_id=env_id, termination_fn=args.termination_fn or env_id.split("-")[0].lower(),
        horizon=args.horizon or horizon, penalty_coef=penalty_coef if args.penalty_coef < 0 else args.penalty_coef,
        ensemble_seed=args.seed if args.ensemble_seed < 0 else args.ensemble_seed)


def parse_dataclass_args(cls, argv: Sequence[str] | None = None, description: str | None = None):
    """Parses ``--field-name VALUE`` for every field of the dataclass ``cls`` into a ``cls`` (tyro): ``--help``
    shows ``description`` (the script's docstring) and each flag's type, attribute docstring and default.

    See :func:`cmbrl.components.cli.parse_dataclass_args`.
    """
    from .cli import parse_dataclass_args as parse

    return parse(cls, argv, description)


def resolve_run_device(args) -> torch.device:
    """The :class:`torch.device` of an example's ``--device`` (``args.device``), with its ``--compile`` /
    ``--cudagraphs`` (``args.compile``, ``args.cudagraphs``; absent fields count as off) checked against it.

    Call it first, before the data or any fit, so that a bad value fails at once.

    Raises:
        SystemExit: naming the flag, the value received and what is allowed (``--device cuda`` on a machine without
            CUDA, ``--cudagraphs 1`` off CUDA, a ``--compile`` or ``--cudagraphs`` other than 0 or 1).
    """
    from .devices import check_compile_options, resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as error:  # names the value, what is allowed or what this machine has
        raise SystemExit(f"--device {args.device!r}: {error}") from None
    for flag in ("compile", "cudagraphs"):
        if getattr(args, flag, 0) not in (0, 1):
            raise SystemExit(f"--{flag} must be 0 or 1, got {getattr(args, flag)!r}")
    try:
        check_compile_options(device, bool(getattr(args, "compile", 0)), bool(getattr(args, "cudagraphs", 0)))
    except ValueError:
        raise SystemExit(f"--cudagraphs 1 needs a CUDA device (CUDA graphs are a CUDA feature), but --device "
                         f"{args.device} is {device}: use --cudagraphs 0 there, or --device cuda") from None
    return device


def compile_setting(args) -> bool | dict:
    """The learners' ``compile`` argument for an example's ``--compile`` and ``--compile-backend``: ``False``,
    ``True`` (``torch.compile``'s default, inductor) or ``{"backend": name}`` for another ``torch.compile`` backend
    (``aot_eager``: no code generation, seconds instead of a minute per compile; the tests use it)."""
    if not getattr(args, "compile", 0):
        return False
    backend = getattr(args, "compile_backend", "inductor") or "inductor"
    return True if backend == "inductor" else {"backend": backend}


def learner_kwargs(args, device: torch.device) -> dict:
    """A learner's ``device``, ``compile`` (:func:`compile_setting`) and ``cudagraphs`` arguments from an example's
    ``--device`` (resolved: ``device``), ``--compile``, ``--compile-backend`` and ``--cudagraphs``."""
    return {"device": device, "compile": compile_setting(args), "cudagraphs": bool(getattr(args, "cudagraphs", 0))}


def device_record(device: torch.device | str) -> dict:
    """What a ``result.json`` records about where it ran: ``device`` (e.g. ``"cuda:0"``), ``torch`` (version),
    ``cuda`` (torch's CUDA version or ``None``) and, on CUDA, ``gpu`` (the device's name)."""
    device = torch.device(device)
    record = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def make_eval_env(env_id: str, device: torch.device | str = "cpu", seed: int | None = None):
    """The real environment for evaluations: a CPU MuJoCo ``GymEnv`` whose tensors TorchRL puts on ``device``
    (``GymEnv(..., device=device)``: observations arrive there, the policy's actions are read back from there), with
    ``DoubleToFloat`` (MuJoCo observations are float64). Seeded with ``seed`` when given."""
    from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv

    env = TransformedEnv(GymEnv(env_id, device=torch.device(device)), DoubleToFloat())
    if seed is not None:
        env.set_seed(seed)
    return env


def observation_stats(observations: torch.Tensor, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale)`` of a dataset's observations for standardisation: the per-dimension mean and the population
    standard deviation plus ``eps`` (CORL's ``compute_mean_std(states, eps=1e-3)``, used by its AWAC and IQL).

    Args:
        observations: ``(T, O)`` floating point, on any device (the statistics are computed there, in float64).
        eps: added to the standard deviation (keeps constant dimensions finite), > 0.

    Returns:
        ``loc`` and ``scale``, each ``(O,)`` float32 on ``observations``' device.

    Raises:
        ValueError: not a 2-d floating-point tensor with at least one row, or ``eps <= 0``.
    """
    if observations.ndim != 2 or observations.shape[0] < 1 or not observations.is_floating_point():
        raise ValueError(f"observations must be a (T, O) floating-point tensor with T >= 1, got shape "
                         f"{tuple(observations.shape)} and dtype {observations.dtype}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    x = observations.double()
    return x.mean(0).float(), (x.std(0, unbiased=False) + eps).float()


def standardized(transitions: TensorDictBase, loc: torch.Tensor, scale: torch.Tensor) -> TensorDictBase:
    """A copy of ``transitions`` with ``"observation"`` and ``("next", "observation")`` replaced by
    ``(x - loc) / scale`` (the other entries shared, not copied); ``loc``, ``scale``: ``(O,)``, as
    :func:`observation_stats` returns. Use the same statistics for the env: :func:`observation_norm`."""
    out = transitions.copy()
    out.set("observation", (transitions.get("observation") - loc) / scale)
    if ("next", "observation") in transitions.keys(include_nested=True):
        out.set(("next", "observation"), (transitions.get(("next", "observation")) - loc) / scale)
    return out


def observation_norm(loc: torch.Tensor, scale: torch.Tensor):
    """TorchRL's ``ObservationNorm`` computing ``(observation - loc) / scale`` (``standard_normal=True``): append it
    to an env (``env.append_transform(observation_norm(loc, scale))``) so that its observations match data
    standardised by :func:`standardized` with the same ``(O,)`` statistics."""
    from torchrl.envs import ObservationNorm

    return ObservationNorm(loc=loc.clone(), scale=scale.clone(), in_keys=["observation"], standard_normal=True)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """``torch.load`` of an example's checkpoint with its tensors mapped to ``device`` (``map_location``), so a
    checkpoint written on CUDA resumes on the CPU and the other way round."""
    return torch.load(path, weights_only=False, map_location=torch.device(device))


def rng_state(device: torch.device | str = "cpu") -> dict:
    """The torch RNG states a checkpoint keeps: ``{"rng": CPU state, "cuda_rng": the CUDA device's state}`` (the
    latter only on CUDA); restore with :func:`restore_rng_state`."""
    device = torch.device(device)
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(checkpoint: dict, device: torch.device | str = "cpu") -> None:
    """Restores what :func:`rng_state` saved in ``checkpoint``: the CPU generator always, the CUDA one when running
    on CUDA and the checkpoint has it (a CPU checkpoint resumed on CUDA, or the reverse, keeps the CPU state only).
    The states may have been mapped to any device by :func:`load_checkpoint`: they go back to the CPU first."""
    device = torch.device(device)
    if "rng" in checkpoint:
        torch.set_rng_state(checkpoint["rng"].cpu())
    if device.type == "cuda" and checkpoint.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(checkpoint["cuda_rng"].cpu(), device)


def accumulate_metrics(sums: dict, metrics: dict) -> dict:
    """Adds one update's metrics (floats, or the detached tensors of ``update(..., sync=False)``) to ``sums`` in
    place, without a host sync; every sum is a new tensor, so an update's reused output buffers (a CUDA graph's
    static outputs) are never aliased. Returns ``sums``; :func:`mean_metrics` reads them once."""
    for key, value in metrics.items():
        sums[key] = sums.get(key, 0.0) + value
    return sums


def mean_metrics(sums: dict, count: int) -> dict[str, float]:
    """``{key: sums[key] / count}`` as floats (one host sync per key), for :func:`accumulate_metrics`' sums."""
    return {key: float(value) / count for key, value in sums.items()}


def discounted_returns_to_go(data: TensorDictBase, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo return ``Σ_k γ^k r_{t+k}`` to the end of each transition's episode, and whether it is exact.

    Args:
        data: transitions in episode order, shape ``(N,)``, with ``("next", "reward")``, ``("next", "done")`` and
            ``("next", "terminated")``. Episodes end at ``done`` (and at the last row).
        gamma: discount in ``[0, 1]``.

    Returns:
        ``returns (N,)`` float32 and ``exact (N,)`` bool: exact where the episode ended by termination or ends at
        least 300 steps later (γ^300 < 0.05 at γ = 0.99); near a time-limit cut the MC return misses the bootstrap
        tail, so those rows are flagged ``False``.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    reward = data["next", "reward"].reshape(-1).double().cpu().numpy()  # one copy of the data's columns, any device
    done = data["next", "done"].reshape(-1).cpu().numpy()
    terminated = data["next", "terminated"].reshape(-1).cpu().numpy()
    returns, exact = np.empty_like(reward), np.empty(reward.shape, dtype=bool)
    running, steps_left, ends_terminated = 0.0, 0, True
    for t in range(len(reward) - 1, -1, -1):
        if done[t] or t == len(reward) - 1:
            running, steps_left, ends_terminated = 0.0, 0, bool(terminated[t])
        running = reward[t] + gamma * running
        steps_left += 1
        returns[t], exact[t] = running, ends_terminated or steps_left >= 300
    device = data["next", "reward"].device
    return (torch.as_tensor(returns, dtype=torch.float32, device=device),
            torch.as_tensor(exact, device=device))


def make_q_probe(data: TensorDictBase, gamma: float = 0.99, size: int = 2000, seed: int = 0) -> TensorDict:
    """A fixed sample of dataset ``(s, a)`` pairs with an exact Monte Carlo return, to watch the critic against.

    Returns a TensorDict of shape ``(size,)`` (fewer if the data has fewer exact rows) with ``"observation"``,
    ``"action"`` and ``"mc_return"``. The same ``seed`` gives the same probe, so runs compare row by row.
    """
    mc_return, exact = discounted_returns_to_go(data, gamma)
    candidates = torch.nonzero(exact.cpu()).reshape(-1)
    if candidates.numel() == 0:
        raise ValueError("no transition of the data has an exact Monte Carlo return (episodes too short?)")
    rows = candidates[torch.randperm(candidates.numel(), generator=torch.Generator().manual_seed(seed))[:size]]
    rows = rows.to(data.device) if data.device is not None else rows  # the same rows on every device
    return TensorDict({"observation": data["observation"][rows], "action": data["action"][rows],
                       "mc_return": mc_return[rows]}, batch_size=rows.shape)


def critic_values(loss_module, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Q of each critic of a TorchRL loss module with vmapped critics (``SACLoss``, ``AWACLoss``), ``(J, B)``.

    Args:
        loss_module: has ``qvalue_network``, ``qvalue_network_params`` (stacked, leading dim ``J``) and
            ``num_qvalue_nets``.
        observation: ``(B, O)``; action: ``(B, A)``.
    """
    td = TensorDict({"observation": observation, "action": action}, batch_size=observation.shape[:1])
    values = []
    with torch.no_grad():
        for i in range(loss_module.num_qvalue_nets):
            with loss_module.qvalue_network_params[i].to_module(loss_module.qvalue_network):
                values.append(loss_module.qvalue_network(td.clone())["state_action_value"].reshape(-1))
    return torch.stack(values)


def evaluate_policy(env, policy, episodes: int, max_steps: int = 1_000) -> list[float]:
    """Undiscounted returns of ``episodes`` deterministic episodes of ``policy`` in a TorchRL ``env``."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        return [env.rollout(max_steps, policy).get(("next", "reward")).sum().item() for _ in range(episodes)]


@contextlib.contextmanager
def file_lock(path: Path):
    """Exclusive lock on ``path`` (processes that share a cached ensemble fit it once)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fit_or_load_ensemble(folder: str | Path, dataset_id: str, data: TensorDictBase, *, seed: int,
                         max_epochs: int | None, progress: bool = True,
                         device: torch.device | str | None = None) -> tuple[DynamicsEnsemble, dict]:
    """Loads the ensemble fitted on ``data`` with ``seed`` from ``folder``, fitting and saving it first if absent.

    ``device``: where the ensemble is fitted and where the cached file is loaded to (``map_location``: a fit saved
    on CUDA loads on the CPU and the other way round); ``None``: ``data``'s device (the CPU for a CPU dataset). Pass
    ``data`` on that device (moved once) so the fit's minibatches never cross PCIe.

    The file is ``ensemble_<dataset id, / as _>_n<len(data)>_seed<seed>.pt`` (with the fit's report as ``.json``,
    which records ``max_epochs``), so MOPO, MB2PO and COMBO runs on the same data and ensemble seed share one fit; a
    file lock makes processes started side by side wait for the first one's fit instead of fitting twice.

    A cached fit is only reused when ``max_epochs`` could not have changed it: same cap, or a fit that early stopping
    ended before both caps. (The cap matters: walker2d-medium-replay's held-out MSE is 0.59 after 50 epochs and
    0.32 when early stopping ends the fit, at 289.)

    Returns:
        The ensemble and the fit report (``holdout_mse`` per epoch, ``elites``, ``max_epochs``, ...; ``{}`` if none
        was saved).

    Raises:
        ValueError: the cached fit was made with another ``max_epochs`` that would have given another ensemble.
    """
    device = torch.device(device) if device is not None else (data.device or torch.device("cpu"))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ensemble_{dataset_id.replace('/', '_')}_n{data.shape[0]}_seed{seed}.pt"
    report = path.with_suffix(".json")
    with file_lock(path.with_suffix(".lock")):
        if not path.exists():
            ensemble = DynamicsEnsemble(data["observation"].shape[-1], data["action"].shape[-1], seed=seed,
                                        device=device)
            fit = ensemble.fit(data.to(device), max_epochs=max_epochs, seed=seed, progress=progress)
            ensemble.save(path)
            report.write_text(json.dumps({**fit, "max_epochs": max_epochs}, indent=1))
    fit = json.loads(report.read_text()) if report.exists() else {}
    if "max_epochs" in fit and "epochs" in fit and fit["max_epochs"] != max_epochs:  # older reports: not recorded
        if fit["epochs"] >= min(c for c in (fit["max_epochs"], max_epochs) if c is not None):  # not both None
            raise ValueError(
                f"the cached ensemble {path} was fitted with max_epochs={fit['max_epochs']} (it trained "
                f"{fit['epochs']} epochs); max_epochs={max_epochs} was asked for, which would give another "
                f"ensemble. Pass max_epochs={fit['max_epochs']} (--ensemble-max-epochs) to use it, or another "
                f"folder (--ensemble-dir) to fit anew.")
    return DynamicsEnsemble.load(path, map_location=device), fit


def reference_scores(dataset_id: str, results_dir: str | Path | None = None) -> dict[str, float]:
    """What a learner's normalised score is judged against: the dataset's own and behaviour cloning's.

    Returns:
        ``{"data": ..., "BC": ...}`` on the D4RL scale (0 random, 100 expert), each only where it exists:
        ``"data"`` is the dataset card's mean episode return (:func:`cmbrl.datasets.dataset_card`, complete
        episodes) normalised with :func:`minari.get_normalized_score` (absent when the dataset has no reference
        scores or is not local); ``"BC"`` is the mean over seeds of the finished ``bc`` rows of that dataset in the
        saved learning benchmarks (``<results_dir>/*/results.csv``, default :data:`RESULTS_DIR`; absent when none
        ran BC on it, or outside a source checkout).
    """
    import csv

    import minari

    references: dict[str, float] = {}
    try:
        from cmbrl.datasets import dataset_card

        card = dataset_card(dataset_id)
        score = minari.get_normalized_score(minari.load_dataset(dataset_id), np.asarray([card["return_mean"]]))
        references["data"] = 100 * float(np.asarray(score).reshape(-1)[0])
    except (FileNotFoundError, KeyError, ValueError, TypeError, AttributeError, ImportError):
        pass  # no card, no reference scores: no data line
    bc: dict[tuple[str, str], float] = {}  # (seed, score): the same cell restored into several folders counts once
    for path in sorted(Path(RESULTS_DIR if results_dir is None else results_dir).glob("*/results.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if (row.get("algo") == "bc" and row.get("dataset") == dataset_id and row.get("status") == "done"
                        and row.get("normalized_score")):
                    bc[(row.get("seed", ""), row["normalized_score"])] = float(row["normalized_score"])
    if bc:
        references["BC"] = float(np.mean(list(bc.values())))
    return references


def reference_lines(references: dict[str, float]) -> dict[str, float]:
    """:func:`reference_scores` as :func:`plot_learning_curve`'s labelled lines: ``{"data average 8.3": 8.3,
    "BC 10.0": 10.0}``."""
    names = {"data": "data average"}
    return {f"{names.get(key, key)} {value:.1f}": value for key, value in references.items()}


def final_score_line(score: float, references: dict[str, float]) -> str:
    """The last line an example prints: ``final score 22.8 (data 8.3, BC 10.0)``; a reference that does not exist
    is left out (``final score 22.8``, ``final score 22.8 (data 8.3)``)."""
    shown = ", ".join(f"{key} {value:.1f}" for key, value in references.items())
    return f"final score {score:.1f}" + (f" ({shown})" if shown else "")


def plot_learning_curve(path: str | Path, history: Sequence[dict], title: str,
                        references: dict[str, float] | None = None) -> None:
    """Saves a two-panel PNG: normalised score, and Q on data against the data's MC return, over gradient steps.

    Args:
        history: evaluations, each with ``"step"`` and ``"normalized_score"`` (and optionally ``"q_data"`` and
            ``"mc_return"`` for the second panel).
        references: horizontal dashed lines on the score panel, e.g. ``{"AWAC (start)": 40.1}``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(steps, [h["normalized_score"] for h in history], marker="o")
    for label, value in (references or {}).items():
        axes[0].axhline(value, linestyle="--", color="grey")
        axes[0].annotate(label, (steps[0] if steps else 0, value), fontsize=8, va="bottom")
    axes[0].set(xlabel="gradient steps", ylabel="normalised score (D4RL reference returns)")
    if history and "q_data" in history[0]:
        axes[1].plot(steps, [h["q_data"] for h in history], marker="o", label="Q on data (min of critics)")
        axes[1].plot(steps, [h["mc_return"] for h in history], linestyle="--", label="data's MC return")
        axes[1].legend()
    axes[1].set(xlabel="gradient steps", ylabel="discounted return")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rollout_stats(rollout: TensorDictBase, penalty_coef: float) -> dict[str, float]:
    """Mean statistics of a batch of model rollouts, as the examples log them (one number each).

    Args:
        rollout: a :class:`~cmbrl.envs.ConservativeModelEnv` rollout of any batch shape, with ``action`` and
            ``("next", key)`` for ``reward`` (``r − λu``), ``model_reward`` (``r``), ``uncertainty`` (``u``) and
            ``terminated``.
        penalty_coef: ``λ``, the penalty's coefficient (MOPO eq. 6), to report ``λ·u`` in reward units.

    Returns:
        ``model_reward``, ``model_uncertainty``, ``model_penalty`` (``λ·u``), ``model_penalised_reward``,
        ``model_terminated`` (share of transitions that terminate) and ``model_saturated_actions`` (share of action
        entries with ``|a| > 0.99``).

    Raises:
        KeyError: naming the missing keys when the rollout lacks one.
    """
    needed = [("next", "reward"), ("next", "model_reward"), ("next", "uncertainty"), ("next", "terminated"), "action"]
    missing = [key for key in needed if key not in rollout.keys(include_nested=True)]
    if missing:
        raise KeyError(f"rollout_stats needs the keys {needed} of a ConservativeModelEnv rollout; missing {missing}")
    uncertainty = rollout["next", "uncertainty"].mean().item()
    return {"model_reward": rollout["next", "model_reward"].mean().item(),
            "model_uncertainty": uncertainty,
            "model_penalty": penalty_coef * uncertainty,
            "model_penalised_reward": rollout["next", "reward"].mean().item(),
            "model_terminated": rollout["next", "terminated"].float().mean().item(),
            "model_saturated_actions": (rollout["action"].abs() > 0.99).float().mean().item()}


def negative_reward_warning(model_stats: dict, terminates: bool) -> str | None:
    """A warning when the penalised model reward is negative on average in a model MDP that can terminate.

    With ``r − λ·u < 0`` per step, every step costs return and ending the episode stops the cost, so the optimal
    policy of the penalised MDP falls as early as it can (MOPO's penalty then teaches falling, not caution; seen on
    ``cmbrl/walker2d/medium-replay-v0`` at OfflineRL-Kit's λ 2.5: r 1.8, λ·u 7.3, a policy that falls at once).
    Tasks that never terminate (HalfCheetah) only shift the values and get no warning.

    Args:
        model_stats: the rollout statistics of :func:`train_in_model` (``model_reward``, ``model_penalty``,
            ``model_penalised_reward``; reward units per step).
        terminates: whether the model MDP has a termination function.

    Returns:
        The warning text, or ``None`` when the mean penalised reward is ``>= 0`` or nothing terminates.
    """
    penalised = model_stats.get("model_penalised_reward")
    if not terminates or penalised is None or penalised >= 0:
        return None
    return (f"the mean penalised model reward r - λu is {penalised:.3g} < 0 per step (model reward "
            f"{model_stats.get('model_reward', float('nan')):.3g}, penalty λu "
            f"{model_stats.get('model_penalty', float('nan')):.3g}): in a model MDP that can terminate, ending the "
            f"episode early then maximises return, so the policy will learn to fall. Lower --penalty-coef, or fit "
            f"a better ensemble (more data or epochs), until r - λu > 0 on the rollouts.")


def train_in_model(args, *, name: str, agent, env, eval_env, data: TensorDictBase, fit: dict, resumable: set[str],
                   keys: Sequence, metric_keys: Sequence[str], title: str, penalty_coef: float = 0.0,
                   mark_real: bool = False, device: torch.device | str | None = None) -> dict:
    """The model-based examples' loop (MOPO's Algorithm 2, COMBO's Algorithm 1): rollouts, updates, evaluations.

    Every ``rollout_every`` gradient steps, ``env.rollout(horizon, agent.policy)`` (``rollout_batch_size`` model
    rollouts from dataset states) goes into a model buffer that keeps the last ``retain_rollouts`` of them; each
    ``agent.update`` gets a batch of ``batch_size`` transitions, ``real_ratio`` of them from the dataset
    (``OfflineToOnlineReplayBuffer``, an exact split per batch); the actor's learning rate follows a cosine over the
    ``num_steps // rollout_every`` epochs (``actor_lr_schedule="cosine"``, OfflineRL-Kit) or stays constant. Every
    ``eval_every`` steps and at the end: ``eval_episodes`` deterministic episodes in ``eval_env`` (mean, min and max
    return: a bimodal policy, e.g. a HalfCheetah that sometimes flips over, shows as a wide spread), the critics on a
    fixed probe of dataset pairs against their Monte Carlo return, the last rollout's model statistics and the last
    update's ``metric_keys``, logged (TorchRL logger ``args.logger``) and checkpointed. A checkpoint in ``args.out``
    is resumed (only the settings in ``resumable`` may differ; the model buffer is refilled by a fresh rollout).

    Args:
        args: the example's dataclass with ``dataset``, ``seed``, ``out``, ``num_steps``, ``rollout_every``,
            ``horizon``, ``rollout_batch_size``, ``retain_rollouts``, ``real_ratio``, ``batch_size``,
            ``actor_lr_schedule`` (``"cosine"`` or ``"constant"``), ``eval_every``, ``eval_episodes``, ``logger``
            and ``progress``; its type's defaults stand for settings a checkpoint predates.
        name: the algorithm's name (progress bar; the logger's experiment is ``<name lower>_seed<seed>``).
        agent: has ``policy``, ``actor_optim``, ``loss_module`` (for :func:`critic_values`), ``state_dict``,
            ``load_state_dict`` and ``update(batch) -> dict of floats``.
        env: the model MDP (``ConservativeModelEnv``): its rollouts carry ``("next", "model_reward")`` and
            ``("next", "uncertainty")``.
        eval_env: the real environment (TorchRL).
        data: the dataset transitions ``(N,)``.
        fit: the ensemble fit's report, stored in ``result.json``.
        resumable: settings that may change when resuming.
        keys: the transition keys stored in the buffers.
        metric_keys: the update metrics written at each evaluation.
        title: the learning curve's title.
        penalty_coef: λ, for the ``model_penalty`` statistic (``λ · mean u``; 0 for an unpenalised model MDP).
        mark_real: store the boolean ``"is_real" (·, 1)`` with every transition (``True`` for dataset rows,
            ``False`` for model rows), so that each batch says which of its rows are real (COMBO's push-up term).
        device: where the buffers live (``None``: ``agent.device``, else the CPU): both replay storages are
            ``LazyTensorStorage(..., device=device)``, so sampled batches never cross PCIe; ``data`` and the model
            env's rollouts should be there already. Updates run with ``agent.update(batch, sync=False)`` (no host
            sync per step; the metrics are read at evaluations); the checkpoint is loaded with ``map_location``
            ``device`` and keeps the CPU and (on CUDA) the CUDA RNG states.

    Returns:
        The result written to ``<out>/result.json``: ``normalized_score`` (the last evaluation), ``history``,
        ``args``, ``wall_time_s``, ``ensemble_fit`` and where it ran (:func:`device_record`: ``device``,
        ``torch``, ``cuda``, ``gpu``). Also writes ``history_seed<S>.json``,
        ``learning_curve_seed<S>.png`` (with the dataset's average and BC's score as reference lines,
        :func:`reference_scores`) and ``checkpoint_seed<S>.pt``, and prints ``final score S (data D, BC B)`` last.

    Raises:
        SystemExit: when the checkpoint was made with other settings (outside ``resumable``), or for an unknown
            ``actor_lr_schedule``.
    """
    import dataclasses
    import time
    import warnings

    import minari
    import tqdm
    from torchrl.data import LazyTensorStorage, OfflineToOnlineReplayBuffer, ReplayBuffer
    from torchrl.record.loggers import get_logger

    if args.actor_lr_schedule not in ("cosine", "constant"):
        raise SystemExit(f"--actor-lr-schedule must be cosine or constant, got {args.actor_lr_schedule!r}")
    out = Path(args.out)
    device = torch.device(device if device is not None else getattr(agent, "device", "cpu"))
    epochs = max(1, args.num_steps // args.rollout_every)
    actor_schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(agent.actor_optim, T_max=epochs)
                      if args.actor_lr_schedule == "cosine" else None)

    # Q-value probe: fixed dataset (s, a) pairs with an exact Monte Carlo return
    probe = make_q_probe(data, gamma=0.99)
    probe_obs, probe_act, probe_mc = probe["observation"], probe["action"], probe["mc_return"]

    def stored(transitions: TensorDictBase, real: bool) -> TensorDictBase:
        transitions = transitions.select(*keys)
        if mark_real:
            transitions.set("is_real", torch.full((*transitions.shape, 1), real, dtype=torch.bool,
                                                  device=transitions.device))
        return transitions

    real = ReplayBuffer(storage=LazyTensorStorage(data.shape[0], device=device))
    real.extend(stored(data, True))
    buffer = OfflineToOnlineReplayBuffer(
        real, online_storage=LazyTensorStorage(args.rollout_batch_size * args.horizon * args.retain_rollouts,
                                               device=device),
        offline_fraction=args.real_ratio, batch_size=args.batch_size)

    step, history, wall = 0, [], 0.0
    ckpt_path = out / f"checkpoint_seed{args.seed}.pt"
    if ckpt_path.exists():  # resume; the model buffer is refilled by a fresh rollout
        ckpt = load_checkpoint(ckpt_path, device)  # a checkpoint written on CUDA resumes on the CPU
        saved = ckpt["args"]
        defaults = dataclasses.asdict(type(args)())  # a setting added since the checkpoint was made had its default
        changed = {k: (saved.get(k, defaults[k]), v) for k, v in dataclasses.asdict(args).items()
                   if k not in resumable and saved.get(k, defaults[k]) != v}
        if changed:
            raise SystemExit(f"{ckpt_path} was made with other settings {changed} (saved, now); use another --out")
        agent.load_state_dict(ckpt["agent"])
        if actor_schedule is not None and "actor_schedule" in ckpt:
            actor_schedule.load_state_dict(ckpt["actor_schedule"])
        step, history, wall = ckpt["step"], ckpt["history"], ckpt.get("wall_time_s", 0.0)
        restore_rng_state(ckpt, device)
        env.set_seed(args.seed + step)
    logger = get_logger(args.logger, logger_name=str(out / "logs"), experiment_name=f"{name.lower()}_seed{args.seed}")
    dataset_meta = minari.load_dataset(args.dataset)
    bar = tqdm.tqdm(total=args.num_steps, initial=step, desc=name, disable=not args.progress, mininterval=5)
    first_step, started, model_stats = step, time.time() - wall, {}
    while step < args.num_steps:
        if step % args.rollout_every == 0 or step == first_step:  # (re)fill the model buffer
            with torch.no_grad():  # rollouts carry no graph into the buffer
                rollout = env.rollout(args.horizon, agent.policy, break_when_any_done=False)
            buffer.extend(stored(rollout.reshape(-1), False))
            model_stats = rollout_stats(rollout, penalty_coef)
            for key, value in model_stats.items():
                logger.log_scalar(key, value, step=step)
            if step == first_step and (warning := negative_reward_warning(
                    model_stats, getattr(env, "termination_fn", None) is not None)) is not None:
                warnings.warn(warning, stacklevel=2)
        metrics = agent.update(buffer.sample(), sync=False)  # detached tensors: no host sync between evaluations
        step += 1
        bar.update()
        if actor_schedule is not None and step % args.rollout_every == 0:
            actor_schedule.step()
        if step % args.eval_every == 0 or step == args.num_steps:
            returns = evaluate_policy(eval_env, agent.policy, args.eval_episodes)
            score = 100 * float(minari.get_normalized_score(dataset_meta, np.asarray(returns)).mean())
            q = critic_values(agent.loss_module, probe_obs, probe_act).min(0).values
            point = {"step": step, "return": float(np.mean(returns)), "return_min": float(np.min(returns)),
                     "return_max": float(np.max(returns)), "normalized_score": score, "q_data": q.mean().item(),
                     "mc_return": probe_mc.mean().item(),
                     "q_minus_mc": (q - probe_mc).mean().item(), **model_stats,
                     **{key: float(metrics[key]) for key in metric_keys}, "num_nonfinite": env.num_nonfinite}
            history.append(point)
            for key, value in point.items():  # model_* were logged at their rollout's own step
                if key not in model_stats:
                    logger.log_scalar(key, value, step=step)
            bar.set_postfix(score=f"{score:.1f}", q=f"{point['q_data']:.0f}", mc=f"{point['mc_return']:.0f}")
            if not args.progress:
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in point.items()}), flush=True)
            save_atomic({"agent": agent.state_dict(), "step": step, "history": history,
                         "actor_schedule": None if actor_schedule is None else actor_schedule.state_dict(),
                         **rng_state(device), "args": dataclasses.asdict(args),
                         "wall_time_s": time.time() - started}, ckpt_path)
    bar.close()
    result = {"normalized_score": history[-1]["normalized_score"], "history": history,
              "args": dataclasses.asdict(args), "wall_time_s": time.time() - started, "ensemble_fit": fit,
              **device_record(device)}
    (out / f"history_seed{args.seed}.json").write_text(json.dumps(history, indent=1))
    references = reference_scores(args.dataset)  # the dataset's average and BC's score, where they exist
    plot_learning_curve(out / f"learning_curve_seed{args.seed}.png", history, title, reference_lines(references))
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: history[-1][k] for k in ("step", "return", "normalized_score")}))
    print(final_score_line(history[-1]["normalized_score"], references), flush=True)
    return result
