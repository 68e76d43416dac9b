"""The examples' --device / --compile / --cudagraphs (issue 26): checked before any data or fit, recorded in
result.json, tiny compiled runs end to end, checkpoints that resume with map_location.

The compiled runs use ``--compile-backend aot_eager`` (dynamo and AOTAutograd without inductor's code generation:
seconds instead of up to a minute per compile on 2 cores); the inductor runs are marked ``slow`` (``pytest -m
slow``), the CUDA ones ``cuda`` (skipped without a GPU).
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmbrl import make_dataset
from cmbrl.components import training
from cmbrl.components.cli import field_helps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import awac  # noqa: E402
import bc  # noqa: E402
import combo  # noqa: E402
import finetune  # noqa: E402
import mb2po  # noqa: E402
import mopo  # noqa: E402

DATASET = "cmbrl/hopper/medium-v0"
CUDA = torch.cuda.is_available()
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]
FAST_COMPILE = ["--compile", "1", "--compile-backend", "aot_eager"]
TINY = {  # a few updates, one rollout / iteration, one evaluation episode: the pipeline, not the learning
    "mopo": ["--num-steps", "20", "--rollout-every", "20", "--rollout-batch-size", "50", "--eval-every", "20",
             "--eval-episodes", "1", "--ensemble-max-epochs", "1"],
    "combo": ["--num-steps", "20", "--rollout-every", "20", "--rollout-batch-size", "50", "--eval-every", "20",
              "--eval-episodes", "1", "--ensemble-max-epochs", "1", "--num-action-samples", "2"],
    "mb2po": ["--awac-steps", "10", "--iterations", "1", "--updates-per-iteration", "10", "--rollout-batch-size",
              "50", "--eval-every", "1", "--eval-episodes", "1", "--ensemble-max-epochs", "1"],
    "finetune": ["--offline-steps", "10", "--num-steps", "8", "--eval-every", "4", "--eval-episodes", "1",
                 "--num-candidates", "8", "--explorers", "o3f"],
}
MODULES = {"mopo": mopo, "combo": combo, "awac": awac, "mb2po": mb2po, "finetune": finetune, "bc": bc}


@pytest.fixture(scope="module")
def minari_dir(tmp_path_factory):
    """One small hopper dataset for the whole module (2,000 steps of the shipped policy)."""
    folder = tmp_path_factory.mktemp("minari")
    before = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(folder)
    try:
        make_dataset(DATASET, num_steps=2_000, seed=0)
    finally:
        if before is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = before
    return folder


@pytest.fixture
def dataset(minari_dir, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_dir))
    return DATASET


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    """The model-based runs share one cached 1-epoch ensemble fit."""
    return tmp_path_factory.mktemp("ensembles")


def run(script: str, *argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "examples" / f"{script}.py"), "--progress", "0", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)


def tiny(script: str, dataset: str, ensemble_dir: Path, out: Path) -> list[str]:
    argv = ["--dataset", dataset, "--out", str(out), *TINY[script]]
    if script != "finetune":
        argv += ["--ensemble-dir", str(ensemble_dir)]
    if script == "finetune":
        argv += ["--threads", "1"]
    return argv


# --------------------------------------------------------------------------------------------------------------
# flags refused before any data or fit


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: --device cuda is valid here")
@pytest.mark.parametrize("name", list(MODULES))
def test_device_cuda_without_cuda_fails_before_the_data(name, tmp_path):
    module = MODULES[name]
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"--device 'cuda'.*available: cpu"):
        module.main(module.Args(dataset="cmbrl/no-such/dataset-v0", out=str(out), device="cuda"))
    assert not out.exists()  # refused before the output folder, the data and the ensemble fit


@pytest.mark.parametrize("name", list(MODULES))
def test_bad_device_and_cudagraphs_on_cpu_are_refused_naming_the_flag(name, tmp_path):
    module = MODULES[name]
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"--device 'tpu'.*auto, cpu, cuda or cuda:N"):
        module.main(module.Args(dataset="cmbrl/no-such/dataset-v0", out=str(out), device="tpu"))
    with pytest.raises(SystemExit, match=r"--cudagraphs 1 needs a CUDA device.*--device cpu is cpu"):
        module.main(module.Args(dataset="cmbrl/no-such/dataset-v0", out=str(out), device="cpu", cudagraphs=1))
    with pytest.raises(SystemExit, match="--compile must be 0 or 1, got 2"):
        module.main(module.Args(dataset="cmbrl/no-such/dataset-v0", out=str(out), device="cpu", compile=2))
    assert not out.exists()


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: --device cuda is valid here")
def test_device_cuda_on_the_command_line_exits_with_the_message(tmp_path):
    result = run("mopo", "--dataset", DATASET, "--device", "cuda", "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "--device 'cuda'" in result.stderr and "Use --device cpu" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_every_device_flag_is_documented_and_parsed():
    learners = ("mopo", "combo", "awac", "mb2po", "finetune", "bc")
    for name in (*learners, "calibration", "policy_in_real_env"):  # the analysis scripts train nothing: --device
        text = (ROOT / "examples" / f"{name}.py").read_text()
        for flag in ("device", "compile", "compile_backend", "cudagraphs") if name in learners else ("device",):
            field = f"    {flag}: "
            assert field in text, (name, flag)
            after = text[text.index(field):].splitlines()[1].strip()
            assert after.startswith('"""'), (name, flag, "the field's docstring is its --help text")
    args = mopo.parse_args(["--device", "cpu", "--compile", "1", "--compile-backend", "aot_eager",
                            "--cudagraphs", "0"])
    assert (args.device, args.compile, args.compile_backend, args.cudagraphs) == ("cpu", 1, "aot_eager", 0)
    assert mopo.Args().device == "auto" and mopo.Args().compile == 0 and mopo.Args().cudagraphs == 0


