"""Learning benchmark: algorithm x dataset x seed at a stated budget, one example script run per cell.

    python benchmarks/learning.py --algos mopo bc --datasets hopper-medium hopper-medium-replay --seeds 0 1 2 \\
        --jobs 2 --budget short --out runs/learning
    python benchmarks/learning.py --out runs/learning --table-only       # table, CSVs and plots from the files
    python benchmarks/learning.py --algos combo --seeds 0 1 2 --out runs/combo \
        --restore benchmarks/results/learning_short_combo                # run seed 2 only; seeds 0, 1 from the saved table
    python benchmarks/learning.py --algos mopo --datasets hopper-medium --set mopo:hopper-medium:penalty_coef=2.5

Cells. A cell (algo, dataset, seed) runs ``examples/<algo>.py`` in its own subprocess:

    python examples/<algo>.py --dataset <minari id> --seed <S> --threads 1 --out <cell> <budget and settings args>

with ``<cell> = <out>/<algo>/<dataset with / as _>/seed<S>``. Its stdout and stderr are appended to ``<cell>/log.txt``.
A cell is finished iff ``<cell>/result.json`` exists and parses, with (at least)

    {"normalized_score": float, "history": [{"step": int, "normalized_score": float, ...}, ...],
     "args": {...}, "wall_time_s": float}

(``normalized_score`` is the final evaluation, ``history`` the evaluations during training). Finished cells are never
run again (``--rerun`` deletes their folder and runs them from scratch); an unfinished cell is run again with the same
command, and the examples resume from their own checkpoint in the cell folder. A failing cell is reported with the
tail of its log, the other cells go on, and the exit code is 1. Any script in ``--examples-dir`` that follows this
contract is an algorithm here (``--algos awac`` runs ``examples/awac.py``).

Arguments of a cell, later ones overriding earlier ones:
  1. the budget preset (``--budget``): ``BUDGETS[budget][algo]``, or ``BUDGETS[budget]["*"]`` for other algorithms;
  2. the per-(algo, dataset) settings ``SETTINGS[algo]``: every dataset glob pattern matching the Minari id, in order
     (deviations from an example's own per-dataset defaults);
  3. ``--num-steps`` / ``--eval-every`` (every algorithm whose budget has that argument);
  4. ``--set ALGO:DATASET:KEY=VALUE`` or ``--set ALGO:KEY=VALUE`` (ALGO and DATASET may be globs such as ``*`` or
     ``cmbrl/hopper/*``, DATASET may be a short name; KEY in either spelling; VALUE ``true``/``false`` gives
     ``--key`` / ``--no-key``, ``none`` drops the argument). Repeatable.
``--dataset``, ``--seed``, ``--threads 1`` and ``--out`` are always set by the benchmark.

Devices. ``--device auto|cpu|cuda|cuda:N`` (default ``auto``) is every cell's ``--device`` (an example's
``--set ALGO:device=...`` still overrides it): ``auto``, the examples' own default, picks CUDA in a cell that sees a
GPU and is not written into the commands; any other value is. Each cell's ``result.json`` records the device it
ran on (``device``, ``torch``, ``gpu``), copied into ``results.csv``; ``config.json`` keeps ``--device``. With
``--backend ray``, ``--gpus-per-trial F`` reserves a share of a GPU per cell (Ray's fractional GPUs: 0.25 packs four
cells on one GPU; Ray sets each trial's ``CUDA_VISIBLE_DEVICES``); a CUDA ``--device`` needs ``--gpus-per-trial``
> 0 there.

Sweeps. ``--sweep ALGO:KEY=V1,V2,...`` (repeatable; ALGO may be a glob over ``--algos``) runs every combination of
the swept values as its own row, applied after ``--set``: ``--sweep mopo:penalty_coef=0.5,1 --sweep mopo:horizon=1,5``
gives the four variants ``mopo@penalty_coef=0.5,horizon=1`` ... (the keys in the order given), each a row of the
table and a folder ``<out>/<variant>/<dataset>/seed<S>``, so different hyperparameters never collide.

Backends. ``--backend local`` (default) runs the cells on ``--jobs`` threads; ``--backend ray`` runs each cell as a
Ray Tune trial (``benchmarks/_ray_backend.py``, needs ``pip install "cmbrl[ray]"``) on a local Ray cluster or the one
at ``--address``, reporting every evaluation so that ``--scheduler asha`` can stop bad trials early. Both run the
same command per cell, so the numbers are the same; the outputs are written by the same code.

Outputs in ``--out``: ``results.csv`` (one row per cell), ``curves.csv`` (every evaluation of every finished cell),
``table.md`` (mean ± std over seeds per dataset and algorithm, after the reference rows "data", the dataset's
average normalised return from its dataset card, and "bc"), ``curves_<dataset>.png`` (mean over seeds with a
min-max band against gradient steps; dashed lines for the data's average and BC's mean) and ``config.json`` (the
selection and budget of the last run, the defaults of a later ``--table-only``).

Across sessions. ``--restore DIR`` (repeatable) writes the finished cells of a saved copy of these outputs (its
``results.csv`` and ``curves.csv``, e.g. ``benchmarks/results/<name>``) into ``--out`` as ``result.json`` files where
the cell has none (:func:`restore_results`): those seeds then count as finished, so only the missing ones run, and
the table covers both. A restored cell has its score, evaluation curve and wall time, not its logs or checkpoints.

Datasets are loaded once in this process before any cell starts (generated or downloaded on first use), so that
cells of one dataset don't race to write it; ``--no-prepare`` skips that. Cells run through :func:`run_cell`
(a pure function of a :class:`Cell`) on a thread pool of ``--jobs`` workers, or inside Ray Tune trials.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import fnmatch
import json
import math
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
if str(BENCHMARKS) not in sys.path:  # imported as a module (the tests): find _cells as the script does
    sys.path.insert(0, str(BENCHMARKS))

from _cells import ROOT, Cell, cell_dir, dataset_dirname, read_result, run_cell, tail  # noqa: E402 - the cell contract

BACKENDS = ("local", "ray")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
"""What ``--device`` accepts (checked here without importing torch: a Ray driver may have no GPU its cells have)."""
REFERENCE_ALGOS = ("bc",)
"""Algorithms shown as reference rows and lines (not learning curves)."""
DEFAULT_ALGOS = ["bc", "mopo"]
DEFAULT_DATASETS = ["cmbrl/hopper/medium-v0"]
DEFAULT_SEEDS = [0, 1, 2]

BUDGETS: dict[str, dict[str, dict]] = {
    "smoke": {  # seconds to a minute or two per cell: checks the pipeline, not the algorithms
        "*": {"num_steps": 200, "eval_every": 100, "eval_episodes": 1},
        "bc": {"num_steps": 200, "eval_episodes": 1},
        "mopo": {"num_steps": 200, "eval_every": 100, "eval_episodes": 1, "max_transitions": 10_000,
                 "rollout_batch_size": 1_000, "ensemble_max_epochs": 5},
        "awac": {"num_steps": 200, "eval_every": 100, "eval_episodes": 1},
        "mb2po": {"iterations": 2, "updates_per_iteration": 100, "eval_every": 1, "eval_episodes": 1,
                  "awac_steps": 200, "max_transitions": 10_000, "rollout_batch_size": 1_000, "ensemble_max_epochs": 5},
        # finetune: num_steps counts online env steps (UTD 1), after offline_steps AWAC updates (5 critics)
        "finetune": {"num_steps": 200, "eval_every": 100, "eval_episodes": 1, "offline_steps": 200},
        "combo": {"num_steps": 200, "eval_every": 100, "eval_episodes": 1, "max_transitions": 10_000,
                  "rollout_batch_size": 1_000, "ensemble_max_epochs": 5},
    },
    "short": {  # ~15 min per MOPO cell on 2 busy CPU cores (examples/mopo.py's defaults)
        "*": {"num_steps": 30_000, "eval_every": 5_000, "eval_episodes": 5},
        "bc": {"num_steps": 10_000, "eval_episodes": 10},
        "mopo": {"num_steps": 30_000, "eval_every": 5_000, "eval_episodes": 5},
        "awac": {"num_steps": 30_000, "eval_every": 5_000, "eval_episodes": 5},
        # MB2PO: 30 iterations of 1000 updates (10k rollouts of h steps each) after the awac cell's 30k steps
        "mb2po": {"iterations": 30, "eval_every": 5, "eval_episodes": 5, "awac_steps": 30_000},
        # O3F-style fine-tuning: 30k offline updates, then 50k env steps at UTD 1 (~45 ms per step: ~40 min)
        "finetune": {"num_steps": 50_000, "eval_every": 5_000, "eval_episodes": 5, "offline_steps": 30_000},
        # COMBO: MOPO's budget in gradient steps; each costs ~6x a MOPO step (~125 ms: n = 10 actions x 3 sources
        # at the 128 model states through 3 x 256 critics; MOPO's SAC has 2 x 256; benchmarks/combo_step.py):
        # ~1.2 h per cell
        "combo": {"num_steps": 30_000, "eval_every": 5_000, "eval_episodes": 5},
    },
    "full": {  # the papers' budgets: 1M gradient steps, the whole dataset, 10 evaluation episodes
        "*": {"num_steps": 1_000_000, "eval_every": 10_000, "eval_episodes": 10},
        "bc": {"num_steps": 1_000_000, "eval_episodes": 10},  # CORL BC
        "mopo": {"num_steps": 1_000_000, "eval_every": 10_000, "eval_episodes": 10, "max_transitions": 0,
                 "rollout_batch_size": 50_000},  # MOPO: 1000 epochs of 1000 steps, 50k rollouts
        "awac": {"num_steps": 500_000, "eval_every": 10_000, "eval_episodes": 10},  # MB2PO's stage one
        # MB2PO: 500 iterations of 1000 updates, 1M model transitions per iteration (200k rollouts of h = 5)
        "mb2po": {"iterations": 500, "eval_every": 10, "eval_episodes": 10, "awac_steps": 500_000,
                  "max_transitions": 0, "rollout_batch_size": 200_000},
        # CORL's AWAC fine-tuning budget: 1M offline updates, then 1M online env steps (O3F states none)
        "finetune": {"num_steps": 1_000_000, "eval_every": 10_000, "eval_episodes": 10, "offline_steps": 1_000_000},
        # COMBO (OfflineRL-Kit run_combo.py): 1000 epochs of 1000 steps, 50k rollouts every epoch
        "combo": {"num_steps": 1_000_000, "eval_every": 10_000, "eval_episodes": 10, "max_transitions": 0,
                  "rollout_batch_size": 50_000},
    },
}
"""``budget -> algo -> example arguments`` (``"*"``: algorithms not listed)."""

SETTINGS: dict[str, dict[str, dict]] = {
    # examples/mopo.py derives the evaluation env, the termination function and the per-dataset horizon and
    # penalty coefficient from the dataset itself (its MOPO_HYPERPARAMETERS: OfflineRL-Kit's suggested values), so
    # a cell and a user's plain `python examples/mopo.py --dataset ...` run the same settings. Add entries here only
    # to deviate from an example's own defaults.
    "mopo": {},
}
"""``algo -> dataset glob -> example arguments``; every pattern matching the dataset's Minari id applies, in order."""

