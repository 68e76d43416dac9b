"""Deterministic dataset generation (issue 28): the same recipe and seed give byte-identical data whatever the thread
count, BLAS kernel or numpy SIMD path, and ``python -m cmbrl.datasets verify`` catches one changed reward.

Generation runs in fresh subprocesses (thread counts and BLAS kernels are fixed when numpy / torch load). Their
checksums must equal the ones committed here: a change to these constants is a change of every cmbrl dataset, so it
needs a new ``GENERATOR_VERSION`` and regenerated published checksums (``docs/datasets_checksums.md``).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from cmbrl.datasets import checksums as checksums_module  # load_checksums is looked up there (patched below)
from cmbrl.components.datasets import (ACTION_GRID, CHECKSUM_FIELDS, CHECKSUM_TABLE_MARKERS, DATASET_RECIPES,
                                       checksum_table, dataset_card, dataset_checksum, format_card, load_checksums,
                                       load_dataset, quantize_action, update_checksum_table, verify_dataset)
from cmbrl.datasets.__main__ import main

NUM_STEPS = 2000
# SHA-256 (CHECKSUM_FIELDS order) of `make hopper-random` / `make hopper-medium` with --num-steps 2000 --seed 0.
EXPECTED = {
    "cmbrl/hopper/random-v0": "d478e6a183018f611d92d0bafaa9b3e8ff3ef7d2c8ad6eeaad1c25110df8b22c",
    "cmbrl/hopper/medium-v0": "cd634d7aff5bea132f6b6d93e98011f3b830335773a8a80a78348e23ee00a254",
}

_GENERATE = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from cmbrl.datasets.__main__ import main
for name in ("hopper-random", "hopper-medium"):
    assert main(["make", name, "--num-steps", sys.argv[2]]) == 0
"""


