"""The Ray backend (``pip install "cmbrl[ray]"``): benchmarks/learning.py's cells as Ray Tune trials on a local
cluster, and ``python -m cmbrl.datasets make --backend ray``. Skipped without ray; each test starts its own local
cluster (~10 s each on 2 cores)."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("ray.tune")

from test_learning_benchmark import DATA_AVERAGE, DATASET, calls, result_path, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SLOW_EXAMPLE = textwrap.dedent('''
    """A fake example that evaluates every --eval-every steps (TorchRL CSV logger file), --delay s apart, resumes
    from its checkpoint, and with FAKE_HOLD set holds seed 1 after its first evaluation while that file exists."""
    import argparse, json, os, time
    from pathlib import Path

    parser = argparse.ArgumentParser()
    for flag in ("--dataset", "--out"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--num-steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-episodes", type=int, default=1)
    parser.add_argument("--bias", type=float, default=0.0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    out = Path(args.out)
    (out / "pid.txt").write_text(str(os.getpid()))
    ckpt = out / "checkpoint.json"
    step, history = (json.loads(ckpt.read_text()) if ckpt.exists() else (0, []))
    with open(Path(__file__).parent / "calls.txt", "a") as f:
        f.write(f"{Path(__file__).stem} {args.seed} {args.bias} from {step}\\n")
    scalars = out / "logs" / f"fake_seed{args.seed}" / "scalars"
    scalars.mkdir(parents=True, exist_ok=True)
    while step < args.num_steps:
        time.sleep(args.delay)
        step += args.eval_every
        history.append({"step": step, "normalized_score": args.bias + step / 10})
        with open(scalars / "normalized_score.csv", "a") as f:
            f.write(f"{step},{history[-1]['normalized_score']}\\n")
        ckpt.write_text(json.dumps([step, history]))
        while args.seed == 1 and os.environ.get("FAKE_HOLD") and Path(os.environ["FAKE_HOLD"]).exists():
            time.sleep(0.1)
    (out / "result.json").write_text(json.dumps({"normalized_score": history[-1]["normalized_score"],
                                                 "history": history, "args": vars(args), "wall_time_s": 0.5}))
''')


@pytest.fixture
def slow_examples(tmp_path):
    folder = tmp_path / "slow_examples"
    folder.mkdir()
    (folder / "fake.py").write_text(SLOW_EXAMPLE)
    return folder


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")  # a zombie is dead


def wait_for(condition, seconds: float, what: str):
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.2)


def run_in_own_group(command, env, timeout=600) -> subprocess.CompletedProcess:
    """Runs ``command`` in a new process group and ends what is left of the group (a killed driver's Ray agents)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_ray_trials_write_the_same_outputs_as_the_local_backend(learning, examples, tmp_path):
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    assert run(learning, examples, local, "--jobs", "2") == 0
    local_calls = calls(examples)
    (examples / "calls.txt").unlink()
    assert run(learning, examples, ray_out, "--backend", "ray", "--num-cpus", "2") == 0
    assert sorted(calls(examples)) == sorted(local_calls)  # the same commands, each once
    for name in ("table.md", "results.csv", "curves.csv"):  # numbers equal (the fake's wall time is fixed)
        assert (ray_out / name).read_text() == (local / name).read_text(), name
    for algo in ("bc", "fake"):
        for seed in (0, 1):
            assert json.loads(result_path(ray_out, algo, seed).read_text()) == {
                **json.loads(result_path(local, algo, seed).read_text()),
                "args": {**json.loads(result_path(local, algo, seed).read_text())["args"],
                         "out": str(result_path(ray_out, algo, seed).parent)}}
    # every evaluation was a Tune report: steps 20 and 40, then the outcome
    trial_results = sorted((ray_out / "_tune").glob("cells-*/fake_test_fake-v0_seed1_*/result.json"))
    assert len(trial_results) == 1
    reports = [json.loads(line) for line in trial_results[0].read_text().splitlines()]
    assert [(r["step"], r["normalized_score"]) for r in reports] == [(20, 12.0), (40, 14.0), (40, 14.0)]
    assert reports[-1]["cell_ok"] is True and "cell_ok" not in reports[0]
    # a second invocation hands nothing to Ray
    assert run(learning, examples, ray_out, "--backend", "ray", "--num-cpus", "2") == 0
    assert len(calls(examples)) == 4


def test_asha_stops_the_lagging_variant_and_its_script(learning, slow_examples, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--algos", "fake", "--datasets", DATASET, "--seeds", "0", "--budget", "smoke", "--num-steps", "100",
            "--eval-every", "10", "--set", "fake:delay=0.3", "--sweep", "fake:bias=10,0", "--out", str(out),
            "--examples-dir", str(slow_examples), "--no-prepare", "--backend", "ray", "--num-cpus", "1",
            "--scheduler", "asha"]
    assert learning.main(argv, reference=lambda dataset_id: DATA_AVERAGE) == 0  # a stopped cell is no failure
    good, bad = (out / f"fake@bias={b}" / "test_fake-v0" / "seed0" for b in (10, 0))
    assert json.loads((good / "result.json").read_text())["normalized_score"] == 20.0
    assert not (bad / "result.json").exists()
    evaluations = (bad / "logs" / "fake_seed0" / "scalars" / "normalized_score.csv").read_text().splitlines()
    assert 1 <= len(evaluations) < 10  # stopped mid-run, on the evaluations reported while it ran
    wait_for(lambda: not alive(int((bad / "pid.txt").read_text())), 20, "the stopped cell's script to end")
    with open(out / "results.csv") as f:
        assert [(r["algo"], r["status"]) for r in csv.DictReader(f) if r["algo"] != "bc"] == [("fake@bias=10", "done"),
                                                                           ("fake@bias=0", "stopped")]
    table = (out / "table.md").read_text()
    assert "| fake@bias=0 | stopped early (scheduler) |" in table and "| fake@bias=10 | 20.0 ± 0.0 |" in table
    assert "stopped fake@bias=0 test/fake-v0 seed 0" in capsys.readouterr().out
    # ASHA compares every trial with each other: one algorithm and one dataset per run
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _ray_backend

    cells = [learning.make_cell("fake", dataset, 0, out, slow_examples, {}) for dataset in ("a/b-v0", "c/d-v0")]
    with pytest.raises(ValueError, match="one algorithm .* and one dataset; got"):
        _ray_backend.run_cells(cells, out, scheduler="asha")
    with pytest.raises(ValueError, match="scheduler 'hyperband': allowed"):
        _ray_backend.run_cells(cells, out, scheduler="hyperband")


def test_a_killed_sweep_resumes_without_rerunning_finished_cells(learning, slow_examples, tmp_path, capsys):
    out, hold = tmp_path / "runs", tmp_path / "hold"
    hold.touch()
    argv = ["--algos", "fake", "--datasets", DATASET, "--seeds", "0", "1", "--budget", "smoke", "--num-steps", "30",
            "--eval-every", "10", "--set", "fake:delay=0.2", "--out", str(out), "--examples-dir", str(slow_examples),
            "--no-prepare", "--backend", "ray", "--num-cpus", "2"]
    log = open(tmp_path / "driver.txt", "w")
    driver = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "learning.py"), *argv], stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "FAKE_HOLD": str(hold)},
                              start_new_session=True)  # its process group: the cluster it starts, not the trials'

    seed1 = out / "fake" / "test_fake-v0" / "seed1"
    try:
        wait_for(lambda: result_path(out, "fake", 0).exists() and (seed1 / "checkpoint.json").exists(), 120,
                 "seed 0 to finish and seed 1 to evaluate once")
    finally:
        driver.kill()  # SIGKILL: no chance to clean up
        driver.wait()
    try:
        wait_for(lambda: not alive(int((seed1 / "pid.txt").read_text())), 30, "the killed run's cell script to end")
    finally:  # Ray's agents outlive a SIGKILLed driver of a local cluster: end what is left of its process group
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not (seed1 / "result.json").exists()
    hold.unlink()

    assert learning.main(argv, reference=lambda dataset_id: DATA_AVERAGE) == 0
    assert "restoring the Tune experiment" in capsys.readouterr().out
    first, again = calls(slow_examples)[:2], calls(slow_examples)[2:]  # the two seeds started side by side
    assert sorted(first) == ["fake 0 0.0 from 0", "fake 1 0.0 from 0"]
    assert again == ["fake 1 0.0 from 10"]  # only the interrupted cell, resumed from its checkpoint
    with open(out / "results.csv") as f:
        assert [(r["seed"], r["status"], r["normalized_score"]) for r in csv.DictReader(f) if r["algo"] == "fake"] == [
            ("0", "done", "3.0"), ("1", "done", "3.0")]


def test_datasets_make_on_ray_writes_the_local_backends_data(tmp_path, monkeypatch):
    import minari
    import numpy as np

    names = ["hopper-medium", "hopper-expert", "hopper-medium-expert"]  # the last combines the first two
    runs = {}
    for backend in ("local", "ray"):
        env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / backend)}
        extra = ["--backend", "ray", "--num-cpus", "2"] if backend == "ray" else []
        runs[backend] = run_in_own_group([sys.executable, "-m", "cmbrl.datasets", "make", *names, "--num-steps",
                                          "300", *extra], env=env)
        assert runs[backend].returncode == 0, runs[backend].stderr[-2000:]
    assert "3 dataset(s) in" in runs["ray"].stdout
    assert runs["ray"].stdout.count("Dataset card:") == 3
    for name in ("medium-v0", "expert-v0", "medium-expert-v0"):
        datasets = {}
        for backend in ("local", "ray"):
            monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / backend))
            datasets[backend] = [(e.observations, e.actions, e.rewards)
                                 for e in minari.load_dataset(f"cmbrl/hopper/{name}").iterate_episodes()]
        assert len(datasets["ray"]) == len(datasets["local"]) > 0
        for a, b in zip(datasets["ray"], datasets["local"]):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