STAGE_ONE: dict[str, tuple[str, str]] = {"mb2po": ("awac", "awac_out")}
"""``algo -> (stage-one algo, argument)``: a two-stage algorithm's cell gets the folder of the stage-one cell of the
same dataset and seed as that argument, so MB2PO fine-tunes exactly the AWAC policy of the ``awac`` row (and trains
it there, under the stage-one script's lock, if that cell has not run yet)."""


def resolve_dataset(name: str) -> str:
    """A Minari id unchanged, a short name (``hopper-medium-replay``) as its cmbrl id."""
    if "/" in name:
        return name
    from cmbrl.components.datasets import resolve_dataset_id  # imports torch and minari: only when needed
    return resolve_dataset_id(name)


def restore_results(saved: Path, out: Path) -> list[Path]:
    """Writes ``result.json`` for every finished row of a saved benchmark folder (``results.csv`` and ``curves.csv``,
    e.g. ``benchmarks/results/<name>``) into the matching cell of ``out`` that has none, so that seeds run in an
    earlier session (whose cell folders are gone) join the table of new ones. The restored file has the final score,
    the evaluation history (step, normalised score), the wall time and ``"restored_from"``; existing cells are never
    overwritten. Returns the paths written. Raises FileNotFoundError when ``saved`` has no ``results.csv``."""
    saved, out = Path(saved), Path(out)
    if not (saved / "results.csv").exists():
        raise FileNotFoundError(f"--restore {saved}: no results.csv there (expected a folder written by this "
                                f"benchmark, such as benchmarks/results/learning_short_combo)")

    def key(row: dict) -> tuple[str, str, int]:
        return row["algo"], row["dataset"], int(row["seed"])

    histories: dict[tuple[str, str, int], list[dict]] = {}
    if (saved / "curves.csv").exists():
        with open(saved / "curves.csv", newline="") as f:
            for row in csv.DictReader(f):
                histories.setdefault(key(row), []).append(
                    {"step": int(row["step"]), "normalized_score": float(row["normalized_score"])})
    written = []
    with open(saved / "results.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] != "done" or not row["normalized_score"]:
                continue
            path = cell_dir(out, *key(row)) / "result.json"
            if read_result(path) is not None:
                continue
            score = float(row["normalized_score"])
            history = sorted(histories.get(key(row), []), key=lambda point: point["step"])
            if not history and row["final_step"]:
                history = [{"step": int(row["final_step"]), "normalized_score": score}]
            result = {"normalized_score": score, "history": history, "restored_from": str(saved)}
            if row["wall_time_s"]:
                result["wall_time_s"] = float(row["wall_time_s"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=1))
            written.append(path)
    return written


def parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_set(spec: str) -> tuple[str, str, str, object]:
    """``ALGO:DATASET:KEY=VALUE`` or ``ALGO:KEY=VALUE`` -> (algo glob, dataset glob, key, value)."""
    left, eq, value = spec.partition("=")
    parts = left.split(":")
    if not eq or len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"--set {spec!r}: expected ALGO:DATASET:KEY=VALUE or ALGO:KEY=VALUE")
    algo, dataset, key = (parts[0], "*", parts[1]) if len(parts) == 2 else parts
    if not any(c in dataset for c in "*?["):
        dataset = resolve_dataset(dataset)
    return algo, dataset, key.replace("-", "_"), parse_value(value)


