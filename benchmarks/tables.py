"""The result tables of the README and the documentation, generated from the saved results in ``benchmarks/results/``.

One script, one source of truth: every table of measured numbers in ``README.md`` and ``docs/`` sits between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and is written here from the files the benchmarks saved
(``results.csv``, ``curves.csv`` and the data row of ``table.md`` from ``benchmarks/learning.py``; ``explorers.csv``
from ``benchmarks/finetune_explorers.py``; the calibration runs' JSON; the side-by-side CSVs). Never edit a block by
hand: rerun this script after adding results.

    python benchmarks/tables.py            # rewrite every block in README.md and docs/**/*.md
    python benchmarks/tables.py --check    # exit 1 naming the stale blocks (tests/test_docs.py, the mkdocs hook)
    python benchmarks/tables.py --print table/learning_short    # one block to stdout

Block names:

- ``table/<folder>``: a ``benchmarks/learning.py`` folder's table (data row, BC first, every algorithm with a
  finished seed), in ``learning.py``'s format;
- ``curves/<folder>``: every evaluation of every seed (``curves.csv``), one table per dataset, BC left out;
- ``explorers/<folder>``: ``finetune_explorers.py``'s summary over seeds at every evaluation step;
- ``explorers-q/<folder>``: the critics at the executed actions against the return that followed, per explorer;
- ``calibration/<penalties|reward|agreement|halting>``: over every run in ``benchmarks/results/calibration``;
- ``peer/<csv stem>/<metric>``: a side-by-side CSV (cmbrl and OfflineRL-Kit), one row per run, one column per step;
- the named blocks of :data:`NAMED` (the README's summary and the tables that join several folders).

Only the standard library and NumPy (through ``finetune_explorers.py``): it runs in well under a second.
"""
from __future__ import annotations

import argparse
import ast
import csv
import math
import re
import sys
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"<!-- (?P<name>[\w./@=-]+):start -->\n(?P<body>.*?)<!-- (?P=name):end -->", re.S)