def test_help_shows_each_flags_description_type_and_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        mopo.parse_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # the help panel wraps lines
    assert "MOPO (Yu et al., arXiv:2005.13239, Algorithm 2)" in text  # the script's docstring
    assert "--penalty-coef FLOAT λ; negative: OfflineRL-Kit's value for this dataset" in text
    assert "(default: -1.0)" in text and "--num-steps INT SAC gradient steps" in text
    # a docstring's indented continuation lines are folded into one paragraph
    assert "else the first 100k). MOPO fits its model on the whole dataset" in text
    for name, module in MODULES.items():  # every field of every learner has its description
        assert set(field_helps(module.Args)) == {field.name for field in dataclasses.fields(module.Args)}, name


def test_flags_keep_their_names_and_wrong_ones_name_the_flag(capsys):
    args = mopo.parse_args(["--penalty-coef", "2.5", "--num-steps", "10", "--progress", "0", "--compile", "1",
                            "--target-entropy", "-3"])
    assert (args.penalty_coef, args.num_steps, args.progress, args.compile, args.target_entropy) == (
        2.5, 10, 0, 1, "-3")
    assert bc.parse_args(["--no-normalize"]).normalize is False and bc.parse_args([]).normalize is True
    with pytest.raises(SystemExit) as exit_:
        mopo.parse_args(["--num-step", "10"])  # misspelt: the close match is offered
    error = " ".join(capsys.readouterr().err.split())
    assert exit_.value.code == 2 and "--num-step" in error and "--num-steps INT" in error
    with pytest.raises(SystemExit):
        mopo.parse_args(["--num-steps", "ten"])
    error = " ".join(capsys.readouterr().err.split())
    assert "--num-steps" in error and "'ten'" in error


# --------------------------------------------------------------------------------------------------------------
# the helpers of components/training.py


def test_training_device_helpers():
    args = mopo.Args(device="cpu")
    assert training.resolve_run_device(args) == torch.device("cpu")
    assert training.compile_setting(args) is False
    assert training.compile_setting(mopo.Args(compile=1)) is True  # inductor: torch.compile's default
    assert training.compile_setting(mopo.Args(compile=1, compile_backend="aot_eager")) == {"backend": "aot_eager"}
    assert training.learner_kwargs(args, torch.device("cpu")) == {"device": torch.device("cpu"), "compile": False,
                                                                  "cudagraphs": False}
    record = training.device_record("cpu")
    assert record == {"device": "cpu", "torch": torch.__version__, "cuda": torch.version.cuda}
    auto = training.resolve_run_device(mopo.Args())
    assert auto == (torch.device("cuda", torch.cuda.current_device()) if CUDA else torch.device("cpu"))