def cell_args(algo: str, dataset_id: str, budget: str, *, num_steps: int | None = None,
              eval_every: int | None = None, sets: Sequence[tuple[str, str, str, object]] = ()) -> dict:
    """The example arguments of a cell other than dataset, seed, threads and out (see the module docstring)."""
    presets = BUDGETS[budget]
    args = dict(presets.get(algo, presets["*"]))
    for pattern, settings in SETTINGS.get(algo, {}).items():
        if fnmatch.fnmatchcase(dataset_id, pattern):
            args.update(settings)
    if num_steps is not None and "num_steps" in args:
        args["num_steps"] = num_steps
    if eval_every is not None and "eval_every" in args:
        args["eval_every"] = eval_every
    for algo_glob, dataset_glob, key, value in sets:
        if fnmatch.fnmatchcase(algo, algo_glob) and fnmatch.fnmatchcase(dataset_id, dataset_glob):
            args[key] = value
    return {key: value for key, value in args.items() if value is not None}


def to_argv(args: dict) -> list[str]:
    argv = []
    for key, value in args.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += [f"--{flag}", str(value)]
    return argv


def parse_sweep(spec: str) -> tuple[str, str, list[str]]:
    """``ALGO:KEY=V1,V2,...`` -> (algo glob, key with ``_``, the values as written).

    Raises:
        ValueError: ``spec`` is not of that form (no ``=``, no ``ALGO:``, an empty key or value).
    """
    left, eq, values = spec.partition("=")
    parts = left.split(":")
    texts = [value.strip() for value in values.split(",")]
    if not eq or len(parts) != 2 or not all(parts) or not all(texts):
        raise ValueError(f"--sweep {spec!r}: expected ALGO:KEY=V1,V2,... (e.g. mopo:penalty_coef=0.5,1,2.5,5)")
    return parts[0], parts[1].replace("-", "_"), texts