def _dispatched_numpy_features() -> str:
    """numpy's runtime-dispatched SIMD targets (disabling them all selects the baseline loops, e.g. for tanh)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:
        return ""
    return ",".join(feature for feature in __cpu_dispatch__ if __cpu_features__.get(feature))


def _generate(root: Path, threads: int, extra_env: dict[str, str]) -> None:
    env = {**os.environ, "MINARI_DATASETS_PATH": str(root), "OPENBLAS_NUM_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **extra_env}
    result = subprocess.run([sys.executable, "-c", _GENERATE, str(threads), str(NUM_STEPS)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """Two Minari roots with the same two small recipes, generated in fresh processes that differ in thread count
    (1 vs 3), OpenBLAS kernel (the CPU's vs ``OPENBLAS_CORETYPE=Prescott``) and numpy SIMD path (dispatched vs
    baseline): what differs between machines."""
    roots = {"one thread": tmp_path_factory.mktemp("minari_1"), "three threads, other kernels":
             tmp_path_factory.mktemp("minari_3")}
    _generate(roots["one thread"], 1, {})
    _generate(roots["three threads, other kernels"], 3,
              {"OPENBLAS_CORETYPE": "Prescott", "NPY_DISABLE_CPU_FEATURES": _dispatched_numpy_features()})
    return roots


def test_generation_is_identical_across_threads_and_kernels(generated, monkeypatch):
    checksums = {}
    for label, root in generated.items():
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
        checksums[label] = {dataset_id: dataset_checksum(dataset_id)["sha256"] for dataset_id in EXPECTED}
    assert checksums["one thread"] == checksums["three threads, other kernels"] == EXPECTED
    card = dataset_card("cmbrl/hopper/medium-v0")
    assert card["generator"] == checksums_module.GENERATOR_VERSION and card["num_transitions"] == NUM_STEPS
    actions = load_dataset("cmbrl/hopper/medium-v0")["action"].double().numpy()
    np.testing.assert_allclose(actions / ACTION_GRID, np.rint(actions / ACTION_GRID), atol=0.05)  # on the grid


def _cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def test_verify_passes_untouched_and_names_the_changed_reward(generated, tmp_path, monkeypatch):
    root = tmp_path / "minari"
    shutil.copytree(generated["one thread"] / "cmbrl" / "hopper" / "random-v0", root / "cmbrl" / "hopper" / "random-v0")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    reference = tmp_path / "reference.json"
    code, text = _cli(["checksum", "hopper-random", "--output", str(reference)])
    assert code == 0 and EXPECTED["cmbrl/hopper/random-v0"] in text
    document = json.loads(reference.read_text())
    assert document["fields"] == dict(CHECKSUM_FIELDS)
    assert (tmp_path / "reference_episodes.pt").is_file()

    code, text = _cli(["verify", "hopper-random", "--reference", str(reference)])
    assert code == 0 and "OK" in text, text

    num_episodes = document["datasets"]["cmbrl/hopper/random-v0"]["num_episodes"]
    episode = num_episodes // 2
    with h5py.File(root / "cmbrl" / "hopper" / "random-v0" / "data" / "main_data.hdf5", "r+") as file:
        file[f"episode_{episode}/rewards"][1] += 1e-9  # one reward, barely changed
    code, text = _cli(["verify", "hopper-random", "--reference", str(reference)])
    assert code == 1, text
    assert f"first differing episode {episode}, field rewards " in text and "MISMATCH" in text, text
    result = verify_dataset("cmbrl/hopper/random-v0", reference=reference)
    assert not result.ok and (result.episode, result.fields) == (episode, ("rewards",))


def test_verify_without_a_dataset_or_a_published_checksum(tmp_path, monkeypatch):
    code, text = _cli(["verify", "hopper-medium"])
    assert code == 2 and "not generated" in text and "python -m cmbrl.datasets make hopper-medium" in text
    monkeypatch.setattr(checksums_module, "load_checksums", lambda path=None: {})
    monkeypatch.setattr("cmbrl.datasets.__main__.load_checksums", lambda path=None: {})
    assert _cli(["make", "hopper-random", "--num-steps", "50"])[0] == 0
    code, text = _cli(["verify", "hopper-random"])
    assert code == 2 and "no published checksum for hopper-random" in text
    code, text = _cli(["card", "hopper-random"])
    assert code == 0 and "published sha256: none" in text


def test_load_dataset_warns_on_data_unlike_the_published(generated, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(generated["one thread"]))
    dataset_id = "cmbrl/hopper/random-v0"
    published = {"sha256": "0" * 64, "num_episodes": 1, "num_transitions": NUM_STEPS, "seed": 0,
                 "generator": checksums_module.GENERATOR_VERSION}
    monkeypatch.setattr(checksums_module, "load_checksums", lambda path=None: {dataset_id: published})
    for _ in range(2):  # computing the checksum (first load), then from the load cache
        with pytest.warns(UserWarning, match=r"differs from the published data.*make hopper-random --overwrite"):
            load_dataset(dataset_id)
    card = dataset_card(dataset_id, checksums=True)
    assert card["sha256"] == EXPECTED[dataset_id] and "DIFFERS" in format_card(card)
    published["sha256"] = EXPECTED[dataset_id]
    with warnings_as_errors():
        load_dataset(dataset_id)  # equal: silent
    published.update(sha256="0" * 64, generator=checksums_module.GENERATOR_VERSION + 1)  # made by an older generator
    with pytest.warns(UserWarning, match=r"older cmbrl.*make hopper-random --overwrite"):
        load_dataset(dataset_id)
    published.update(generator=checksums_module.GENERATOR_VERSION, num_transitions=1_000_000)  # other settings: silent
    with warnings_as_errors():
        load_dataset(dataset_id)


@contextlib.contextmanager
def warnings_as_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


def test_quantize_action_and_the_published_checksums():
    low, high = -np.ones(3), np.ones(3)
    action = quantize_action(np.array([0.12345649, -0.99999951, 1.5]), low, high)
    assert action.dtype == np.float32
    np.testing.assert_array_equal(action, np.array([0.123456, -1.0, 1.0], dtype=np.float32))
    published = load_checksums()
    assert list(published) == list(DATASET_RECIPES)  # every recipe has a published checksum
    for dataset_id, entry in published.items():
        assert len(entry["sha256"]) == 64 and entry["generator"] == checksums_module.GENERATOR_VERSION
        assert entry["seed"] == 0 and entry["num_transitions"] >= 50_000
        assert checksums_module._load_episode_tags(None, dataset_id).shape == (entry["num_episodes"],
                                                                               len(CHECKSUM_FIELDS))


def test_the_docs_table_is_generated_from_the_shipped_checksums(tmp_path):
    document = Path(__file__).resolve().parents[1] / "docs" / "datasets_checksums.md"
    begin, end = CHECKSUM_TABLE_MARKERS
    table = document.read_text().split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == checksum_table(), ("docs/datasets_checksums.md is stale: python -m cmbrl.datasets checksum-table "
                                       "--update docs/datasets_checksums.md")
    for dataset_id in DATASET_RECIPES:  # every recipe has a row, published or not
        assert f"`{dataset_id}`" in table
    copy = tmp_path / "page.md"
    copy.write_text(f"intro\n{begin}\nold\n{end}\noutro\n")
    assert update_checksum_table(copy) and copy.read_text() == f"intro\n{begin}\n\n{checksum_table()}\n\n{end}\noutro\n"
    assert not update_checksum_table(copy)
