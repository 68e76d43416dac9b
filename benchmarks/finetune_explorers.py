"""Explorers compared over seeds: the fine-tuning cells of ``benchmarks/learning.py --algos finetune``, one table and
one figure per dataset (O3F's claims: improves faster than noise, no initial dip; OpenReview 2x8EKbGU51k §6.3).

    python benchmarks/finetune_explorers.py runs/ft_hm --save benchmarks/results/finetune_short_hm
    python benchmarks/finetune_explorers.py runs/ft_hm --include benchmarks/results/finetune_short_hm/explorers.csv \\
        --save benchmarks/results/finetune_short_hm       # seeds saved by an earlier session join the new ones

Reads every ``<out>/finetune/<dataset>/seed<S>/result.json`` that carries ``runs`` (one per explorer, from
``examples/finetune.py --explorers a,b,c``), every single-explorer cell of a ``--sweep finetune:explorers=a,b,c``
(``<out>/finetune@explorers=a/<dataset>/seed<S>/result.json``: the explorers side by side, one process each) and
the rows of ``--include`` files (a cell found in both is taken from ``result.json``). Runs are grouped by dataset
and setting (the base learner, ``--utd`` and ``--critic-utd``: ``awac, UTD 1, critic UTD 20``); the setting is
left out of the names for the default AWAC at UTD 1, so earlier files keep their names. Writes into ``--save``:

- ``explorers.csv``: one row per evaluation and per online episode (dataset, seed, explorer, kind, step,
  normalized_score, return), the record a later session can ``--include``;
- ``explorers.md``: per dataset and explorer, the evaluation's mean ± std (population) over seeds at each step, the
  drop (the lowest evaluation after step 0 minus step 0's, mean over seeds: the dip), the late mean (each seed's mean
  over the last ``--late`` evaluation steps, mean over seeds: less noisy than one 5-episode evaluation) and the online
  episodes' mean normalised score over each half of the online budget;
- ``explorers_<dataset>.png``: evaluation mean with a min–max band over seeds, and the online episodes' mean per
  evaluation window, one line per explorer.

Raises SystemExit when nothing is found.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

FIELDS = ("dataset", "seed", "explorer", "kind", "step", "normalized_score", "return")
"""The columns ``explorers.csv`` must have; it also has ``device`` (where the run trained, ``result.json``'s
``device``; empty for runs that predate it) and ``setting`` (:func:`setting`; empty for the default AWAC at UTD 1
and for files that predate it), optional when read back."""


Q_FIELDS = ("q_minus_return", "q_std")
"""Optional episode columns (runs from issue 29 on): the critics' mean Q at the executed actions minus the discounted
return that followed, and the critics' std there, averaged over the episode (``examples/finetune.py``'s
``q_against_return``; the learner's reward units)."""


def setting(args: dict) -> str:
    """The learner setting of a run's arguments: ``""`` for AWAC at UTD 1 with one critic update per step (the
    default, and every run before ``--base``/``--critic-utd`` existed), else e.g. ``"awac, UTD 1, critic UTD 20"``."""
    base, utd = args.get("base", "awac"), int(args.get("utd", 1))
    critic_utd = int(args.get("critic_utd", 0) or utd)
    if (base, utd, critic_utd) == ("awac", 1, 1):
        return ""
    return f"{base}, UTD {utd}, critic UTD {critic_utd}"


def rows_from_results(out: Path) -> list[dict]:
    """Evaluation and episode rows of every fine-tuning cell under ``out``: multi-explorer cells
    (``finetune/<dataset>/seed<S>``) and single-explorer sweep cells (``finetune@explorers=<name>/...``)."""
    rows = []
    for path in sorted(out.glob("finetune*/*/seed*/result.json")):
        result = json.loads(path.read_text())
        runs = result.get("runs") or ({result["explorer"]: result} if "explorer" in result else {})
        for explorer, run in runs.items():
            dataset, seed = run["args"]["dataset"], int(run["args"]["seed"])
            device = run.get("device") or result.get("device") or ""
            for kind, points in (("evaluation", run["history"]), ("episode", run["episodes"])):
                rows += [{"dataset": dataset, "seed": seed, "explorer": explorer, "kind": kind, "step": int(p["step"]),
                          "normalized_score": float(p["normalized_score"]), "return": float(p["return"]),
                          "device": device, "setting": setting(run["args"]),
                          **{key: p[key] for key in Q_FIELDS if kind == "episode" and p.get(key) is not None}}
                         for p in points]
    return rows


def group_name(row: dict) -> str:
    """What a table and a figure are per: the dataset, with the setting when it is not the default."""
    return f"{row['dataset']} ({row['setting']})" if row.get("setting") else row["dataset"]