def expand_sweeps(algos: Sequence[str], sweeps: Sequence[tuple[str, str, list[str]]]) -> dict[str, tuple[str, dict]]:
    """``variant name -> (algo, swept arguments)``: every combination of the sweeps matching each algo, in order.

    An algo no sweep matches is its own single variant (``"mopo" -> ("mopo", {})``); a swept one has a variant per
    combination, named ``algo@key=value,key=value`` (keys in the order of the sweeps, values as written). Values are
    parsed as ``--set``'s, except that ``none`` stays the string ``"none"`` (``--sweep finetune:explorers=o3f,none``
    runs the ``none`` explorer; ``--set``'s ``none`` drops an argument, which in a sweep would silently rerun the
    default).

    Raises:
        ValueError: a sweep's ALGO matches none of ``algos`` (the message lists them).
    """
    import itertools

    for algo_glob, key, _ in sweeps:
        if not any(fnmatch.fnmatchcase(algo, algo_glob) for algo in algos):
            raise ValueError(f"--sweep {algo_glob}:{key}=...: {algo_glob!r} matches none of --algos {list(algos)}")
    variants: dict[str, tuple[str, dict]] = {}
    for algo in algos:
        axes = [(key, texts) for algo_glob, key, texts in sweeps if fnmatch.fnmatchcase(algo, algo_glob)]
        for combination in itertools.product(*[texts for _, texts in axes]):
            name = algo + ("@" + ",".join(f"{k}={v}" for (k, _), v in zip(axes, combination)) if axes else "")
            # a swept value is always passed on: "none" is the string (an explorer, a penalty), never a dropped flag
            variants[name] = (algo, {key: text if text.lower() == "none" else parse_value(text)
                                     for (key, _), text in zip(axes, combination)})
    return variants


def make_cell(algo: str, dataset_id: str, seed: int, root: Path, examples_dir: Path, args: dict,
              script: str | None = None) -> Cell:
    """The cell of ``examples_dir/<script or algo>.py``, its folder named by ``algo`` (a variant name of a sweep)."""
    script = script or algo
    out = cell_dir(root, algo, dataset_id, seed).resolve()
    if script in STAGE_ONE and STAGE_ONE[script][1] not in args:
        stage_algo, key = STAGE_ONE[script]
        args = {key: str(cell_dir(root, stage_algo, dataset_id, seed).resolve()), **args}
    command = (sys.executable, str((Path(examples_dir) / f"{script}.py").resolve()), "--dataset", dataset_id,
               "--seed", str(seed), "--threads", "1", "--out", str(out), *to_argv(args))
    return Cell(algo, dataset_id, seed, out, command)


