"""benchmarks/learning.py's --sweep variants and --backend choice (no Ray needed), and that cmbrl, the datasets CLI and
the local benchmark never import ray."""
import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_learning_benchmark import DATA_AVERAGE, DATASET, calls, run

ROOT = Path(__file__).resolve().parents[1]



def test_sweep_parsing_and_variant_names(learning):
    assert learning.parse_sweep("mopo:penalty-coef=0.5, 1,2.5") == ("mopo", "penalty_coef", ["0.5", "1", "2.5"])
    sweeps = [learning.parse_sweep("mopo:penalty_coef=0.5,1"), learning.parse_sweep("m*:horizon=1,5"),
              learning.parse_sweep("mopo:penalty=none")]
    variants = learning.expand_sweeps(["bc", "mopo"], sweeps)
    assert variants["bc"] == ("bc", {})
    assert [name for name in variants if name != "bc"] == [
        "mopo@penalty_coef=0.5,horizon=1,penalty=none", "mopo@penalty_coef=0.5,horizon=5,penalty=none",
        "mopo@penalty_coef=1,horizon=1,penalty=none", "mopo@penalty_coef=1,horizon=5,penalty=none"]
    assert variants["mopo@penalty_coef=1,horizon=5,penalty=none"] == ("mopo", {"penalty_coef": 1, "horizon": 5,
                                                                              "penalty": "none"})
    for bad in ("mopo:penalty_coef", "penalty_coef=1,2", "mopo:penalty_coef=1,,2", "mopo::x=1", "a:b:c=1"):
        with pytest.raises(ValueError, match=r"expected ALGO:KEY=V1,V2,\.\.\. \(e\.g\. mopo:penalty_coef="):
            learning.parse_sweep(bad)
    with pytest.raises(ValueError, match=r"'combo' matches none of --algos \['bc', 'mopo'\]"):
        learning.expand_sweeps(["bc", "mopo"], [learning.parse_sweep("combo:beta=1,5")])


def test_sweep_variants_are_rows_and_folders_of_their_own(learning, examples, tmp_path):
    out = tmp_path / "runs"
    assert run(learning, examples, out, "--jobs", "2", "--set", "fake:bias=7", "--sweep", "fake:bias=1,2",
               "--sweep", "fake:horizon=5", algos=("fake",), seeds=("0",)) == 0
    # the sweep overrides --set; each variant runs once with its own arguments, in its own folder
    assert sorted(calls(examples)) == [f"fake {DATASET} 0 --bias {b} --horizon 5" for b in (1, 2)]
    for bias in (1, 2):
        assert (out / f"fake@bias={bias},horizon=5" / "test_fake-v0" / "seed0" / "result.json").exists()
    with open(out / "results.csv") as f:
        assert [(r["algo"], r["status"]) for r in csv.DictReader(f) if r["algo"] != "bc"] == [
            ("fake@bias=1,horizon=5", "done"), ("fake@bias=2,horizon=5", "done")]
    table = (out / "table.md").read_text()
    assert "| test/fake-v0 | fake@bias=2,horizon=5 | 4.0 ± 0.0 | 1/1 |" in table
    assert "- fake@bias=1,horizon=5 on test/fake-v0: --num-steps 40 --eval-every 20 --eval-episodes 1 --bias 1 " \
           "--horizon 5" in table
    # --table-only re-expands the sweep of the last run (config.json)
    assert learning.main(["--out", str(out), "--table-only"], reference=lambda dataset_id: DATA_AVERAGE) == 0
    assert (out / "table.md").read_text() == table


def test_bad_backend_and_sweep_arguments_are_clear_errors(learning, examples, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(learning, examples, tmp_path / "r", "--backend", "slurm")
    assert "--backend: invalid choice: 'slurm' (choose from 'local', 'ray')" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(learning, examples, tmp_path / "r", "--address", "auto", "--scheduler", "asha")
    assert "--address, --scheduler only apply to --backend ray (got --backend local)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"--sweep 'fake:bias': expected ALGO:KEY=V1,V2"):
        run(learning, examples, tmp_path / "r", "--sweep", "fake:bias")
    assert calls(examples) == []


NO_RAY = textwrap.dedent('''
    import sys
    sys.modules["ray"] = None  # `import ray` raises ImportError, as without the package
    import cmbrl, cmbrl.datasets, cmbrl.datasets.__main__
    sys.path.insert(0, {benchmarks!r})
    import learning
    code = learning.main(["--algos", "fake", "--datasets", "test/fake-v0", "--seeds", "0", "--budget", "smoke",
                          "--out", {out!r}, "--examples-dir", {examples!r}, "--no-prepare"], reference=lambda d: 1.0)
    assert code == 0, code
    assert [name for name in sys.modules if name == "ray" or name.startswith("ray.")] == ["ray"]
    try:
        learning.main(["--algos", "fake", "--datasets", "test/fake-v0", "--seeds", "1", "--out", {out!r},
                       "--examples-dir", {examples!r}, "--no-prepare", "--backend", "ray"])
    except SystemExit as error:
        print("EXIT", error)
    print("DATASETS", cmbrl.datasets.__main__.main(["make", "hopper-random", "--backend", "ray"]))
''')


def test_cmbrl_and_the_local_backend_work_without_ray(examples, tmp_path):
    code = NO_RAY.format(benchmarks=str(ROOT / "benchmarks"), out=str(tmp_path / "runs"), examples=str(examples))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "EXIT --backend ray needs Ray (" in done.stdout and "pip install 'cmbrl[ray]'" in done.stdout
    assert "DATASETS 2" in done.stdout and "--backend ray needs Ray" in done.stderr
    assert (tmp_path / "runs" / "fake" / "test_fake-v0" / "seed0" / "result.json").exists()
