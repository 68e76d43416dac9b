"""Ray backend of ``benchmarks/learning.py`` (``--backend ray``): every cell is a Ray Tune trial.

Imported only when ``--backend ray`` is chosen (cmbrl itself never imports ray); needs ``pip install "cmbrl[ray]"``.

A trial runs its cell with :func:`_cells.run_cell`, the function the local backend runs: the same command,
environment, working directory and ``log.txt``, so a cell's numbers do not depend on the backend. While the script
runs, the trial reports every evaluation it has written (:func:`read_evaluations`) with ``tune.report`` as
``{"step": gradient steps, "normalized_score": D4RL-normalised score}``, one report per evaluation, so a Tune
scheduler (``--scheduler asha``: :class:`ray.tune.schedulers.ASHAScheduler` on ``normalized_score`` after
``--asha-grace-period`` evaluations) can stop a lagging cell; a stopped cell's script is killed with its trial. The
last report of a trial also carries ``cell_ok``, ``returncode``, ``wall_time_s``, ``error`` and ``node_id`` (the
Ray node that ran it).

Resuming. Finished cells (their ``result.json``) are never handed to Tune. The Tune experiment of a run lives in
``<out>/_tune/<name>`` (``RunConfig.storage_path``); the next invocation whose unfinished cells are that
experiment's unfinished cells continues it with ``Tuner.restore`` (interrupted trials start again and their scripts
resume from their own checkpoints; trials that failed are restarted; cells ASHA stopped stay stopped). ``--rerun``
starts a new experiment.

Cluster. Without ``--address`` a local cluster of ``--num-cpus`` CPUs is started for the run and shut down after
it; ``--address auto`` joins the cluster that ``ray start`` runs on this machine, ``ray://HOST:10001`` a remote one.
Every node needs this repository and the venv at the same paths, and ``--out`` (Tune's ``storage_path``) and the
Minari datasets on a filesystem all nodes share. The trials import this module and ``_cells`` through
``PYTHONPATH`` (set in the job's ``runtime_env``).
"""
from __future__ import annotations

import ctypes
import json
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

import _cells  # the cell contract learning.py's local backend runs too (this module never imports learning)

BENCHMARKS = Path(__file__).resolve().parent
POLL_S = 1.0
"""Seconds between two looks for new evaluations of a running cell."""
ASHA_MAX_T = 1_000_000
"""ASHA's ``max_t`` in evaluations: high enough never to cut a cell short (its rungs: grace period × 4^k)."""
SCHEDULERS = ("fifo", "asha")


def read_evaluations(out: Path) -> dict[int, float]:
    """``gradient step -> normalised score`` of every evaluation a cell's script has written so far.

    Sources, later ones winning for the same step: the TorchRL CSV logger's ``<out>/logs/*/scalars/
    normalized_score.csv`` (``step,value`` lines, flushed at every evaluation by the examples), then the JSON lines
    of ``<out>/log.txt`` holding ``"step"`` and ``"normalized_score"`` (what the examples print with
    ``--progress 0``). Unreadable lines are skipped. Returns an empty dict before the first evaluation.
    """
    out = Path(out)
    evaluations: dict[int, float] = {}
    for path in sorted(out.glob("logs/*/scalars/normalized_score.csv")):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            step, _, value = line.partition(",")
            try:
                evaluations[int(float(step))] = float(value)
            except ValueError:
                continue
    try:
        log = (out / "log.txt").read_text(errors="replace")
    except OSError:
        log = ""
    for line in log.splitlines():
        line = line.rsplit("\r", 1)[-1].strip()
        if not (line.startswith("{") and '"normalized_score"' in line):
            continue
        try:
            point = json.loads(line)
            evaluations[int(point["step"])] = float(point["normalized_score"])
        except (ValueError, KeyError, TypeError):
            continue
    return evaluations


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the trial's worker dies (killed by Tune or with the cluster)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def cell_spec(cell) -> dict:
    """A cell as the plain dict a trial's config holds (JSON-serialisable, picklable without this module)."""
    return {"algo": cell.algo, "dataset": cell.dataset, "seed": cell.seed, "out": str(cell.out),
            "command": list(cell.command), "cwd": str(cell.cwd)}