def run_cells(cells: Sequence[Cell], jobs: int, runner: Callable[[Cell], dict] = run_cell) -> dict[Cell, dict]:
    """Runs ``cells`` on ``jobs`` threads (each waits on its subprocess); prints a line as each starts / ends."""
    import tqdm

    outcomes: dict[Cell, dict] = {}
    total = len(cells)
    bar = tqdm.tqdm(total=total, desc="cells", unit="cell", file=sys.stderr, dynamic_ncols=True,
                    disable=not sys.stderr.isatty())  # a bar in a log file is noise: the lines say it all

    def start_and_run(index_cell):
        index, cell = index_cell
        resumed = " (resuming)" if cell.log_path.exists() else ""
        tqdm.tqdm.write(f"[{index}/{total}] start {cell.name}{resumed} -> {cell.out}")
        return runner(cell)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(start_and_run, (i, cell)): (i, cell) for i, cell in enumerate(cells, 1)}
        for future in concurrent.futures.as_completed(futures):
            index, cell = futures[future]
            try:
                outcome = future.result()
            except Exception as error:  # noqa: BLE001 - a backend error is reported like a failing cell
                outcome = {"ok": False, "returncode": None, "wall_time_s": 0.0, "result": None, "error": repr(error)}
            outcomes[cell] = outcome
            if outcome["ok"]:
                tqdm.tqdm.write(f"[{index}/{total}] done  {cell.name}: normalised score "
                                f"{outcome['result']['normalized_score']:.1f} ({outcome['wall_time_s']:.0f} s)")
            else:
                log_tail = "\n".join("    " + line for line in tail(cell.log_path).splitlines())
                tqdm.tqdm.write(f"[{index}/{total}] FAILED {cell.name}: {outcome['error']} "
                                f"({outcome['wall_time_s']:.0f} s); log {cell.log_path}, last lines:\n{log_tail}")
            bar.update()
    bar.close()
    return outcomes


def data_reference(dataset_id: str) -> float | None:
    """The dataset's average normalised return (its card's ``normalized_score_mean``); None if not local/unknown."""
    from cmbrl.components.datasets import dataset_card

    try:
        return dataset_card(dataset_id).get("normalized_score_mean")
    except (FileNotFoundError, ValueError, KeyError):
        return None


def prepare_dataset(dataset_id: str) -> None:
    """Loads the dataset once (generating a cmbrl recipe or downloading on first use, writing the load cache)."""
    from cmbrl import load_dataset

    load_dataset(dataset_id, progress=True)


# ----------------------------------------------------------------------------------------------------------------
# results: CSVs, table, plots


def final_step(result: dict) -> int | None:
    history = result.get("history") or []
    steps = [h["step"] for h in history if isinstance(h, dict) and "step" in h]
    return max(steps) if steps else None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _fmt_steps(steps: list) -> str:
    steps = sorted({s for s in steps if s is not None})
    if not steps:
        return "—"
    return f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}–{steps[-1]:,}"


def _fmt_duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


def budget_text(algos: Sequence[str], budget: str, seeds: Sequence[int], overrides: dict) -> str:
    parts = []
    for algo in algos:
        args = cell_args(algo, "", budget, **overrides)  # "" matches no dataset pattern: the budget alone
        text = algo
        if isinstance(args.get("num_steps"), int):
            if "offline_steps" in args:  # finetune: offline AWAC updates, then online env steps at UTD 1
                if args.get("offline_checkpoint"):
                    text += f" from {args['offline_checkpoint']},"
                elif isinstance(args["offline_steps"], int):
                    text += f" {args['offline_steps']:,} offline gradient steps, then"
                text += f" {args['num_steps']:,} online env steps"
            else:
                text += f" {args['num_steps']:,} gradient steps"
        if isinstance(args.get("iterations"), int):  # mb2po: iterations of updates_per_iteration (default 1000)
            updates = args.get("updates_per_iteration", 1_000)
            text += f" {args['iterations']:,} iterations of {updates:,} gradient steps"
            if isinstance(args.get("awac_steps"), int):
                text += f" after {args['awac_steps']:,} AWAC steps"
        if isinstance(args.get("eval_every"), int):
            unit = " iterations" if "iterations" in args else ""
            text += f", evaluated every {args['eval_every']:,}{unit}"
        if "eval_episodes" in args:
            text += f", {args['eval_episodes']} evaluation episode{'s' * (args['eval_episodes'] != 1)}"
        parts.append(text)
    return (f"Budget `{budget}`, seeds {' '.join(map(str, seeds))}: " + "; ".join(parts)
            + ". Score: the final evaluation.")


