"""Command line for cmbrl's datasets.

    python -m cmbrl.datasets list                                  # recipes, and which are generated
    python -m cmbrl.datasets make hopper-medium-replay             # generate (skips datasets that exist)
    python -m cmbrl.datasets make all                              # all fifteen D4RL-recipe datasets
    python -m cmbrl.datasets make hopper-random --num-steps 100000 --overwrite
    python -m cmbrl.datasets card walker2d-medium-expert           # print a dataset card

Names are D4RL style (``<env>-<name>``, e.g. ``halfcheetah-medium-expert``) or full Minari ids
(``cmbrl/halfcheetah/medium-expert-v0``). Datasets go to the Minari root (``$MINARI_DATASETS_PATH``, default
``~/.minari/datasets``). ``make`` is idempotent: an existing dataset is left alone (its card is printed) unless
``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import sys
import time

from cmbrl.components.datasets import (DATASET_RECIPES, dataset_card, dataset_exists, format_card, make_dataset,
                                       resolve_dataset_id)


def _ids(names: list[str]) -> list[str]:
    if names == ["all"]:
        return list(DATASET_RECIPES)
    ids = [resolve_dataset_id(name) for name in names]
    unknown = [dataset_id for dataset_id in ids if dataset_id not in DATASET_RECIPES]
    if unknown:
        raise ValueError(f"No cmbrl recipe for {unknown}; allowed: {sorted(DATASET_RECIPES)} or 'all'.")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmbrl.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the recipes and whether each is generated")
    make = commands.add_parser("make", help="generate datasets (idempotent)")
    make.add_argument("names", nargs="+", help="dataset names (hopper-medium-replay, ...), Minari ids, or 'all'")
    make.add_argument("--num-steps", type=int, default=None,
                      help="environment steps for random / medium / expert (default: the recipe's, 1,000,000)")
    make.add_argument("--seed", type=int, default=0, help="environment and policy seed (default 0)")
    make.add_argument("--overwrite", action="store_true", help="regenerate datasets that exist")
    card = commands.add_parser("card", help="print dataset cards")
    card.add_argument("names", nargs="+")
    args = parser.parse_args(argv)

    try:
        if args.command == "list":
            for dataset_id, recipe in DATASET_RECIPES.items():
                status = f"generated ({dataset_card(dataset_id)['num_transitions']:,} transitions)" \
                    if dataset_exists(dataset_id) else "absent"
                size = f"{recipe.num_steps:,} steps" if recipe.num_steps else recipe.kind
                print(f"{dataset_id:38s} {recipe.env_id:15s} {recipe.kind:8s} {size:18s} {status}")
            return 0
        ids = _ids(args.names)
        if args.command == "card":
            for dataset_id in ids:
                print(format_card(dataset_card(dataset_id)))
            return 0
        for dataset_id in ids:
            if dataset_exists(dataset_id) and not args.overwrite:
                print(f"{dataset_id} exists; leaving it (pass --overwrite to regenerate).")
            else:
                recipe = DATASET_RECIPES[dataset_id]
                num_steps = args.num_steps if recipe.kind in ("random", "policy") else None
                start = time.perf_counter()
                make_dataset(dataset_id, num_steps=num_steps, seed=args.seed, overwrite=args.overwrite,
                             progress=True)
                print(f"{dataset_id} generated in {time.perf_counter() - start:.0f} s")
            print(format_card(dataset_card(dataset_id)))
        return 0
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