def test_rng_state_round_trip_through_a_mapped_checkpoint(tmp_path):
    torch.manual_seed(5)
    state = training.rng_state("cpu")
    assert set(state) == {"rng"}
    expected = torch.rand(3)
    torch.save({"x": torch.ones(2), **state}, tmp_path / "ckpt.pt")
    loaded = training.load_checkpoint(tmp_path / "ckpt.pt", "cpu")
    assert loaded["x"].device == torch.device("cpu")
    torch.rand(7)
    training.restore_rng_state(loaded, "cpu")
    assert torch.equal(torch.rand(3), expected)


def test_metric_sums_keep_tensors_until_read():
    sums = {}
    for value in (1.0, 2.0, 6.0):
        training.accumulate_metrics(sums, {"loss": torch.tensor(value), "alpha": value})
    assert isinstance(sums["loss"], torch.Tensor)
    assert training.mean_metrics(sums, 3) == {"loss": 3.0, "alpha": 3.0}


def test_make_eval_env_puts_tensors_on_the_device():
    env = training.make_eval_env("Hopper-v5", "cpu", seed=0)
    td = env.reset()
    assert td["observation"].dtype == torch.float32 and td["observation"].device == torch.device("cpu")
    env.close()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_make_eval_env_runs_a_policy_on_the_device(device):
    from cmbrl import SAC

    env = training.make_eval_env("Hopper-v5", device, seed=0)
    agent = SAC(11, 3, seed=0, device=device)
    returns = training.evaluate_policy(env, agent.policy, 1, max_steps=5)
    assert len(returns) == 1 and isinstance(returns[0], float)
    env.close()


# --------------------------------------------------------------------------------------------------------------
# tiny compiled runs end to end


def check_record(out: Path, script: str) -> dict:
    record = json.loads((out / "result.json").read_text())
    assert record["device"] == "cpu" and record["torch"] == torch.__version__ and "gpu" not in record
    assert all(isinstance(point["normalized_score"], float) for point in record["history"])
    if script in ("mopo", "combo"):  # the update's metrics, read at the evaluation from sync=False tensors
        assert isinstance(record["history"][-1]["loss_qvalue"], float)
        assert isinstance(record["history"][-1]["alpha"], float)
    return record


@pytest.mark.parametrize("script", ["combo", "mb2po", "finetune"])
def test_example_runs_compiled_on_cpu_and_records_the_device(script, dataset, ensemble_dir, tmp_path):
    out = tmp_path / script
    result = run(script, *tiny(script, dataset, ensemble_dir, out), "--device", "cpu", *FAST_COMPILE)
    assert result.returncode == 0, result.stderr[-3000:]
    record = check_record(out, script)
    assert (record["args"]["device"], record["args"]["compile"], record["args"]["compile_backend"]) == \
        ("cpu", 1, "aot_eager")


def test_bc_runs_compiled_and_records_the_device(dataset, tmp_path):
    out = tmp_path / "bc"
    bc.main(bc.Args(dataset=dataset, num_steps=20, eval_episodes=1, log_every=10, out=str(out), device="cpu",
                    compile=1, compile_backend="aot_eager"))
    record = json.loads((out / "result.json").read_text())
    assert record["device"] == "cpu" and record["torch"] == torch.__version__
    assert (record["args"]["compile"], record["args"]["compile_backend"]) == (1, "aot_eager")


