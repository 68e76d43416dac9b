"""Side by side: the evaluation histories of cmbrl runs and of a peer's runs, one panel per diagnostic, and a CSV.

    python benchmarks/peers/side_by_side.py \\
        --ours runs/combo_w2d/combo/cmbrl_walker2d_medium-replay-v0/seed*/result.json \\
        --peer runs/kit/combo_w2dmr_s0/result.json --peer-name OfflineRL-Kit \\
        --keys normalized_score q_data entropy alpha model_terminated:termination_rate \\
        --save benchmarks/results/combo_vs_offlinerlkit_walker2d_medium_replay

Every ``result.json`` holds ``history``, a list of evaluation points with ``step`` (the examples' and the peer
drivers' format: ``examples/mopo.py``, ``examples/combo.py``, ``benchmarks/peers/offlinerlkit_*.py``). A key
``OURS:PEER`` reads ``OURS`` from our points and ``PEER`` from the peer's (``model_terminated:termination_rate``);
a plain key is read from both. Points lacking a key are skipped for it.

Writes ``<save>.csv`` (source, run, step, then one column per key named by our key) and ``<save>.png`` (one panel
per key, ours solid, the peer's dashed); prints the CSV's rows. Raises SystemExit when a file has no ``history``.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def load_runs(paths: list[Path], source: str) -> list[dict]:
    """``[{"source", "run" (the file's folder), "history"}]`` for each ``result.json``."""
    runs = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        if not result.get("history"):
            raise SystemExit(f"{path}: no 'history' (expected a result.json of an example or a peer driver)")
        runs.append({"source": source, "run": Path(path).parent.name, "history": result["history"]})
    return runs


def rows(runs: list[dict], keys: list[tuple[str, str]], peer: bool) -> list[dict]:
    """One row per evaluation point: source, run, step and each key's value (None when absent)."""
    table = []
    for run in runs:
        for point in run["history"]:
            values = {ours: point.get(theirs if peer else ours) for ours, theirs in keys}
            table.append({"source": run["source"], "run": run["run"], "step": int(point["step"]), **values})
    return table


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ours", nargs="+", type=Path, required=True, help="cmbrl result.json files")
    p.add_argument("--peer", nargs="+", type=Path, required=True, help="the peer's result.json files")
    p.add_argument("--peer-name", default="peer")
    p.add_argument("--keys", nargs="+", default=["normalized_score", "q_data"], help="KEY or OURS:PEER")
    p.add_argument("--save", type=Path, required=True, help="path without suffix for .csv and .png")
    args = p.parse_args(argv)
    keys = [tuple(k.split(":", 1)) if ":" in k else (k, k) for k in args.keys]
    table = rows(load_runs(args.ours, "cmbrl"), keys, peer=False) + \
        rows(load_runs(args.peer, args.peer_name), keys, peer=True)
    args.save.parent.mkdir(parents=True, exist_ok=True)
    with open(args.save.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["source", "run", "step", *[ours for ours, _ in keys]])
        writer.writeheader()
        writer.writerows(table)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
    for ax, (ours, theirs) in zip(axes[0], keys):
        for label in dict.fromkeys((r["source"], r["run"]) for r in table):
            points = [(r["step"], r[ours]) for r in table if (r["source"], r["run"]) == label and r[ours] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="-" if label[0] == "cmbrl" else "--",
                        label=f"{label[0]} {label[1]}")
        ax.set(xlabel="gradient steps", title=ours if ours == theirs else f"{ours} / {theirs}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.save.with_suffix(".png"), dpi=100)
    plt.close(fig)
    for r in table:
        print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    return table


if __name__ == "__main__":
    main()