def read_rows(path: Path) -> list[dict]:
    """Rows of an ``explorers.csv`` written by this script."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [field for field in FIELDS if rows and field not in rows[0]]
    if missing:
        raise SystemExit(f"--include {path}: columns {missing} missing (expected {list(FIELDS)})")
    return [{**{k: v for k, v in row.items() if k not in Q_FIELDS}, "device": row.get("device") or "",
             "setting": row.get("setting") or "", "seed": int(row["seed"]), "step": int(row["step"]),
             "normalized_score": float(row["normalized_score"]), "return": float(row["return"]),
             **{key: float(row[key]) for key in Q_FIELDS if row.get(key) not in (None, "")}} for row in rows]


def merge(fresh: list[dict], included: list[dict]) -> list[dict]:
    """``fresh`` rows plus the included rows of (dataset, seed, explorer) cells that ``fresh`` lacks."""
    def key(r):
        return r["dataset"], r.get("setting") or "", r["seed"], r["explorer"]

    have = {key(r) for r in fresh}
    return fresh + [r for r in included if key(r) not in have]


def summarise(rows: list[dict], late: int = 5) -> dict[str, dict[str, dict]]:
    """Per group (:func:`group_name`: the dataset, with the setting unless default) and explorer: ``steps``, ``mean``/``std``/``min``/``max`` of the evaluation over seeds at each
    step (only steps every seed reached), ``seeds``, ``drop`` (mean over seeds of min(evaluations after step 0) −
    evaluation at step 0), ``late_per_seed`` (each seed's mean evaluation over the last ``late`` of ``steps``; all of
    them when fewer) and ``late`` (their mean), ``online_halves`` (mean episode score over the first and second half of
    the steps) and ``windows`` (episode mean per evaluation window, pooled over seeds). Raises ValueError for
    ``late < 1``."""
    if late < 1:
        raise ValueError(f"late must be >= 1 (evaluations to average); got {late}")
    cells: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: {"evaluation": {}, "episode": []})))
    for r in rows:
        cell = cells[group_name(r)][r["explorer"]][r["seed"]]
        if r["kind"] == "evaluation":
            cell["evaluation"][r["step"]] = r["normalized_score"]
        else:
            cell["episode"].append((r["step"], r["normalized_score"]))
    summary: dict[str, dict[str, dict]] = {}
    for dataset, explorers in cells.items():
        summary[dataset] = {}
        for explorer, seeds in explorers.items():
            steps = sorted(set.intersection(*(set(c["evaluation"]) for c in seeds.values())))
            scores = np.array([[c["evaluation"][s] for s in steps] for c in seeds.values()])
            drops = [min(v for s, v in c["evaluation"].items() if s > 0) - c["evaluation"][0]
                     for c in seeds.values() if 0 in c["evaluation"] and len(c["evaluation"]) > 1]
            end = steps[-1] if steps else 0
            late_per_seed = scores[:, -late:].mean(1) if steps else np.array([])
            episodes = [e for c in seeds.values() for e in c["episode"]]
            halves = [[v for s, v in episodes if s <= end / 2], [v for s, v in episodes if s > end / 2]]
            windows = [(hi, [v for s, v in episodes if lo < s <= hi]) for lo, hi in zip(steps, steps[1:])]
            summary[dataset][explorer] = {
                "steps": steps, "seeds": sorted(seeds), "mean": scores.mean(0), "std": scores.std(0),
                "min": scores.min(0), "max": scores.max(0), "drop": float(np.mean(drops)) if drops else None,
                "late_per_seed": [float(v) for v in late_per_seed],
                "late": float(late_per_seed.mean()) if len(late_per_seed) else None,
                "online_halves": [float(np.mean(h)) if h else None for h in halves],
                "windows": [(hi, float(np.mean(v))) for hi, v in windows if v]}
    return summary


def table(summary: dict[str, dict[str, dict]], late: int = 5, devices=()) -> str:
    """Markdown: one table per dataset, a row per explorer (``late``: the count behind the late-mean column;
    ``devices``: where the runs trained, named in the footnote when known)."""
    def fmt(value):
        return "–" if value is None else f"{value:.1f}"

    lines = []
    for dataset, explorers in summary.items():
        steps = sorted(set.intersection(*(set(e["steps"]) for e in explorers.values())))
        lines += [f"**{dataset}**", "",
                  "| explorer | seeds | " + " | ".join(f"{s / 1000:g}k" for s in steps)
                  + f" | drop | mean of last {late} | online episodes, 1st / 2nd half |",
                  "|---|---|" + "---|" * len(steps) + "---|---|---|"]
        for explorer, e in explorers.items():
            cells = [f"{e['mean'][e['steps'].index(s)]:.1f} ± {e['std'][e['steps'].index(s)]:.1f}" for s in steps]
            lines.append(f"| {explorer} | {'/'.join(map(str, e['seeds']))} | " + " | ".join(cells)
                         + f" | {fmt(e['drop'])} | {fmt(e['late'])} | "
                         + " / ".join(fmt(h) for h in e["online_halves"]) + " |")
        lines.append("")
    lines.append("Evaluation: the policy without explorer (deterministic), normalised score, mean ± std (population) "
                 "over seeds; step 0 is the offline agent. drop: the lowest evaluation after step 0 minus step 0's, "
                 f"mean over seeds (negative: a dip). mean of last {late}: each seed's mean evaluation over "
                 f"the last {late} evaluation steps, mean over seeds. Online episodes: what the explorer collected.")
    if devices:
        lines.append(f"Trained on: {', '.join(devices)}.")
    return "\n".join(lines) + "\n"


def q_table(rows: list[dict]) -> str:
    """Markdown: per group and explorer, over every online episode that has them (:data:`Q_FIELDS`), the mean of
    ``q_minus_return`` (positive: the critics overestimate what the executed actions led to) and of ``q_std``, with
    the episode count; ``""`` when no row has them."""
    cells: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["kind"] == "episode" and "q_minus_return" in r:
            cells[group_name(r)][r["explorer"]].append((r["q_minus_return"], r.get("q_std", float("nan"))))
    if not cells:
        return ""
    lines = ["| group | explorer | episodes | mean Q − return | critics' std |", "|---|---|---|---|---|"]
    for group, explorers in cells.items():
        for explorer, values in explorers.items():
            errors, spread = np.array(values).T
            lines.append(f"| {group} | {explorer} | {len(values)} | {errors.mean():.1f} | {np.nanmean(spread):.2f} |")
    return "\n".join(lines) + ("\n\nThe critics at the actions the explorer executed online: ensemble-mean Q minus the "
                               "discounted return that followed (the learner's reward units; the last 300 steps of "
                               "time-limited episodes left out), and the critics' std there; per step, averaged per "
                               "episode, then over episodes.\n")


def plot(path: Path, dataset: str, explorers: dict[str, dict]) -> None:
    """Evaluation mean and min–max band over seeds; online episodes' mean per evaluation window."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, e in explorers.items():
        line, = axes[0].plot(e["steps"], e["mean"], marker="o", label=f"{name} ({len(e['seeds'])} seeds)")
        axes[0].fill_between(e["steps"], e["min"], e["max"], color=line.get_color(), alpha=0.15)
        if e["windows"]:
            axes[1].plot(*zip(*e["windows"]), marker=".", color=line.get_color(), label=name)
    for ax, title in zip(axes, ("evaluation (policy, no explorer): mean, min–max band",
                                "online episodes (mean per evaluation window)")):
        ax.set(xlabel="online env steps", title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_ylabel("normalised score")
    fig.suptitle(f"fine-tuning from {dataset}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("outs", nargs="*", type=Path, help="benchmarks/learning.py --out folders")
    p.add_argument("--include", nargs="*", type=Path, default=[], help="explorers.csv files of earlier sessions")
    p.add_argument("--save", type=Path, required=True, help="folder for explorers.csv, explorers.md, figures")
    p.add_argument("--late", type=int, default=5, help="evaluations at the end averaged per seed")
    args = p.parse_args(argv)
    if args.late < 1:
        p.error(f"--late must be >= 1 (evaluations to average); got {args.late}")
    included = [row for path in args.include for row in read_rows(path)]
    rows = merge([row for out in args.outs for row in rows_from_results(out)], included)
    if not rows:
        raise SystemExit(f"no fine-tuning runs found in {[str(o) for o in args.outs]} or {args.include}")
    args.save.mkdir(parents=True, exist_ok=True)
    rows.sort(key=lambda r: (r["dataset"], r.get("setting") or "", r["seed"], r["explorer"], r["kind"], r["step"]))
    with open(args.save / "explorers.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=(*FIELDS, "device", "setting", *Q_FIELDS), restval="")
        writer.writeheader()
        writer.writerows({**row, "device": row.get("device", ""), "setting": row.get("setting", "")} for row in rows)
    summary = summarise(rows, args.late)
    devices = sorted({row.get("device") for row in rows} - {"", None})
    q = q_table(rows)
    (args.save / "explorers.md").write_text(table(summary, args.late, devices) + (f"\n{q}" if q else ""))
    for dataset, explorers in summary.items():
        plot(args.save / f"explorers_{re.sub(r'[^A-Za-z0-9_.-]+', '_', dataset).strip('_')}.png", dataset, explorers)
    print(table(summary, args.late, devices))
    return summary


if __name__ == "__main__":
    main()