def trial(config: dict) -> None:
    """The Tune trainable: runs ``config["cell"]`` (a :func:`cell_spec`) and reports its evaluations.

    Raises:
        RuntimeError: the cell failed (the trial ends in ERROR, so a restored experiment runs it again).
    """
    spec = config["cell"]
    cell = _cells.Cell(spec["algo"], spec["dataset"], int(spec["seed"]), Path(spec["out"]), tuple(spec["command"]),
                         Path(spec["cwd"]))
    reported: set[int] = set()

    def report_new(evaluations: dict[int, float]) -> None:
        for step in sorted(set(evaluations) - reported):
            tune.report({"step": step, "normalized_score": evaluations[step]})
            reported.add(step)

    outcome = _cells.run_cell(cell, poll=lambda: report_new(read_evaluations(cell.out)), poll_every=POLL_S,
                                preexec_fn=_die_with_parent)
    evaluations = read_evaluations(cell.out)
    for point in (outcome["result"] or {}).get("history") or []:  # result.json is the record of a finished cell
        if isinstance(point, dict) and "step" in point and "normalized_score" in point:
            evaluations[int(point["step"])] = float(point["normalized_score"])
    report_new(evaluations)
    last = max(evaluations) if evaluations else 0
    tune.report({"step": last, "normalized_score": evaluations.get(last, math.nan), "cell_ok": outcome["ok"],
                 "returncode": -1 if outcome["returncode"] is None else outcome["returncode"],
                 "wall_time_s": outcome["wall_time_s"], "error": outcome["error"],
                 "node_id": ray.get_runtime_context().get_node_id()})
    if not outcome["ok"]:
        raise RuntimeError(f"{cell.name}: {outcome['error']} (log {cell.log_path})")


def trial_name(trial) -> str:
    """Tune's name of a trial: the cell's ``algo dataset seed S``."""
    spec = trial.config["cell"]
    return f"{spec['algo']} {spec['dataset']} seed {spec['seed']}"


def trial_dirname(trial) -> str:
    """Tune's folder of a trial: ``<algo>_<dataset, / as _>_seed<S>_<trial id>``."""
    spec = trial.config["cell"]
    return f"{spec['algo']}_{_cells.dataset_dirname(spec['dataset'])}_seed{spec['seed']}_{trial.trial_id}"


def _unfinished(outs: Sequence[str]) -> set[str]:
    return {out for out in outs if _cells.read_result(Path(out) / "result.json") is None}