def write_outputs(out: Path, algos: Sequence[str], datasets: Sequence[str], seeds: Sequence[int],
                  cells: dict[tuple[str, str, int], Cell], header: str, subtitle: str, settings_lines: Sequence[str],
                  reference: Callable[[str], float | None], status: dict[tuple[str, str, int], str]) -> str:
    """Reads every cell's result.json; writes results.csv, curves.csv, table.md and the plots. Returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    results = {key: read_result(cell.result_path) for key, cell in cells.items()}

    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algo", "dataset", "seed", "status", "normalized_score", "final_step", "wall_time_s",
                         "device"])
        for (algo, dataset, seed), result in results.items():
            if result is None:
                writer.writerow([algo, dataset, seed, status.get((algo, dataset, seed), "missing"), "", "", "", ""])
            else:
                writer.writerow([algo, dataset, seed, "done", result["normalized_score"], final_step(result) or "",
                                 result.get("wall_time_s", ""), result.get("device", "")])
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algo", "dataset", "seed", "step", "normalized_score"])
        for (algo, dataset, seed), result in results.items():
            for point in (result or {}).get("history") or []:
                if isinstance(point, dict) and "step" in point and "normalized_score" in point:
                    writer.writerow([algo, dataset, seed, point["step"], point["normalized_score"]])

    rows = ["| dataset | algorithm | normalised score (mean ± std) | seeds | per seed | gradient steps | "
            "wall time per seed |", "|---|---|---|---|---|---|---|"]
    ordered = [a for a in REFERENCE_ALGOS] + [a for a in algos if a not in REFERENCE_ALGOS]
    for dataset in datasets:
        average = reference(dataset)
        rows.append(f"| {dataset} | data (average) | "
                    f"{'n/a (no dataset card)' if average is None else f'{average:.1f}'} | | | | |")
        for algo in ordered:
            found = [(seed, results.get((algo, dataset, seed))) for seed in seeds]
            done = [(seed, r) for seed, r in found if r is not None]
            if not done:
                why = "not run" if algo in algos else "not run (not in --algos)"
                if any(status.get((algo, dataset, seed)) == "stopped" for seed in seeds):
                    why = "stopped early (scheduler)"
                rows.append(f"| {dataset} | {algo} | {why} | 0/{len(seeds)} | | | |")
                continue
            mean, std = mean_std([r["normalized_score"] for _, r in done])
            per_seed = " / ".join("—" if r is None else f"{r['normalized_score']:.1f}" for _, r in found)
            walls = [r["wall_time_s"] for _, r in done if isinstance(r.get("wall_time_s"), (int, float))]
            wall = _fmt_duration(sum(walls) / len(walls)) if walls else "—"
            rows.append(f"| {dataset} | {algo} | {mean:.1f} ± {std:.1f} | {len(done)}/{len(seeds)} | {per_seed} | "
                        f"{_fmt_steps([final_step(r) for _, r in done])} | {wall} |")
    table = "\n".join(rows)
    footer = ("Normalised score: D4RL scale (0 random, 100 expert), each seed's final evaluation; mean ± std "
              "(population std) over the finished seeds. data: the dataset's average normalised episode return "
              "(dataset card). bc: behaviour cloning on the same data.")
    text = f"{header}\n\n{table}\n\n{footer}\n"
    if settings_lines:
        text += "\nPer-dataset settings:\n" + "".join(f"- {line}\n" for line in settings_lines)
    (out / "table.md").write_text(text)

    for dataset in datasets:
        plot_dataset(out / f"curves_{dataset_dirname(dataset)}.png", dataset, ordered, seeds, results,
                     reference(dataset), subtitle)
    return text


def plot_dataset(path: Path, dataset: str, algos: Sequence[str], seeds: Sequence[int], results: dict,
                 average: float | None, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if average is not None:
        ax.axhline(average, color="gray", linestyle="--", label=f"data average ({average:.1f})")
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for algo in algos:
        done = [r for r in (results.get((algo, dataset, seed)) for seed in seeds) if r is not None]
        if not done:
            continue
        color = next(colors)
        if algo in REFERENCE_ALGOS:
            mean = mean_std([r["normalized_score"] for r in done])[0]
            ax.axhline(mean, color=color, linestyle="--", label=f"{algo} mean ({mean:.1f}, {len(done)} seeds)")
            continue
        by_step: dict[int, list[float]] = {}
        for result in done:
            for point in result.get("history") or []:
                if isinstance(point, dict) and "step" in point and "normalized_score" in point:
                    by_step.setdefault(int(point["step"]), []).append(float(point["normalized_score"]))
        if not by_step:
            continue
        steps = sorted(by_step)
        ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], marker="o", markersize=3, color=color,
                label=f"{algo} (mean of {len(done)} seeds, min–max)")
        ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps], color=color,
                        alpha=0.2, linewidth=0)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("normalised score (D4RL)")
    ax.set_title(f"{dataset}\n{subtitle}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# command line


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` as written, with each flag's type as its metavar and its default after its help (flags without a
    default say in their help what they default to): ``cmbrl.components.cli.HelpFormatter``, without torch here."""

    def _get_default_metavar_for_optional(self, action):
        return {int: "INT", float: "FLOAT"}.get(action.type, "STR")

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    epilog = "budgets (BUDGETS; '*': other algorithms):\n" + "\n".join(
        f"  {budget:6s} {algo}: {' '.join(to_argv(args))}" for budget, presets in BUDGETS.items()
        for algo, args in presets.items())
    parser = argparse.ArgumentParser(description=__doc__, epilog=epilog, formatter_class=HelpFormatter)
    parser.add_argument("--algos", nargs="+", help=f"example scripts in --examples-dir (default {DEFAULT_ALGOS}, "
                        "with --table-only: the last run's in --out)")
    parser.add_argument("--datasets", nargs="+", help="Minari ids or short names such as hopper-medium-replay "
                        f"(default {DEFAULT_DATASETS}; with --table-only: the last run's in --out)")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help=f"seeds of every cell (default {DEFAULT_SEEDS}; with --table-only: the last run's)")
    parser.add_argument("--budget", choices=list(BUDGETS), help="argument preset, see BUDGETS (default short, "
                        "with --table-only: the last run's)")
    parser.add_argument("--num-steps", type=int, help="gradient steps of every algorithm (overrides the budget)")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (overrides the budget)")
    parser.add_argument("--device", help="every cell's --device: auto (CUDA in a cell that sees a GPU, else the CPU), "
                        "cpu, cuda or cuda:N (default auto, with --table-only: the last run's)")
    parser.add_argument("--set", action="append", default=[], metavar="ALGO:[DATASET:]KEY=VALUE",
                        help="an example argument for matching cells (globs allowed), e.g. "
                             "mopo:cmbrl/hopper/medium-v0:penalty_coef=5 or '*:eval_episodes=3'; repeatable")
    parser.add_argument("--sweep", action="append", default=[], metavar="ALGO:KEY=V1,V2,...",
                        help="run every combination of these example arguments as its own row (variant "
                             "ALGO@KEY=V,...), e.g. mopo:penalty_coef=0.5,1,2.5,5; repeatable")
    parser.add_argument("--jobs", type=int, default=1, help="cells run side by side (each uses 1 thread; "
                        "local backend)")
    parser.add_argument("--out", default="runs/learning", help="root folder of the cells and the outputs")
    parser.add_argument("--examples-dir", default=str(ROOT / "examples"), help="where <algo>.py are")
    parser.add_argument("--rerun", action="store_true", help="delete the selected finished cells and run them again")
    parser.add_argument("--table-only", action="store_true", help="only recompute the table, CSVs and plots")
    parser.add_argument("--restore", action="append", default=[], metavar="DIR",
                        help="a saved benchmark folder (results.csv, curves.csv) whose finished cells are written "
                             "into --out where missing, so earlier seeds join this table; repeatable")
    parser.add_argument("--no-prepare", action="store_true", help="don't load the datasets here before the cells")
    parser.add_argument("--dry-run", action="store_true", help="print the commands of the cells to run and exit")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local: --jobs threads on this machine; ray: one Ray Tune trial per cell")
    ray = parser.add_argument_group("Ray backend (--backend ray; pip install 'cmbrl[ray]')")
    ray.add_argument("--address", help="the Ray cluster to join: auto (the one `ray start` runs here) or "
                     "ray://HOST:10001 (default: start a local cluster for this run)")
    ray.add_argument("--num-cpus", type=int, help="CPUs of the local cluster started without --address "
                     "(default: all cores)")
    ray.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved per cell")
    ray.add_argument("--gpus-per-trial", type=float, default=0.0,
                     help="GPUs reserved per cell; a fraction below 1 shares a GPU (0.25: four cells on one GPU, "
                          "Ray's fractional GPUs)")
    ray.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo",
                     help="fifo: run every cell to the end; asha: stop cells whose normalised score lags at the "
                          "same number of evaluations (one algorithm and one dataset per run)")
    ray.add_argument("--asha-grace-period", type=int, default=1, help="evaluations before ASHA may stop a cell")
    args = parser.parse_args(argv)
    if args.backend != "ray":
        given = [flag for flag, value, default in [("--address", args.address, None),
                                                   ("--num-cpus", args.num_cpus, None),
                                                   ("--cpus-per-trial", args.cpus_per_trial, 1.0),
                                                   ("--gpus-per-trial", args.gpus_per_trial, 0.0),
                                                   ("--scheduler", args.scheduler, "fifo")] if value != default]
        if given:
            parser.error(f"{', '.join(given)} only apply to --backend ray (got --backend {args.backend})")
    if args.device is not None and not DEVICE_PATTERN.fullmatch(args.device.strip().lower()):
        parser.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
    if (args.backend == "ray" and args.device and args.device.strip().lower().startswith("cuda")
            and not args.gpus_per_trial > 0):
        parser.error(f"--device {args.device} with --backend ray needs a GPU share per cell: --gpus-per-trial > 0 "
                     f"(e.g. 0.25 packs four cells on one GPU); got {args.gpus_per_trial}")
    return args