# ---------------------------------------------------------------------------------------------------- reading
def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@lru_cache(maxsize=None)
def read_results(folder: str) -> tuple[dict, ...]:
    """The rows of ``benchmarks/results/<folder>/results.csv`` (score, final step and wall time as numbers)."""
    with open(RESULTS / folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return tuple({"algo": r["algo"], "dataset": r["dataset"], "seed": int(r["seed"]), "status": r["status"],
                  "score": _float(r["normalized_score"]) if r["status"] == "done" else None,
                  "final_step": int(float(r["final_step"])) if _float(r["final_step"]) is not None else None,
                  "wall": _float(r["wall_time_s"])} for r in rows)


@lru_cache(maxsize=None)
def read_curves(folder: str) -> dict:
    """``{(algo, dataset, seed): [(step, score), ...]}`` from ``curves.csv``."""
    curves: dict = defaultdict(list)
    with open(RESULTS / folder / "curves.csv", newline="") as f:
        for r in csv.DictReader(f):
            curves[(r["algo"], r["dataset"], int(r["seed"]))].append((int(r["step"]), float(r["normalized_score"])))
    return dict(curves)


def data_average(folder: str, dataset: str) -> float | None:
    """The dataset card's average normalised return, as ``learning.py`` wrote it in the folder's ``table.md``."""
    path = RESULTS / folder / "table.md"
    if not path.exists():
        return None
    match = re.search(rf"^\| {re.escape(dataset)} \| data \(average\) \| (-?[\d.]+) \|", path.read_text(), re.M)
    return float(match.group(1)) if match else None


# ------------------------------------------------------------------------------------------ learning tables
LEARNING_HEADER = ("| dataset | algorithm | normalised score (mean ± std) | seeds | per seed | gradient steps | "
                   "wall time per seed |\n|---|---|---|---|---|---|---|")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (``learning.py``'s)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def fmt_duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


def fmt_steps(steps: Iterable[int | None]) -> str:
    steps = sorted({s for s in steps if s is not None})
    if not steps:
        return "—"
    return f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}–{steps[-1]:,}"


def cells(folder: str, algo: str, dataset: str, seeds: Sequence[int] | None = None) -> list[dict]:
    rows = [r for r in read_results(folder) if r["algo"] == algo and r["dataset"] == dataset]
    if not rows:
        raise KeyError(f"{folder}/results.csv has no {algo} × {dataset} cells")
    return [r for r in rows if seeds is None or r["seed"] in seeds]


def score_summary(folder: str, algo: str, dataset: str, seeds: Sequence[int] | None = None) -> dict:
    """mean, std, done/total, per-seed text, steps, mean wall time of one algorithm × dataset of a folder."""
    found = cells(folder, algo, dataset, seeds)
    done = [r for r in found if r["score"] is not None]
    if not done:
        return {"done": 0, "total": len(found)}
    mean, std = mean_std([r["score"] for r in done])
    walls = [r["wall"] for r in done if r["wall"] is not None]
    return {"mean": mean, "std": std, "done": len(done), "total": len(found),
            "per_seed": " / ".join("—" if r["score"] is None else f"{r['score']:.1f}" for r in found),
            "steps": fmt_steps(r["final_step"] for r in done),
            "wall": fmt_duration(sum(walls) / len(walls)) if walls else "—"}


def learning_row(folder: str, algo: str, dataset: str, label: str | None = None,
                 seeds: Sequence[int] | None = None) -> str:
    s = score_summary(folder, algo, dataset, seeds)
    if not s["done"]:
        return f"| {dataset} | {label or algo} | not run | 0/{s['total']} | | | |"
    return (f"| {dataset} | {label or algo} | {s['mean']:.1f} ± {s['std']:.1f} | {s['done']}/{s['total']} | "
            f"{s['per_seed']} | {s['steps']} | {s['wall']} |")


def data_row(folder: str, dataset: str) -> str:
    average = data_average(folder, dataset)
    return f"| {dataset} | data (average) | {'n/a' if average is None else f'{average:.1f}'} | | | | |"


def learning_table(rows: Sequence[tuple]) -> str:
    """``rows``: ``("data", folder, dataset)`` or ``(folder, algo, dataset[, label])``."""
    lines = [LEARNING_HEADER]
    for row in rows:
        lines.append(data_row(row[1], row[2]) if row[0] == "data" else learning_row(*row))
    return "\n".join(lines)


def _datasets(folder: str) -> list[str]:
    return list(dict.fromkeys(r["dataset"] for r in read_results(folder)))


def _algos(folder: str, dataset: str) -> list[str]:
    algos = list(dict.fromkeys(r["algo"] for r in read_results(folder) if r["dataset"] == dataset))
    return sorted(algos, key=lambda a: a != "bc")  # BC first, as learning.py orders its reference rows


def folder_table(folder: str) -> str:
    """A learning folder's table: per dataset its data row, then every algorithm with a finished seed."""
    rows: list[tuple] = []
    for dataset in _datasets(folder):
        rows.append(("data", folder, dataset))
        rows += [(folder, algo, dataset) for algo in _algos(folder, dataset)
                 if any(r["score"] is not None for r in cells(folder, algo, dataset))]
    return learning_table(rows)


def _step_label(step: int) -> str:
    return "0" if step == 0 else f"{step / 1000:g}k"


def curves_table(folder: str) -> str:
    """Every evaluation of every seed (BC, evaluated once at its end, left out), one table per dataset."""
    curves = read_curves(folder)
    out = []
    datasets = list(dict.fromkeys(d for _, d, _ in curves))
    for dataset in datasets:
        keys = [k for k in curves if k[1] == dataset and k[0] != "bc"]
        if not keys:
            continue
        steps = sorted({s for k in keys for s, _ in curves[k]})
        if len(datasets) > 1:
            out.append(f"**{dataset}**\n")
        lines = ["| algorithm | seed | " + " | ".join(_step_label(s) for s in steps) + " |",
                 "|---|---|" + "---|" * len(steps)]
        for algo, _, seed in keys:
            points = dict(curves[(algo, dataset, seed)])
            lines.append(f"| {algo} | {seed} | "
                         + " | ".join(f"{points[s]:.1f}" if s in points else "" for s in steps) + " |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out).rstrip("\n")


# ----------------------------------------------------------------------------------------------- explorers
@lru_cache(maxsize=None)
def _finetune_explorers():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import finetune_explorers
    finally:
        sys.path.pop(0)
    return finetune_explorers


def explorer_rows(folder: str) -> list[dict]:
    return _finetune_explorers().read_rows(RESULTS / folder / "explorers.csv")


EXPLORER_ORDER = ("o3f", "none", "gaussian")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def explorer_table(folder: str, steps: Sequence[int] | None = None, late: int | None = None,
                   late_label: str = "") -> str:
    """Per explorer: the evaluation's mean ± std over seeds at ``steps`` (default: every step), the drop (or, with
    ``late``, the mean of each seed's last ``late`` evaluations) and the online episodes over each half."""
    fe = _finetune_explorers()
    summary = fe.summarise(explorer_rows(folder), late or 5)
    out = []
    for dataset, explorers in summary.items():
        common = sorted(set.intersection(*(set(e["steps"]) for e in explorers.values())))
        shown = [s for s in common if steps is None or s in steps]
        last = "mean of last {} {}".format(late, late_label).rstrip() if late else "drop"
        if len(summary) > 1:
            out.append(f"**{dataset}**\n")
        lines = ["| explorer | seeds | " + " | ".join(_step_label(s) for s in shown)
                 + f" | {last} | online episodes, 1st / 2nd half |", "|---|---|" + "---|" * len(shown) + "---|---|"]
        for name in sorted(explorers, key=lambda n: EXPLORER_ORDER.index(n) if n in EXPLORER_ORDER else 99):
            e = explorers[name]
            means = [f"{e['mean'][e['steps'].index(s)]:.1f} ± {e['std'][e['steps'].index(s)]:.1f}" for s in shown]
            lines.append(f"| {name} | {'/'.join(map(str, e['seeds']))} | " + " | ".join(means)
                         + f" | {_fmt(e['late'] if late else e['drop'])} | "
                         + " / ".join(_fmt(h) for h in e["online_halves"]) + " |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out).rstrip("\n")


def explorer_per_seed_table(folder: str, step: int) -> str:
    """Each seed's evaluation at ``step`` per explorer (and at step 0, the offline agent)."""
    rows = [r for r in explorer_rows(folder) if r["kind"] == "evaluation"]
    seeds = sorted({r["seed"] for r in rows})
    lines = ["| explorer | " + " | ".join(f"seed {s}: 0 → {_step_label(step)}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for name in EXPLORER_ORDER:
        at = {(r["seed"], r["step"]): r["normalized_score"] for r in rows if r["explorer"] == name}
        if at:
            lines.append(f"| {name} | " + " | ".join(f"{_fmt(at.get((s, 0)))} → {_fmt(at.get((s, step)))}"
                                                     for s in seeds) + " |")
    return "\n".join(lines)


def explorer_after_table(folder: str, steps: Sequence[int], late: int, after: int) -> str:
    """Evaluations at ``steps`` (mean ± std over seeds), the late mean with each seed's, and each seed's mean online
    episode after ``after`` steps."""
    fe = _finetune_explorers()
    rows = explorer_rows(folder)
    summary = fe.summarise(rows, late)
    out = []
    for dataset, explorers in summary.items():
        first = next(iter(explorers.values()))
        lo, hi = first["steps"][-late], first["steps"][-1]
        lines = ["| explorer | " + " | ".join(_step_label(s) for s in steps)
                 + f" | mean of last {late} ({_step_label(lo)}–{_step_label(hi)}), seed "
                 + " / ".join(map(str, first["seeds"])) + f" | online episodes {_step_label(after)}–"
                 f"{_step_label(hi)}, seed " + " / ".join(map(str, first["seeds"])) + " |",
                 "|---|" + "---|" * len(steps) + "---|---|"]
        for name in sorted(explorers, key=lambda n: EXPLORER_ORDER.index(n) if n in EXPLORER_ORDER else 99):
            e = explorers[name]
            means = [f"{e['mean'][e['steps'].index(s)]:.1f} ± {e['std'][e['steps'].index(s)]:.1f}" for s in steps]
            online = []
            for seed in e["seeds"]:
                values = [r["normalized_score"] for r in rows if r["dataset"] == dataset and r["explorer"] == name
                          and r["seed"] == seed and r["kind"] == "episode" and r["step"] > after]
                online.append(_fmt(sum(values) / len(values) if values else None))
            lines.append(f"| {name} | " + " | ".join(means) + f" | **{_fmt(e['late'])}**: "
                         + " / ".join(_fmt(v) for v in e["late_per_seed"]) + " | " + " / ".join(online) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def explorer_single_seed_table(folder: str, window: int) -> str:
    """One seed's explorers (an ``explorers.csv`` without dataset/seed columns): every evaluation, and the online
    episodes' mean over each ``window`` steps."""
    with open(RESULTS / folder / "explorers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = [n for n in EXPLORER_ORDER if any(r["explorer"] == n for r in rows)]
    steps = sorted({int(r["step"]) for r in rows if r["kind"] == "evaluation"})
    end = steps[-1]
    windows = [(lo, lo + window) for lo in range(0, end, window)]
    lines = ["| explorer | " + " | ".join(_step_label(s) for s in steps) + " | online episodes, mean over "
             + " / ".join(f"{_step_label(lo)}–{_step_label(hi)}" for lo, hi in windows) + " |",
             "|---|" + "---|" * len(steps) + "---|"]
    for name in names:
        ev = {int(r["step"]): float(r["normalized_score"]) for r in rows
              if r["explorer"] == name and r["kind"] == "evaluation"}
        episodes = [(int(r["step"]), float(r["normalized_score"])) for r in rows
                    if r["explorer"] == name and r["kind"] in ("episode", "online_episode")]
        means = []
        for lo, hi in windows:
            values = [v for s, v in episodes if lo < s <= hi]
            means.append(_fmt(sum(values) / len(values) if values else None))
        lines.append(f"| {name} | " + " | ".join(_fmt(ev.get(s)) for s in steps) + " | " + " / ".join(means) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- calibration
@lru_cache(maxsize=None)
def calibration_penalties() -> tuple[str, ...]:
    """``cmbrl.components.calibration.CALIBRATION_PENALTIES``, read without importing torch."""
    tree = ast.parse((ROOT / "components" / "calibration.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "CALIBRATION_PENALTIES":
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("CALIBRATION_PENALTIES not found in components/calibration.py")


def _average_ranks(values: Sequence[float]) -> list[float]:
    order = sorted(set(values))
    counts = {v: values.count(v) for v in order}
    ranks, end = {}, 0
    for v in order:
        end += counts[v]
        ranks[v] = end - (counts[v] - 1) / 2
    return [ranks[v] for v in values]


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    rx, ry = _average_ranks(list(x)), _average_ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    rx, ry = [v - mx for v in rx], [v - my for v in ry]
    denominator = math.sqrt(sum(v * v for v in rx) * sum(v * v for v in ry))
    return math.nan if denominator == 0 else sum(a * b for a, b in zip(rx, ry)) / denominator


@lru_cache(maxsize=None)
def calibration_runs() -> tuple[dict, ...]:
    import json
    return tuple(json.loads(p.read_text()) for p in sorted((RESULTS / "calibration").glob("*.json")))


def calibration_table(kind: str) -> str:
    """``penalties`` (ρ / AUROC per penalty, total error), ``reward`` (the same for the reward error alone),
    ``agreement`` (with the penalty study's order by return) or ``halting`` (MOReL's rule); the format of
    ``cmbrl.components.calibration.format_calibration_table``."""
    key = "results_reward" if kind == "reward" else "results"
    rows = [(r["ensemble"], s, m) for r in calibration_runs() for s, m in r[key].items()]
    if kind in ("penalties", "reward"):
        names = list(rows[0][2]["penalties"])
        lines = ["| ensemble | state set | valid rows | mean error | " + " | ".join(names) + " |",
                 "|---|---|---|---|" + "---|" * len(names)]
        for ensemble, state_set, m in rows:
            values = [f"{m['penalties'][n]['spearman']:.2f} / {m['penalties'][n]['auroc']:.2f}" for n in names]
            lines.append(f"| {ensemble} | {state_set} | {m['num_valid']:,}/{m['num_rows']:,} | "
                         f"{m['error_mean']:.3f} | " + " | ".join(values) + " |")
    elif kind == "halting":
        lines = ["| ensemble | state set | rule | threshold | halted | precision | recall |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {ensemble} | {state_set} | {rule} | {h['threshold']:.3f} | {100 * h['halted_fraction']:.1f} % "
                  f"| {h['precision']:.2f} | {h['recall']:.2f} |"
                  for ensemble, state_set, m in rows for rule, h in m["halting"].items()]
    elif kind == "agreement":
        reference = calibration_penalties()
        lines = ["| ensemble | state set | by ρ, best > worst | agreement (ρ) | agreement (AUROC) |",
                 "|---|---|---|---|---|"]
        for ensemble, state_set, m in rows:
            order = sorted(m["penalties"], key=lambda n: -m["penalties"][n]["spearman"])
            agreement = [f"{_spearman([m['penalties'][n][k] for n in reference], [-i for i in range(len(reference))]):+.2f}"
                         for k in ("spearman", "auroc")]
            lines.append(f"| {ensemble} | {state_set} | {' > '.join(order)} | {agreement[0]} | {agreement[1]} |")
    else:
        raise KeyError(f"calibration/{kind}: kind must be penalties, reward, agreement or halting")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- side-by-side runs
PEER_RUN_COLUMNS = ("source", "impl", "run", "penalty_coef", "seed")


def peer_table(stem: str, metric: str) -> str:
    """A side-by-side CSV: one row per run (its identifying columns joined), one column per step."""
    with open(RESULTS / f"{stem}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if metric == "score":
        metric = "normalized_score" if "normalized_score" in rows[0] else "score"
    if metric not in rows[0]:
        raise KeyError(f"peer/{stem}/{metric}: {stem}.csv has no column {metric}")
    ids = [c for c in PEER_RUN_COLUMNS if c in rows[0]]
    runs: dict = defaultdict(dict)
    for r in rows:
        name = ", ".join(r[c] if c in ("source", "impl", "run") else f"{c} {r[c]}" for c in ids)
        runs[name][int(float(r["step"]))] = _float(r[metric])
    steps = sorted({s for points in runs.values() for s in points})
    digits = 3 if metric in ("alpha", "model_terminated", "model_saturated_actions", "saturated",
                             "termination_rate") else 1
    lines = ["| run | " + " | ".join(_step_label(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name, points in runs.items():
        lines.append(f"| {name} | " + " | ".join("" if points.get(s) is None else f"{points[s]:.{digits}f}"
                                                  for s in steps) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- README summary
# (algorithm, page, folder, algo key in the folder, dataset, reference folder for the data row and BC, note)
SUMMARY_ROWS = (
    ("MOPO", "algorithms/mopo.md", "learning_short", "mopo", "cmbrl/hopper/medium-replay-v0", None, ""),
    ("MOPO", "algorithms/mopo.md", "learning_short", "mopo", "cmbrl/hopper/medium-v0", None, ""),
    ("MOPO", "algorithms/mopo.md", "learning_short", "mopo", "cmbrl/halfcheetah/medium-v0", None, "first 100k"),
    ("MOPO", "algorithms/mopo.md", "learning_hc200k_60k", "mopo", "cmbrl/halfcheetah/medium-v0", None,
     "first 200k"),
    ("MOPO", "algorithms/mopo.md", "learning_short", "mopo", "cmbrl/halfcheetah/medium-replay-v0", None, ""),
    ("MOPO", "algorithms/mopo.md", "learning_short", "mopo", "cmbrl/walker2d/medium-v0", None, ""),
    ("MOPO", "algorithms/mopo.md", "learning_short", "mopo", "cmbrl/walker2d/medium-replay-v0", None, "λ 2.5"),
    ("COMBO", "algorithms/combo.md", "learning_short_combo", "combo", "cmbrl/hopper/medium-v0", None, ""),
    ("COMBO", "algorithms/combo.md", "learning_short_combo_w2d", "combo", "cmbrl/walker2d/medium-replay-v0", None,
     ""),
    ("AWAC", "algorithms/awac-mb2po.md", "learning_short_awac", "awac", "cmbrl/hopper/medium-replay-v0", None, ""),
    ("AWAC", "algorithms/awac-mb2po.md", "learning_short_awac_hcm", "awac", "cmbrl/halfcheetah/medium-v0", None, ""),
    ("AWAC", "algorithms/awac-mb2po.md", "learning_w2d_long_fit", "awac", "cmbrl/walker2d/medium-replay-v0", None,
     ""),
    ("MB2PO", "algorithms/awac-mb2po.md", "learning_short_awac", "mb2po", "cmbrl/hopper/medium-replay-v0", None,
     "after AWAC"),
    ("MB2PO", "algorithms/awac-mb2po.md", "learning_short_awac_hcm", "mb2po", "cmbrl/halfcheetah/medium-v0", None,
     "after AWAC"),
    ("MB2PO", "algorithms/awac-mb2po.md", "learning_w2d_long_fit", "mb2po", "cmbrl/walker2d/medium-replay-v0",
     None, "after AWAC, λ 2.5"),
    ("MB2PO", "algorithms/awac-mb2po.md", "learning_w2d_mb2po_l05", "mb2po@penalty_coef=0.5",
     "cmbrl/walker2d/medium-replay-v0", "learning_w2d_long_fit", "after AWAC, λ 0.5"),
)
# fine-tuning rows: (page, folder, explorer, dataset, reference folder, offline steps, setting); the setting is
# finetune_explorers.setting() of the runs ("" for AWAC at UTD 1) and names the base learner in the label
SUMMARY_FINETUNE = (
    ("algorithms/finetune-o3f.md", "finetune_30k_hm", "o3f", "cmbrl/hopper/medium-v0", "learning_short_combo", 30_000,
     ""),
    ("algorithms/finetune-o3f.md", "finetune_30k_hm", "none", "cmbrl/hopper/medium-v0", "learning_short_combo",
     30_000, ""),
    ("algorithms/finetune-o3f.md", "finetune_short_hcm", "o3f", "cmbrl/halfcheetah/medium-v0",
     "learning_short_awac_hcm", 30_000, ""),
    ("algorithms/finetune-o3f.md", "finetune_iql_hcm", "o3f", "cmbrl/halfcheetah/medium-v0", "bc_generator2", 30_000,
     "iql, UTD 1, critic UTD 1"),
    ("algorithms/finetune-o3f.md", "finetune_iql_hm", "o3f", "cmbrl/hopper/medium-v0", "bc_generator2", 30_000,
     "iql, UTD 1, critic UTD 1"),
    ("algorithms/finetune-o3f.md", "finetune_cutd20_hcm", "o3f", "cmbrl/halfcheetah/medium-v0", "bc_generator2",
     30_000, "awac, UTD 1, critic UTD 20"),
    ("algorithms/finetune-o3f.md", "finetune_cutd20_hcm", "gaussian", "cmbrl/halfcheetah/medium-v0", "bc_generator2",
     30_000, "awac, UTD 1, critic UTD 20"),
)
"""Rows whose reference folder is ``bc_generator2`` ran on generator-2 data: their data and BC columns come from
that folder (``bc_table``'s files); their link goes to the page's ``<dataset>-<base>`` section
(``<dataset>-<base>-with-critic-utd-<G>`` when the setting has a critic UTD G > 1, labelled ``BASE (critic UTD G)``)."""


def _bc_generator2(dataset: str) -> tuple[str, str]:
    """(data average, BC mean ± std) of a dataset on the generator-2 data (``bc_generator2``'s table row)."""
    for line in bc_table("bc_generator2").splitlines()[2:]:
        parts = [p.strip() for p in line.strip("|").split("|")]
        if parts[0] == dataset:
            return parts[2], parts[3]
    return "—", "—"


def _reference(folder: str, dataset: str, fallback: str | None = None) -> tuple[str, str]:
    """(data average, BC mean ± std) for a dataset: from the folder that ran the algorithm when it has them, else
    from ``fallback`` (a folder of the same dataset that ran BC; ``"bc_generator2"``: the generator-2 BC table)."""
    if fallback == "bc_generator2":
        return _bc_generator2(dataset)
    average = data_average(folder, dataset)
    if average is None and fallback:
        average = data_average(fallback, dataset)
    bc = []
    for source in (folder, fallback):
        if source and (RESULTS / source / "results.csv").exists() and not bc:
            bc = [r for r in read_results(source) if r["algo"] == "bc" and r["dataset"] == dataset
                  and r["score"] is not None]
    bc_text = "—"
    if bc:
        mean, std = mean_std([r["score"] for r in bc])
        bc_text = f"{mean:.1f} ± {std:.1f}"
    return ("—" if average is None else f"{average:.1f}"), bc_text


def _details(prefix: str, page: str, folder: str, dataset: str) -> str:
    """A link to the dataset's section of the algorithm's page (its heading is the dataset's short name)."""
    anchor = dataset.split("/", 1)[1].rsplit("-v", 1)[0].replace("/", "-")
    return f"[{Path(page).stem}]({prefix}{page}#{anchor}) (`{folder}`)"


def summary_table(prefix: str) -> str:
    """The README's summary: a line per algorithm × dataset, its final score against the data's average and BC."""
    lines = ["| algorithm | dataset | score (mean ± std, seeds) | data | BC | budget | details |",
             "|---|---|---|---|---|---|---|"]
    for name, page, folder, algo, dataset, ref, note in SUMMARY_ROWS:
        s = score_summary(folder, algo, dataset)
        average, bc = _reference(folder, dataset, ref)
        label = f"{name} ({note})" if note else name
        lines.append(f"| {label} | `{dataset.split('/', 1)[1]}` | **{s['mean']:.1f}** ± {s['std']:.1f} "
                     f"({s['done']}) | {average} | {bc} | {s['steps']} steps | {_details(prefix, page, folder, dataset)} |")
    fe = _finetune_explorers()
    for page, folder, explorer, dataset, ref, offline, setting in SUMMARY_FINETUNE:
        e = fe.summarise(explorer_rows(folder))[fe.group_name({"dataset": dataset, "setting": setting})][explorer]
        average, bc = _reference(folder, dataset, ref)
        base = setting.split(",")[0].upper() if setting else "AWAC"
        details = _details(prefix, page, folder, dataset)
        if setting:  # the page's "<dataset>, <BASE>" section, "<dataset>, <BASE> with critic UTD <G>" for G > 1
            critic_utd = re.search(r"critic UTD (\d+)", setting)
            section = base.lower()
            if critic_utd and critic_utd[1] != "1":
                section += f"-with-critic-utd-{critic_utd[1]}"
                base += f" (critic UTD {critic_utd[1]})"
            details = details.replace(")", f"-{section})", 1)
        lines.append(f"| {base} → online, {explorer} explorer | `{dataset.split('/', 1)[1]}` | "
                     f"**{e['mean'][-1]:.1f}** ± {e['std'][-1]:.1f} ({len(e['seeds'])}) | {average} | {bc} | "
                     f"{offline:,} offline + {e['steps'][-1]:,} online steps | {details} |")
    return "\n".join(lines)


def bc_table(folder: str) -> str:
    """BC on every dataset, as ``examples/bc_table.py`` rebuilt it from its per-seed result files: a row per dataset
    (transitions, the data's normalised average, BC's mean ± std and each seed), computed again here from those
    files (``<dataset>_seed<S>.json``) and the data column of the ``table.md`` saved beside them."""
    import json
    import statistics

    root = RESULTS / folder
    saved = {}
    for line in (root / "table.md").read_text().splitlines()[2:]:
        parts = [p.strip() for p in line.strip("|").split("|")]
        if len(parts) >= 3 and parts[0].startswith("cmbrl/"):
            saved[parts[0]] = (parts[1], parts[2])
    lines = ["| dataset | transitions | data (normalised) | BC (normalised, mean ± std) | BC per seed |",
             "|---|---|---|---|---|"]
    for dataset, (transitions, data) in saved.items():
        runs = sorted(root.glob(f"{dataset.replace('/', '_')}_seed*.json"))
        scores = [json.loads(p.read_text())["normalized_score"] for p in runs]
        if not scores:
            continue
        lines.append(f"| {dataset} | {transitions} | {data} | {statistics.fmean(scores):.1f} ± "
                     f"{statistics.pstdev(scores):.1f} | {' / '.join(f'{v:.1f}' for v in scores)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ named blocks
NAMED: dict[str, Callable[[], str]] = {
    "summary": lambda: summary_table("docs/"),
    "bc-generator2": lambda: bc_table("bc_generator2"),
    "summary-docs": lambda: summary_table(""),
    "mopo-combined": lambda: learning_table([
        ("data", "learning_short", "cmbrl/hopper/medium-replay-v0"),
        ("learning_short_combined", "mopo", "cmbrl/hopper/medium-replay-v0", "mopo, penalty combined"),
        ("learning_short", "mopo", "cmbrl/hopper/medium-replay-v0", "mopo, penalty max_aleatoric")]),
    "mb2po-w2d-05": lambda: learning_table([
        ("data", "learning_w2d_mb2po_l05", "cmbrl/walker2d/medium-replay-v0"),
        ("learning_w2d_mb2po_l05", "awac", "cmbrl/walker2d/medium-replay-v0", "awac (rerun here)"),
        ("learning_w2d_mb2po_l05", "mb2po@penalty_coef=0.5", "cmbrl/walker2d/medium-replay-v0"),
        ("learning_w2d_awac60k", "awac", "cmbrl/walker2d/medium-replay-v0", "awac, 60,000 steps (control)")]),
    "awac-hcm": lambda: learning_table([
        ("data", "learning_short_awac_hcm", "cmbrl/halfcheetah/medium-v0"),
        ("learning_short_awac_hcm", "bc", "cmbrl/halfcheetah/medium-v0"),
        ("learning_short_awac_hcm", "awac", "cmbrl/halfcheetah/medium-v0"),
        ("learning_short_awac_hcm", "mb2po", "cmbrl/halfcheetah/medium-v0"),
        ("learning_awac60k_hcm", "awac", "cmbrl/halfcheetah/medium-v0", "awac, 60,000 steps (control)")]),
    "combo-w2d-variants": lambda: learning_table([
        ("data", "learning_short_combo_w2d", "cmbrl/walker2d/medium-replay-v0"),
        ("learning_short_combo_w2d", "combo", "cmbrl/walker2d/medium-replay-v0", "combo, uniform prior, β 0.5",
         (0,)),
        *[(f"learning_short_combo_w2d_{variant}", algo, "cmbrl/walker2d/medium-replay-v0")
          for variant, algo in (("prior", "combo@prior=previous_policy"), ("lagrange", "combo@learn_beta=1"),
                                ("beta5", "combo@beta=5"))]]),
    "o3f-hm": lambda: explorer_table("finetune_short_hm"),
    "o3f-hm-seeds": lambda: explorer_per_seed_table("finetune_short_hm", 10_000),
    "o3f-hm30k": lambda: explorer_table("finetune_30k_hm", steps=(0, 5_000, 10_000, 15_000, 20_000, 22_500, 25_000, 27_500, 30_000), late=5,
                                        late_label="(20k–30k)"),
    "o3f-hm30k-seeds": lambda: explorer_per_seed_table("finetune_30k_hm", 30_000),
    "o3f-hm50k": lambda: explorer_after_table("finetune_50k_hm_s01", steps=(30_000, 35_000, 40_000, 45_000, 47_500,
                                                                             50_000), late=5, after=30_000),
    "o3f-hcm": lambda: explorer_table("finetune_short_hcm"),
    "o3f-hcm-seeds": lambda: explorer_per_seed_table("finetune_short_hcm", 10_000),
    "o3f-hmr": lambda: explorer_single_seed_table("finetune_short_hmr", 5_000),
}


def render(name: str) -> str:
    """The markdown of block ``name`` (without the markers). Raises KeyError for an unknown name."""
    if name in NAMED:
        return NAMED[name]()
    kind, _, arg = name.partition("/")
    if kind == "table" and (RESULTS / arg / "results.csv").exists():
        return folder_table(arg)
    if kind == "curves" and (RESULTS / arg / "curves.csv").exists():
        return curves_table(arg)
    if kind == "explorers" and (RESULTS / arg / "explorers.csv").exists():
        return explorer_table(arg)
    if kind == "explorers-q" and (RESULTS / arg / "explorers.csv").exists():
        return _finetune_explorers().q_table(explorer_rows(arg)).rstrip("\n")
    if kind == "calibration":
        return calibration_table(arg)
    if kind == "peer":
        stem, _, metric = arg.partition("/")
        if (RESULTS / f"{stem}.csv").exists():
            return peer_table(stem, metric or "score")
    raise KeyError(f"unknown table block {name!r} (see benchmarks/tables.py's docstring for the names)")


def files() -> list[Path]:
    """README.md and every markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def rewrite(text: str) -> str:
    """``text`` with every block regenerated."""
    def block(match: re.Match) -> str:
        name = match.group("name")
        return f"<!-- {name}:start -->\n\n{render(name)}\n\n<!-- {name}:end -->"
    return BLOCK.sub(block, text)


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def stale(paths: Sequence[Path] | None = None) -> list[str]:
    """``path: block`` for every block whose text differs from what the saved results give (or whose name is
    unknown), over ``paths`` (default: README.md and docs/**/*.md)."""
    found = []
    for path in paths or files():
        text = Path(path).read_text()
        for match in BLOCK.finditer(text):
            try:
                expected = f"\n{render(match.group('name'))}\n\n"
            except KeyError as error:
                found.append(f"{_shown(path)}: {error.args[0]}")
                continue
            if match.group("body") != expected:
                found.append(f"{_shown(path)}: {match.group('name')}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if a block is stale; write nothing")
    p.add_argument("--print", metavar="NAME", help="print one block and exit")
    args = p.parse_args(argv)
    if args.print:
        print(render(args.print))
        return 0
    if args.check:
        found = stale()
        for line in found:
            print(f"stale: {line}", file=sys.stderr)
        if found:
            print("run: python benchmarks/tables.py", file=sys.stderr)
        return 1 if found else 0
    failed = 0
    for path in files():
        text = path.read_text()
        try:
            new = rewrite(text)
        except KeyError as error:
            print(f"{path.relative_to(ROOT)}: {error.args[0]}; file left unchanged", file=sys.stderr)
            failed = 1
            continue
        if new != text:
            path.write_text(new)
            print(f"updated {path.relative_to(ROOT)}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