def test_mopo_runs_compiled_then_resumes_its_checkpoint_uncompiled(dataset, ensemble_dir, tmp_path):
    out = tmp_path / "mopo"
    argv = tiny("mopo", dataset, ensemble_dir, out)
    first = run("mopo", *argv, "--device", "cpu", *FAST_COMPILE)
    assert first.returncode == 0, first.stderr[-3000:]
    record = check_record(out, "mopo")
    assert (record["args"]["compile"], record["args"]["compile_backend"]) == (1, "aot_eager")
    ckpt = torch.load(out / "checkpoint_seed0.pt", weights_only=False)
    assert ckpt["step"] == 20 and "rng" in ckpt and "cuda_rng" not in ckpt
    # --device, --compile and --cudagraphs may change on resume (a CUDA run resumes on the CPU); the checkpoint is
    # loaded with map_location
    second = run("mopo", *argv, "--num-steps", "40", "--eval-every", "20", "--device", "cpu", "--compile", "0")
    assert second.returncode == 0, second.stderr[-3000:]
    record = check_record(out, "mopo")
    assert [h["step"] for h in record["history"]] == [20, 40] and record["args"]["compile"] == 0


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_checkpoint_resumes_on_the_cpu(dataset, ensemble_dir, tmp_path):
    out = tmp_path / "mopo"
    argv = tiny("mopo", dataset, ensemble_dir, out)
    first = run("mopo", *argv, "--device", "cuda")
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads((out / "result.json").read_text())
    assert record["device"].startswith("cuda") and record["gpu"] == torch.cuda.get_device_name(0)
    ckpt = torch.load(out / "checkpoint_seed0.pt", weights_only=False, map_location="cpu")
    assert "cuda_rng" in ckpt
    second = run("mopo", *argv, "--num-steps", "40", "--eval-every", "20", "--device", "cpu")
    assert second.returncode == 0, second.stderr[-3000:]
    record = json.loads((out / "result.json").read_text())
    assert record["device"] == "cpu" and [h["step"] for h in record["history"]] == [20, 40]


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("script", ["mopo", "combo", "mb2po", "finetune"])
def test_example_runs_compiled_with_cudagraphs_on_cuda(script, dataset, ensemble_dir, tmp_path):
    out = tmp_path / script
    backend = ["--compile-backend", "inductor" if script == "mopo" else "aot_eager"]  # one inductor compile: minutes
    result = run(script, *tiny(script, dataset, ensemble_dir, out), "--device", "cuda", "--compile", "1",
                 *backend, "--cudagraphs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["device"].startswith("cuda")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["mopo", "combo", "mb2po", "finetune"])
def test_example_runs_inductor_compiled_on_cpu(script, dataset, ensemble_dir, tmp_path):
    out = tmp_path / script
    result = run(script, *tiny(script, dataset, ensemble_dir, out), "--device", "cpu", "--compile", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "result.json").read_text())
    assert record["device"] == "cpu" and record["args"]["compile_backend"] == "inductor"


# --------------------------------------------------------------------------------------------------------------
# benchmarks/learning.py --device


def test_learning_benchmark_forwards_and_records_the_device(learning, examples, tmp_path):
    import csv

    out = tmp_path / "runs"
    argv = ["--algos", "fake", "--datasets", "test/fake-v0", "--seeds", "0", "--budget", "smoke", "--num-steps", "20",
            "--eval-every", "20", "--out", str(out), "--examples-dir", str(examples), "--no-prepare"]
    assert learning.main([*argv, "--device", "cpu"], reference=lambda dataset_id: None) == 0
    calls = (examples / "calls.txt").read_text().splitlines()
    assert all(line.endswith("--device cpu") for line in calls) and len(calls) == 1  # bc: a reference row, not run
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert "device" in rows[0]  # copied from each result.json (the fake example records none)
    # auto is the examples' default: not written into the commands; a --set still overrides --device
    assert learning.main([*argv, "--rerun", "--set", "fake:device=cuda:1", "--dry-run"],
                         reference=lambda dataset_id: None) == 0
    cell = learning.make_cell("fake", "test/fake-v0", 0, out, examples,
                              learning.cell_args("fake", "test/fake-v0", "smoke",
                                                 sets=[("*", "*", "device", "cpu"),
                                                       learning.parse_set("fake:device=cuda:1")]))
    assert cell.command[-2:] == ("--device", "cuda:1")
    with pytest.raises(SystemExit):
        learning.main([*argv, "--device", "tpu"], reference=lambda dataset_id: None)
    with pytest.raises(SystemExit):  # Ray reserves no GPU for a cell without --gpus-per-trial
        learning.main([*argv, "--device", "cuda", "--backend", "ray"], reference=lambda dataset_id: None)
