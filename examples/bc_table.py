"""The behaviour-cloning reference row for cmbrl's datasets: BC on each dataset for several seeds, one table.

Runs ``examples/bc.py`` (same defaults: 10k gradient steps, batch 256, 10 deterministic evaluation episodes) for
every (dataset, seed) whose result file is not in ``--out`` yet, so an interrupted run resumes where it stopped.
Then writes ``<out>/table.md``: dataset, transitions, mean normalised return of the data (from its dataset card),
BC's normalised score (mean ± std over seeds, and each seed).

    python examples/bc_table.py                                   # all fifteen cmbrl datasets, seeds 0 1 2
    python examples/bc_table.py --datasets hopper-medium hopper-expert --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bc import Args as BCArgs  # noqa: E402
from bc import main as bc_main  # noqa: E402

from cmbrl.components.datasets import DATASET_RECIPES, dataset_card, resolve_dataset_id  # noqa: E402
from cmbrl.components.cli import HelpFormatter  # noqa: E402
from cmbrl.components.training import resolve_run_device  # noqa: E402


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_RECIPES), help="names or Minari ids")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="BC seeds per dataset")
    parser.add_argument("--num-steps", type=int, default=BCArgs.num_steps,
                        help="BC gradient steps per run (examples/bc.py's --num-steps)")
    parser.add_argument("--eval-episodes", type=int, default=BCArgs.eval_episodes,
                        help="evaluation episodes per run")
    parser.add_argument("--out", default="runs/bc_table", help="folder of the runs and the table")
    parser.add_argument("--device", default=BCArgs.device, help="examples/bc.py's --device: auto (CUDA when torch "
                        "sees one, else the CPU), cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    resolve_run_device(args)  # a bad --device fails here, before any run

    rows = ["| dataset | transitions | data (normalised) | BC (normalised, mean ± std) | BC per seed |",
            "|---|---|---|---|---|"]
    for name in args.datasets:
        dataset_id = resolve_dataset_id(name)
        scores = []
        for seed in args.seeds:
            result_file = Path(args.out) / f"{dataset_id.replace('/', '_')}_seed{seed}.json"
            if result_file.exists():
                result = json.loads(result_file.read_text())
            else:
                result = bc_main(BCArgs(dataset=dataset_id, seed=seed, num_steps=args.num_steps,
                                        eval_episodes=args.eval_episodes, out=args.out, device=args.device))
            scores.append(result["normalized_score"])
        card = dataset_card(dataset_id)
        rows.append(f"| {dataset_id} | {card['num_transitions']:,} | {card['normalized_score_mean']:.1f} | "
                    f"{np.mean(scores):.1f} ± {np.std(scores):.1f} | {' / '.join(f'{s:.1f}' for s in scores)} |")
    table = "\n".join(rows)
    footer = (f"\nBC: {args.num_steps:,} gradient steps, batch 256, seeds {args.seeds}, {args.eval_episodes} "
              "deterministic episodes per seed; data: mean over the dataset's complete episodes.")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text(table + "\n" + footer + "\n")
    print(table + footer)
    return table


if __name__ == "__main__":
    main()
