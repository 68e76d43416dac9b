"""Command line for cmbrl's datasets.

    python -m cmbrl.datasets list                                  # recipes, and which are generated
    python -m cmbrl.datasets make hopper-medium-replay             # generate (skips datasets that exist)
    python -m cmbrl.datasets make all                              # all fifteen D4RL-recipe datasets
    python -m cmbrl.datasets make all --backend ray                # the same, one Ray task per recipe
    python -m cmbrl.datasets make hopper-random --num-steps 100000 --overwrite
    python -m cmbrl.datasets card walker2d-medium-expert           # print a dataset card
    python -m cmbrl.datasets verify all                            # recompute checksums, compare with the published
    python -m cmbrl.datasets checksum hopper-random --output ref.json  # compute checksums (and write a reference)
    python -m cmbrl.datasets checksum-table                        # the published checksums, as markdown

Names are D4RL style (``<env>-<name>``, e.g. ``halfcheetah-medium-expert``) or full Minari ids
(``cmbrl/halfcheetah/medium-expert-v0``). Datasets go to the Minari root (``$MINARI_DATASETS_PATH``, default
``~/.minari/datasets``). ``make`` is idempotent: an existing dataset is left alone (its card is printed) unless
``--overwrite`` is given. Generation is deterministic: the same recipe and seed give byte-identical data whatever the
thread count, BLAS kernel or SIMD path (docs/datasets_checksums.md); ``verify`` recomputes a dataset's SHA-256 (over
the arrays, in the canonical order of ``cmbrl.datasets.CHECKSUM_FIELDS``) and compares it with the checksum
published in ``cmbrl/components/data/checksums.json`` (or ``--reference FILE``). Exit status of ``verify``: 0 all
equal, 1 a mismatch (the message names the first differing episode and field), 2 a dataset not generated or without a
published checksum (with ``all``, those are listed and skipped). ``--backend ray`` (``pip install "cmbrl[ray]"``)
generates the recipes in parallel on a local Ray cluster or the one at ``--address`` (see :mod:`cmbrl.datasets._ray`);
the data are the same as the local backend's.
"""
from __future__ import annotations

import argparse
import sys
import time

from cmbrl.datasets import (DATASET_RECIPES, checksum_table, dataset_card, dataset_checksum, dataset_exists,
                            format_card, load_checksums, make_dataset, resolve_dataset_id, update_checksum_table,
                            verify_dataset, write_checksums)


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
    verify = commands.add_parser("verify", help="recompute checksums and compare with the published ones (exit 1 on a "
                                 "mismatch)")
    verify.add_argument("names", nargs="+", help="dataset names, Minari ids, or 'all' (the generated ones)")
    verify.add_argument("--reference", help="checksum file to compare with (written by `checksum --output`; default: "
                        "the published cmbrl/components/data/checksums.json)")
    checksum = commands.add_parser("checksum", help="compute datasets' checksums; --output merges them into a file")
    checksum.add_argument("names", nargs="+", help="dataset names, Minari ids, or 'all' (the generated ones)")
    checksum.add_argument("--output", help="checksum file to write or update (and <stem>_episodes.pt beside it)")
    table = commands.add_parser("checksum-table", help="print the published checksums as a markdown table")
    table.add_argument("--update", metavar="DOC", help="rewrite the table in DOC (docs/datasets_checksums.md) instead")
    args = parser.parse_args(argv)

    try:
        if args.command == "checksum-table":
            if args.update:
                print(f"{args.update}: {'updated' if update_checksum_table(args.update) else 'up to date'}")
            else:
                print(checksum_table())
            return 0
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
                print(format_card(dataset_card(dataset_id, checksums=True)))
            return 0
        if args.command == "verify":
            return _verify(ids, explicit=args.names != ["all"], reference=args.reference)
        if args.command == "checksum":
            return _checksum(ids, explicit=args.names != ["all"], output=args.output)
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
            print(format_card(dataset_card(dataset_id, checksums=True)))
        return 0
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _verify(ids: list[str], *, explicit: bool, reference: str | None) -> int:
    """``verify``: 1 if any dataset differs; else 2 if a named dataset (or, with ``all``, every one) could not be
    checked; else 0."""
    published = load_checksums(reference)
    mismatch = unchecked = False
    checked = 0
    for dataset_id in ids:
        if not dataset_exists(dataset_id) or dataset_id not in published:
            if not dataset_exists(dataset_id) and not explicit:
                print(f"{dataset_id}: not generated; skipped")
                continue
            try:
                verify_dataset(dataset_id, reference=reference)  # raises with the message
            except (FileNotFoundError, LookupError) as error:
                print(error.args[0], file=sys.stderr if explicit else sys.stdout)
                unchecked = unchecked or explicit
            continue
        result = verify_dataset(dataset_id, reference=reference, progress=sys.stderr.isatty())
        print(result.message, flush=True)
        mismatch, checked = mismatch or not result.ok, checked + 1
    if not explicit and checked == 0:
        print("Nothing verified: no generated dataset has a published checksum.")
    return 1 if mismatch else 2 if unchecked or checked == 0 else 0


def _checksum(ids: list[str], *, explicit: bool, output: str | None) -> int:
    """``checksum``: prints each generated dataset's SHA-256; with ``output``, writes them into that file."""
    absent = [dataset_id for dataset_id in ids if not dataset_exists(dataset_id)]
    if absent and explicit:
        raise FileNotFoundError(f"not generated: {absent}; generate them first (python -m cmbrl.datasets make ...)")
    present = [dataset_id for dataset_id in ids if dataset_id not in absent]
    for dataset_id in absent:
        print(f"{dataset_id}: not generated; skipped")
    if output is not None:
        for dataset_id, entry in write_checksums(present, output, progress=sys.stderr.isatty()).items():
            print(f"{entry['sha256']}  {dataset_id}  ({entry['num_episodes']:,} episodes)")
        print(f"wrote {output}")
    else:
        for dataset_id in present:
            result = dataset_checksum(dataset_id, progress=sys.stderr.isatty())
            print(f"{result['sha256']}  {dataset_id}  ({result['num_episodes']:,} episodes)")
    return 0


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