def main(argv: Sequence[str] | None = None, *, reference: Callable[[str], float | None] | None = None,
         runner: Callable[[Cell], dict] = run_cell) -> int:
    """Runs the benchmark; returns the exit code (1 if a cell failed). ``reference(dataset_id)`` gives the data's
    average normalised return (default :func:`data_reference`); ``runner`` runs one cell (default :func:`run_cell`)."""
    args = parse_args(argv)
    out = Path(args.out)
    config_path = out / "config.json"
    # --table-only defaults to the selection of the last run in --out; a run defaults to the built-in values
    last = json.loads(config_path.read_text()) if args.table_only and config_path.exists() else {}
    algos = args.algos or last.get("algos") or DEFAULT_ALGOS
    datasets = [resolve_dataset(d) for d in (args.datasets or last.get("datasets") or DEFAULT_DATASETS)]
    seeds = args.seeds if args.seeds is not None else last.get("seeds", DEFAULT_SEEDS)
    budget = args.budget or last.get("budget") or "short"
    num_steps = args.num_steps if args.num_steps is not None else last.get("num_steps")
    eval_every = args.eval_every if args.eval_every is not None else last.get("eval_every")
    device = (args.device or last.get("device") or "auto").strip().lower()
    set_specs = args.set or last.get("set", [])
    sweep_specs = args.sweep or last.get("sweep", [])
    try:
        # --device first, so that a --set ALGO:device=... overrides it; auto is the examples' default: not written
        sets = ([("*", "*", "device", device)] if device != "auto" else []) + [parse_set(spec) for spec in set_specs]
        variants = expand_sweeps(algos, [parse_sweep(spec) for spec in sweep_specs])
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    rows = list(variants)  # the table's algorithm rows: the algos, or their swept variants
    overrides = {"num_steps": num_steps, "eval_every": eval_every, "sets": sets}
    examples_dir = Path(args.examples_dir)
    missing = [algo for algo in algos if not (examples_dir / f"{algo}.py").exists()]
    if missing and not args.table_only:
        raise SystemExit(f"no example script for {missing} in {examples_dir}")

    for saved in args.restore:
        try:
            restored = restore_results(Path(saved), out)
        except FileNotFoundError as error:
            raise SystemExit(f"error: {error}") from None
        print(f"restored {len(restored)} finished cell(s) from {saved} into {out}", flush=True)

    cells: dict[tuple[str, str, int], Cell] = {}
    settings_lines = []
    for dataset in datasets:
        for algo in dict.fromkeys([*REFERENCE_ALGOS, *rows]):
            script, swept = variants.get(algo, (algo, {}))
            cell_arguments = {**cell_args(script, dataset, budget, **overrides), **swept}
            cell_arguments = {key: value for key, value in cell_arguments.items() if value is not None}
            for seed in seeds:
                cells[algo, dataset, seed] = make_cell(algo, dataset, seed, out, examples_dir, cell_arguments,
                                                       script)
            if algo in rows:
                settings_lines.append(f"{algo} on {dataset}: {' '.join(to_argv(cell_arguments))}")
    header = "# Learning benchmark\n\n" + budget_text(list(dict.fromkeys([*REFERENCE_ALGOS, *algos])), budget,
                                                     seeds, overrides)
    reference = reference or data_reference
    status: dict[tuple[str, str, int], str] = {}
    failed: list[Cell] = []

    if not args.table_only:
        run_order = [a for a in dict.fromkeys([*REFERENCE_ALGOS, *rows]) if a in rows]  # BC first: it is quick
        selected = [cells[a, d, s] for s in seeds for d in datasets for a in run_order]
        finished = [cell for cell in selected if read_result(cell.result_path) is not None]
        todo = selected if args.rerun else [cell for cell in selected if cell not in finished]
        how = f"{args.jobs} at a time" if args.backend == "local" else "as Ray Tune trials"
        print(f"{len(selected)} cells, {len(finished)} finished, {len(todo)} to run "
              f"({how}, device {device}); {header.splitlines()[-1]}", flush=True)
        if args.dry_run:
            for cell in todo:
                print(" ".join(cell.command))
            return 0
        if args.rerun:
            for cell in finished:
                shutil.rmtree(cell.out)
        out.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps({"algos": algos, "datasets": datasets, "seeds": seeds, "budget": budget,
                                           "num_steps": num_steps, "eval_every": eval_every, "device": device,
                                           "set": set_specs,
                                           "sweep": sweep_specs},
                                          indent=1))
        if not args.no_prepare:
            for dataset in dict.fromkeys(cell.dataset for cell in todo):
                try:
                    prepare_dataset(dataset)
                except Exception as error:  # noqa: BLE001 - its cells fail; the other datasets go on
                    print(f"could not load {dataset}: {error!r}; its cells are skipped", flush=True)
                    for cell in [c for c in todo if c.dataset == dataset]:
                        todo.remove(cell)
                        failed.append(cell)
                        status[cell.algo, cell.dataset, cell.seed] = "failed"
        if args.backend == "ray":
            try:
                import _ray_backend  # imports ray: only here (it imports _cells, never this module)
            except ImportError as error:
                raise SystemExit(f"--backend ray needs Ray ({error}): pip install 'cmbrl[ray]'") from None

            outcomes = _ray_backend.run_cells(
                todo, out, address=args.address, num_cpus=args.num_cpus, cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial, scheduler=args.scheduler,
                grace_period=args.asha_grace_period, fresh=args.rerun)
        else:
            outcomes = run_cells(todo, args.jobs, runner)
        for cell, outcome in outcomes.items():
            if not outcome["ok"]:
                status[cell.algo, cell.dataset, cell.seed] = outcome.get("status", "failed")
                if status[cell.algo, cell.dataset, cell.seed] == "failed":  # "stopped" (by ASHA) is no failure
                    failed.append(cell)

    subtitle = f"budget {budget}, seeds {' '.join(map(str, seeds))}; band: min–max over seeds"
    text = write_outputs(out, rows, datasets, seeds, cells, header, subtitle, settings_lines, reference, status)
    print(text)
    print(f"wrote {out / 'table.md'}, results.csv, curves.csv and curves_*.png")
    if failed:
        print(f"{len(failed)} cell(s) failed:", "; ".join(f"{c.name} ({c.log_path})" for c in failed), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
