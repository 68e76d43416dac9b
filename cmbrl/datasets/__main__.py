"""Command line for cmbrl's datasets.

    python -m cmbrl.datasets list                                  # recipes, and which are generated
    python -m cmbrl.datasets make hopper-medium-replay             # generate (skips datasets that exist)
    python -m cmbrl.datasets make all                              # all fifteen D4RL-recipe datasets
    python -m cmbrl.datasets make all --backend ray                # the same, one Ray task per recipe
    python -m cmbrl.datasets make hopper-random --num-steps 100000 --overwrite
    python -m cmbrl.datasets card walker2d-medium-expert           # print a dataset card

Names are D4RL style (``<env>-<name>``, e.g. ``halfcheetah-medium-expert``) or full Minari ids
(``cmbrl/halfcheetah/medium-expert-v0``). Datasets go to the Minari root (``$MINARI_DATASETS_PATH``, default
``~/.minari/datasets``). ``make`` is idempotent: an existing dataset is left alone (its card is printed) unless
``--overwrite`` is given. ``--backend ray`` (``pip install "cmbrl[ray]"``) generates the recipes in parallel on a local
Ray cluster or the one at ``--address`` (see :mod:`cmbrl.datasets._ray`); the data are the same as the local backend's.
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
    make.add_argument("--backend", choices=("local", "ray"), default="local",
                      help="local: one after another in this process; ray: one Ray task per recipe (default local)")
    make.add_argument("--address", help="with --backend ray: the cluster to join (auto or ray://HOST:10001; "
                      "default: a local cluster for this command)")
    make.add_argument("--num-cpus", type=int, help="with --backend ray: CPUs of the local cluster (default: all)")
    make.add_argument("--cpus-per-task", type=int, default=1, help="with --backend ray: CPUs (and torch threads) "
                      "per recipe (default 1)")
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
        if args.backend != "ray" and (args.address or args.num_cpus is not None or args.cpus_per_task != 1):
            raise ValueError(f"--address, --num-cpus and --cpus-per-task only apply to --backend ray "
                             f"(got --backend {args.backend})")
        if args.backend == "ray":
            return _make_on_ray(ids, args)
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


def _make_on_ray(ids: list[str], args: argparse.Namespace) -> int:
    """``make --backend ray``: the absent (or, with --overwrite, all) datasets as Ray tasks, then every card."""
    try:
        from cmbrl.datasets._ray import make_datasets  # imports ray: only for this backend
    except ImportError as error:
        raise ValueError(f"--backend ray needs Ray ({error}): pip install 'cmbrl[ray]'") from None

    todo = [dataset_id for dataset_id in ids if args.overwrite or not dataset_exists(dataset_id)]
    for dataset_id in ids:
        if dataset_id not in todo:
            print(f"{dataset_id} exists; leaving it (pass --overwrite to regenerate).")

    def on_done(dataset_id: str, seconds: float | None, error: str) -> None:
        print(f"{dataset_id} generated in {seconds:.0f} s" if error == "" else f"{dataset_id} FAILED: {error}",
              flush=True)

    start = time.perf_counter()
    seconds = make_datasets(todo, num_steps=args.num_steps, seed=args.seed, overwrite=args.overwrite,
                            address=args.address, num_cpus=args.num_cpus, cpus_per_task=args.cpus_per_task,
                            on_done=on_done) if todo else {}
    if todo:
        print(f"{len(seconds)} dataset(s) in {time.perf_counter() - start:.0f} s wall "
              f"({sum(s for s in seconds.values() if s is not None):.0f} s of tasks)")
    for dataset_id in ids:
        if dataset_exists(dataset_id):
            print(format_card(dataset_card(dataset_id)))
    return 1 if any(s is None for s in seconds.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