def _experiment_to_restore(storage: Path, todo: set[str]) -> Path | None:
    """The newest experiment in ``storage`` whose unfinished cells are exactly ``todo``; None if there is none."""
    for record in sorted(storage.glob("*.cells.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        path = storage / record.name[: -len(".cells.json")]
        try:
            outs = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if todo <= set(outs) and _unfinished(outs) <= todo and tune.Tuner.can_restore(str(path)):
            return path
    return None


def run_cells(cells: Sequence, out: Path, *, address: str | None = None, num_cpus: int | None = None,
              cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, scheduler: str = "fifo",
              grace_period: int = 1, fresh: bool = False) -> dict:
    """Runs ``cells`` (``_cells.Cell``) as Ray Tune trials; returns ``{cell: outcome}`` like ``learning.run_cells``.

    Args:
        cells: the cells to run (unfinished ones; a finished cell's trial only reports its result).
        out: the benchmark's ``--out``; the Tune experiments go to ``<out>/_tune``.
        address: the cluster to join (``"auto"``, ``"ray://HOST:10001"``); None starts a local cluster for this call
            and shuts it down at the end. An already initialised Ray (``ray.init`` in this process) is used as is; its
            ``runtime_env`` must then put ``benchmarks/`` on the workers' ``PYTHONPATH``.
        num_cpus: CPUs of the local cluster (None: all cores); only without ``address``.
        cpus_per_trial, gpus_per_trial: resources Tune reserves per cell (CPUs > 0, GPUs >= 0; a cell's script
            runs one torch thread; a reserved GPU shows as ``CUDA_VISIBLE_DEVICES`` in its environment, so a cell's
            ``--device auto`` / ``cuda`` finds it as ``cuda:0``). A GPU share below 1 is Ray's fractional GPU: 0.25
            packs four cells on one GPU (they share its memory and compute; Ray does not partition them); above 1
            it must be a whole number of GPUs.
        scheduler: ``"fifo"`` (every cell to its end) or ``"asha"`` (ASHA on ``normalized_score``, max mode,
            ``grace_period`` evaluations before a cell may be stopped). ASHA compares every trial of the run with
            each other, so all cells must be of one algorithm (its variants) and one dataset.
        grace_period: ASHA's grace period in evaluations (>= 1).
        fresh: start a new Tune experiment even if one could be restored (``--rerun``).

    Returns:
        ``{cell: {"ok", "returncode", "wall_time_s", "result", "error", "status"}}``; ``status`` is ``"done"``,
        ``"failed"``, ``"stopped"`` (ended early under ASHA) or ``"interrupted"`` (the Tune run was interrupted,
        e.g. by Ctrl-C, under FIFO); the next invocation restores an interrupted experiment.

    Raises:
        ValueError: an unknown ``scheduler``, resources out of range, ``num_cpus`` with ``address``, or ASHA over
            more than one algorithm or dataset (the message lists what was received and what is allowed).
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler {scheduler!r}: allowed {SCHEDULERS}")
    if not cpus_per_trial > 0 or not gpus_per_trial >= 0 or grace_period < 1:
        raise ValueError(f"cpus_per_trial must be > 0, gpus_per_trial >= 0 and grace_period >= 1; got "
                         f"{cpus_per_trial}, {gpus_per_trial} and {grace_period}")
    if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
        raise ValueError(f"gpus_per_trial above 1 must be a whole number of GPUs (Ray shares a GPU only below 1), got "
                         f"{gpus_per_trial}")
    if num_cpus is not None and address is not None:
        raise ValueError(f"num_cpus={num_cpus} sizes a local cluster; the cluster at {address!r} has its own")
    groups = sorted({(cell.algo.split("@")[0], cell.dataset) for cell in cells})
    if scheduler == "asha" and len(groups) > 1:
        raise ValueError(f"ASHA compares all trials of a run: give one algorithm (with --sweep variants) and one "
                         f"dataset; got {groups}")
    if not cells:
        return {}
    storage = (Path(out) / "_tune").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    specs = [cell_spec(cell) for cell in cells]
    trainable = tune.with_resources(trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})

    started = not ray.is_initialized()
    if started:
        pythonpath = str(BENCHMARKS)
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    try:
        restore = None if fresh else _experiment_to_restore(storage, {spec["out"] for spec in specs})
        if restore is not None:
            print(f"restoring the Tune experiment {restore} (Tuner.restore)", flush=True)
            tuner = tune.Tuner.restore(str(restore), trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=True)
        else:
            name = time.strftime("cells-%Y%m%d-%H%M%S")
            (storage / f"{name}.cells.json").write_text(json.dumps([spec["out"] for spec in specs], indent=1))
            asha = ASHAScheduler(time_attr="training_iteration", metric="normalized_score", mode="max",
                                 grace_period=grace_period, max_t=ASHA_MAX_T) if scheduler == "asha" else None
            tuner = tune.Tuner(
                trainable, param_space={"cell": tune.grid_search(specs)},
                tune_config=tune.TuneConfig(scheduler=asha, trial_name_creator=trial_name,
                                            trial_dirname_creator=trial_dirname, reuse_actors=False),
                run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1,
                                          failure_config=tune.FailureConfig(max_failures=0)))
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()

    by_out = {}
    for result in results:
        by_out[result.config["cell"]["out"]] = result
    outcomes = {}
    for cell in cells:
        result = by_out.get(str(cell.out))
        metrics = (result.metrics or {}) if result is not None else {}
        record = _cells.read_result(cell.result_path)
        if record is not None and not metrics.get("cell_ok", True):  # a stale result.json of a failing rerun
            record = None
        if record is not None:  # the cell's own record decides, as for the local backend
            outcome = {"ok": True, "returncode": metrics.get("returncode", 0),
                       "wall_time_s": metrics.get("wall_time_s", 0.0), "result": record, "error": "",
                       "status": "done"}
        elif "cell_ok" in metrics:
            outcome = {"ok": False, "returncode": metrics.get("returncode"),
                       "wall_time_s": metrics.get("wall_time_s", 0.0), "result": None,
                       "error": metrics.get("error") or "no valid result.json", "status": "failed"}
        elif result is not None and result.error is not None:
            outcome = {"ok": False, "returncode": None, "wall_time_s": 0.0, "result": record,
                       "error": repr(result.error), "status": "failed"}
        else:  # ended without its last report: stopped by ASHA, or the Tune run was interrupted (Ctrl-C)
            why = "stopped" if scheduler == "asha" else "interrupted"
            outcome = {"ok": False, "returncode": None, "wall_time_s": 0.0, "result": record,
                       "error": f"{why} before the end", "status": why}
        outcomes[cell] = outcome
        if outcome["ok"]:
            print(f"done  {cell.name}: normalised score {record['normalized_score']:.1f} "
                  f"({outcome['wall_time_s']:.0f} s, node {str(metrics.get('node_id'))[:8]})", flush=True)
        elif outcome["status"] in ("stopped", "interrupted"):
            print(f"{outcome['status']} {cell.name} after {len(read_evaluations(cell.out))} evaluation(s) -> {cell.out}",
                  flush=True)
        else:
            log_tail = "\n".join("    " + line for line in _cells.tail(cell.log_path).splitlines())
            print(f"FAILED {cell.name}: {outcome['error']}; log {cell.log_path}, last lines:\n{log_tail}",
                  flush=True)
    return outcomes
