"""``python -m cmbrl.datasets make ... --backend ray``: the recipes as Ray tasks (imported only for that backend).

Each recipe is one Ray task, a single process that calls :func:`cmbrl.datasets.make_dataset` exactly as the local
backend does (same arguments, same seed), so the data are the same. A ``"combine"`` recipe (``medium-expert``) is
handed its sources' tasks as arguments, so Ray starts it only when they are done; an absent source that was not
asked for is generated first with the recipe's own size, as the local backend does. Needs ``pip install
"cmbrl[ray]"``. On a multi-node cluster the Minari root (``$MINARI_DATASETS_PATH``) must be a filesystem every node
shares, since each node writes the datasets it generates there.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import ray

from cmbrl.datasets import DATASET_RECIPES, dataset_exists, make_dataset

__all__ = ["make_datasets"]


def _make(dataset_id: str, num_steps: int | None, seed: int, overwrite: bool, threads: int, *sources) -> float:
    """The task: generates ``dataset_id``; ``sources`` are the finished source tasks' results (only waited for).

    Returns the generation's wall time in seconds.
    """
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    make_dataset(dataset_id, num_steps=num_steps, seed=seed, overwrite=overwrite, progress=False)
    return time.perf_counter() - start


def make_datasets(dataset_ids: Sequence[str], *, num_steps: int | None = None, seed: int = 0, overwrite: bool = False,
                  address: str | None = None, num_cpus: int | None = None, cpus_per_task: int = 1,
                  on_done: Callable[[str, float | None, str], None] | None = None) -> dict[str, float | None]:
    """Generates ``dataset_ids`` (keys of :data:`DATASET_RECIPES`) as parallel Ray tasks.

    Args:
        dataset_ids: the recipes to (re)generate; an absent source of a ``"combine"`` recipe is added.
        num_steps: environment steps of ``"random"`` and ``"policy"`` recipes asked for (None: the recipe's).
        seed: the recipes' seed (default 0).
        overwrite: regenerate the datasets asked for (not added sources).
        address: the Ray cluster to join (``"auto"``, ``"ray://HOST:10001"``); None starts a local cluster for this
            call and shuts it down at the end (an already initialised Ray in this process is used as is).
        num_cpus: CPUs of that local cluster (None: all cores); only without ``address``.
        cpus_per_task: CPUs reserved per recipe, also its torch threads (>= 1).
        on_done: called as each task ends with ``(dataset_id, seconds or None, error text or "")``.

    Returns:
        ``{dataset_id: seconds}``, None for a recipe that failed.

    Raises:
        ValueError: an unknown recipe (the message lists the registered ones), ``cpus_per_task < 1``, or
            ``num_cpus`` together with ``address``.
    """
    unknown = [dataset_id for dataset_id in dataset_ids if dataset_id not in DATASET_RECIPES]
    if unknown:
        raise ValueError(f"No cmbrl recipe for {unknown}; registered: {sorted(DATASET_RECIPES)}.")
    if cpus_per_task < 1:
        raise ValueError(f"cpus_per_task must be >= 1, got {cpus_per_task}")
    if num_cpus is not None and address is not None:
        raise ValueError(f"num_cpus={num_cpus} sizes a local cluster; the cluster at {address!r} has its own")
    plan: dict[str, int | None] = {}  # dataset id -> num_steps, sources before the recipes that combine them
    for dataset_id in dataset_ids:
        for source in DATASET_RECIPES[dataset_id].sources:
            if source not in dataset_ids and not dataset_exists(source):
                plan.setdefault(source, None)  # as make_dataset's own combine step: the recipe's size
        kind = DATASET_RECIPES[dataset_id].kind
        plan[dataset_id] = num_steps if kind in ("random", "policy") else None

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False)
    try:
        task = ray.remote(num_cpus=cpus_per_task)(_make)
        refs: dict[str, ray.ObjectRef] = {}
        for dataset_id, steps in plan.items():  # sources first, so a combine task can wait on their refs
            sources = [refs[source] for source in DATASET_RECIPES[dataset_id].sources if source in refs]
            refs[dataset_id] = task.remote(dataset_id, steps, seed, overwrite and dataset_id in dataset_ids,
                                           cpus_per_task, *sources)
        names = {ref: dataset_id for dataset_id, ref in refs.items()}
        seconds: dict[str, float | None] = {}
        pending = list(refs.values())
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            dataset_id = names[done[0]]
            try:
                seconds[dataset_id], error = ray.get(done[0]), ""
            except Exception as failure:  # noqa: BLE001 - a failing recipe is reported, the others go on
                seconds[dataset_id], error = None, f"{type(failure).__name__}: {failure}"
            if on_done is not None:
                on_done(dataset_id, seconds[dataset_id], error)
    finally:
        if started:
            ray.shutdown()
    return seconds
