"""benchmarks/learning.py with fake example scripts: cells run once, resume, fail alone, run side by side; the
table, CSVs and plots come from the cells' result.json files."""
import csv
import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASET = "test/fake-v0"
DATA_AVERAGE = 42.0

FAKE_EXAMPLE = textwrap.dedent('''
    """A fake example: logs its call, optionally fails or waits for a sibling cell, writes result.json."""
    import argparse, json, os, sys, time
    from pathlib import Path

    here = Path(__file__).parent
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=1)
    args, extra = parser.parse_known_args()
    algo = Path(__file__).stem
    with open(here / "calls.txt", "a") as f:
        f.write(f"{algo} {args.dataset} {args.seed} {' '.join(extra)}\\n")
    print(f"{algo} seed {args.seed} training", flush=True)
    if os.environ.get("FAKE_FAIL") == f"{algo}:{args.seed}":
        print("boom: something went wrong", file=sys.stderr)
        sys.exit(3)
    barrier = os.environ.get("FAKE_BARRIER")
    if barrier:  # wait (up to 5 s) until every cell has started: only possible if they run side by side
        Path(barrier, f"{algo}_{args.seed}").touch()
        deadline = time.time() + 5
        while len(os.listdir(barrier)) < int(os.environ["FAKE_BARRIER_N"]) and time.time() < deadline:
            time.sleep(0.02)
        Path(args.out, "saw_all.txt").write_text(str(len(os.listdir(barrier)) >= int(os.environ["FAKE_BARRIER_N"])))
    every = args.eval_every or args.num_steps
    history = [{"step": s, "normalized_score": 10.0 * args.seed + s / 10, "return": 1.0}
               for s in range(every, args.num_steps + 1, every)]
    Path(args.out, "result.json").write_text(json.dumps({
        "normalized_score": history[-1]["normalized_score"], "history": history, "args": vars(args),
        "wall_time_s": 0.5}))
''')


def calls(examples):
    path = examples / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def run(learning, examples, out, *extra, algos=("bc", "fake"), seeds=("0", "1")):
    argv = ["--algos", *algos, "--datasets", DATASET, "--seeds", *seeds, "--budget", "smoke", "--num-steps", "40",
            "--eval-every", "20", "--out", str(out), "--examples-dir", str(examples), "--no-prepare", *extra]
    return learning.main(argv, reference=lambda dataset_id: DATA_AVERAGE)


def result_path(out, algo, seed):
    return out / algo / "test_fake-v0" / f"seed{seed}" / "result.json"


def table_rows(out):
    return [line for line in (out / "table.md").read_text().splitlines() if line.startswith(f"| {DATASET} |")]


def test_cells_run_once_resume_and_write_every_output(learning, examples, tmp_path):
    out = tmp_path / "runs"
    assert run(learning, examples, out, "--jobs", "2") == 0
    assert sorted(calls(examples)) == sorted(f"{a} {DATASET} {s} " for a in ("bc", "fake") for s in (0, 1))
    finished = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in out.glob("*/*/seed*/result.json")}
    assert len(finished) == 4
    assert "fake seed 1 training" in (out / "fake" / "test_fake-v0" / "seed1" / "log.txt").read_text()

    # the outputs: one row per cell, every evaluation, the table with its reference rows first, one plot
    with open(out / "results.csv") as f:
        results = list(csv.DictReader(f))
    assert [(r["algo"], r["seed"], r["status"], float(r["normalized_score"]), r["final_step"]) for r in results] == [
        ("bc", "0", "done", 4.0, "40"), ("bc", "1", "done", 14.0, "40"),
        ("fake", "0", "done", 4.0, "40"), ("fake", "1", "done", 14.0, "40")]
    with open(out / "curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert [(c["algo"], c["seed"], c["step"]) for c in curves if c["algo"] == "fake"] == [
        ("fake", "0", "20"), ("fake", "0", "40"), ("fake", "1", "20"), ("fake", "1", "40")]
    rows = table_rows(out)
    assert [row.split(" | ")[1] for row in rows] == ["data (average)", "bc", "fake"]
    assert "| 42.0 |" in rows[0]
    assert "| 9.0 ± 5.0 | 2/2 | 4.0 / 14.0 | 40 |" in rows[2]
    table = (out / "table.md").read_text()
    assert "Budget `smoke`, seeds 0 1" in table and "fake 40 gradient steps, evaluated every 20" in table
    assert (out / "curves_test_fake-v0.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["algos"] == ["bc", "fake"]

    # a second invocation runs nothing and leaves the finished cells' files alone
    assert run(learning, examples, out) == 0
    assert len(calls(examples)) == 4
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in finished} == finished

    # an interrupted cell (no result.json) is run again, with the same command, its log appended
    result_path(out, "fake", 1).unlink()
    assert run(learning, examples, out) == 0
    assert calls(examples)[4:] == [f"fake {DATASET} 1 "]
    assert (out / "fake" / "test_fake-v0" / "seed1" / "log.txt").read_text().count("=== ") == 2
    assert result_path(out, "fake", 1).exists()

    # --rerun starts the selected finished cells over
    assert run(learning, examples, out, "--rerun", algos=("fake",), seeds=("0",)) == 0
    assert calls(examples)[5:] == [f"fake {DATASET} 0 "]


def test_table_only_recomputes_from_the_result_files(learning, examples, tmp_path):
    out = tmp_path / "runs"
    assert run(learning, examples, out) == 0
    path = result_path(out, "fake", 0)
    path.write_text(json.dumps({**json.loads(path.read_text()), "normalized_score": 30.0}))
    assert run(learning, examples, out, "--table-only") == 0
    assert len(calls(examples)) == 4
    assert "| 22.0 ± 8.0 | 2/2 | 30.0 / 14.0 |" in table_rows(out)[2]
    with open(out / "results.csv") as f:
        assert [float(r["normalized_score"]) for r in csv.DictReader(f) if r["algo"] == "fake"] == [30.0, 14.0]
    # without a selection, --table-only uses the last run's (config.json)
    argv = ["--out", str(out), "--table-only"]
    assert learning.main(argv, reference=lambda dataset_id: DATA_AVERAGE) == 0
    assert "| 22.0 ± 8.0 |" in table_rows(out)[2]
    # a missing seed: the mean is over the finished ones and the row says how many
    path.unlink()
    assert run(learning, examples, out, "--table-only") == 0
    assert "| 14.0 ± 0.0 | 1/2 | — / 14.0 |" in table_rows(out)[2]


def test_failing_cell_is_reported_and_the_others_still_run(learning, examples, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    monkeypatch.setenv("FAKE_FAIL", "fake:0")
    assert run(learning, examples, out, "--jobs", "2", algos=("fake",), seeds=("0", "1", "2")) == 1
    printed = capsys.readouterr().out
    assert "FAILED fake test/fake-v0 seed 0: exit code 3" in printed and "boom: something went wrong" in printed
    assert "1 cell(s) failed" in printed
    assert not result_path(out, "fake", 0).exists()
    assert result_path(out, "fake", 1).exists() and result_path(out, "fake", 2).exists()
    with open(out / "results.csv") as f:
        assert [r["status"] for r in csv.DictReader(f) if r["algo"] == "fake"] == ["failed", "done", "done"]
    rows = table_rows(out)
    assert "| bc | not run (not in --algos) | 0/3 |" in rows[1]
    assert "| 2/3 |" in rows[2]
    # fixed: only the failed cell runs again
    monkeypatch.delenv("FAKE_FAIL")
    assert run(learning, examples, out, algos=("fake",), seeds=("0", "1", "2")) == 0
    assert calls(examples)[3:] == [f"fake {DATASET} 0 "]


def test_jobs_run_cells_side_by_side(learning, examples, tmp_path, monkeypatch):
    out, barrier = tmp_path / "runs", tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("FAKE_BARRIER", str(barrier))
    monkeypatch.setenv("FAKE_BARRIER_N", "2")
    assert run(learning, examples, out, "--jobs", "2", algos=("fake",)) == 0
    assert [(result_path(out, "fake", s).parent / "saw_all.txt").read_text() for s in (0, 1)] == ["True", "True"]


def test_cell_arguments_budget_settings_and_overrides(learning, examples, tmp_path, monkeypatch):
    mopo = learning.cell_args("mopo", "cmbrl/hopper/medium-v0", "short")
    assert mopo == {"num_steps": 30_000, "eval_every": 5_000, "eval_episodes": 5}  # mopo.py's own per-dataset λ, h
    monkeypatch.setitem(learning.SETTINGS, "mopo", {"*/walker2d/*": {"env_id": "Walker2d-v5", "horizon": 5},
                                                    "*/walker2d/medium-replay-v*": {"horizon": 1,
                                                                                    "penalty_coef": 1.0}})
    walker = learning.cell_args("mopo", "cmbrl/walker2d/medium-replay-v0", "full", num_steps=7)
    assert (walker["num_steps"], walker["horizon"], walker["penalty_coef"], walker["env_id"]) == (7, 1, 1.0,
                                                                                                   "Walker2d-v5")
    assert learning.cell_args("mopo", "cmbrl/walker2d/medium-v0", "short")["horizon"] == 5
    assert "horizon" not in learning.cell_args("mopo", "cmbrl/walker2d/medium-replay-v0", "short",
                                               sets=[learning.parse_set("mopo:*/walker2d/*:horizon=none")])
    assert learning.cell_args("iql", "cmbrl/hopper/medium-v0", "smoke") == BUDGET_SMOKE_DEFAULT  # the "*" preset
    assert "eval_every" not in learning.cell_args("bc", "cmbrl/hopper/medium-v0", "short", eval_every=3)
    sets = [learning.parse_set("mopo:cmbrl/hopper/medium-v0:penalty-coef=2.5"), learning.parse_set("*:normalize=false"),
            learning.parse_set("mopo:cmbrl/*/expert-v0:horizon=none")]
    assert sets[0] == ("mopo", "cmbrl/hopper/medium-v0", "penalty_coef", 2.5)
    args = learning.cell_args("mopo", "cmbrl/hopper/medium-v0", "short", sets=sets)
    assert args["penalty_coef"] == 2.5 and args["normalize"] is False
    assert "horizon" not in learning.cell_args("mopo", "cmbrl/hopper/expert-v0", "short", sets=sets)
    assert learning.to_argv({"num_steps": 5, "normalize": False, "x": True}) == ["--num-steps", "5",
                                                                                 "--no-normalize", "--x"]
    with pytest.raises(ValueError, match="ALGO:DATASET:KEY=VALUE"):
        learning.parse_set("mopo:penalty_coef")
    cell = learning.make_cell("mopo", "cmbrl/hopper/medium-v0", 2, tmp_path / "r", examples, {"horizon": 5})
    assert cell.out == (tmp_path / "r" / "mopo" / "cmbrl_hopper_medium-v0" / "seed2").resolve()
    assert cell.command[1:] == (str((examples / "mopo.py").resolve()), "--dataset", "cmbrl/hopper/medium-v0",
                                "--seed", "2", "--threads", "1", "--out", str(cell.out), "--horizon", "5")


def test_two_stage_cell_reads_its_stage_one_cell(learning, examples, tmp_path):
    root = tmp_path / "r"
    cell = learning.make_cell("mb2po", "cmbrl/hopper/medium-v0", 1, root, examples,
                              learning.cell_args("mb2po", "cmbrl/hopper/medium-v0", "short"))
    awac_cell = learning.cell_dir(root, "awac", "cmbrl/hopper/medium-v0", 1).resolve()
    argv = list(cell.command)
    assert argv[argv.index("--awac-out") + 1] == str(awac_cell)
    assert argv[argv.index("--awac-steps") + 1] == str(learning.cell_args("awac", "cmbrl/hopper/medium-v0",
                                                                           "short")["num_steps"])
    mine = learning.make_cell("mb2po", "cmbrl/hopper/medium-v0", 1, root, examples, {"awac_out": "elsewhere"})
    assert list(mine.command).count("--awac-out") == 1 and "elsewhere" in mine.command


BUDGET_SMOKE_DEFAULT = {"num_steps": 200, "eval_every": 100, "eval_episodes": 1}


def test_budget_text_counts_finetune_in_online_env_steps(learning):
    text = learning.budget_text(["finetune", "mopo"], "short", [0], {})
    preset = learning.BUDGETS["short"]["finetune"]
    offline, online = preset["offline_steps"], preset["num_steps"]
    assert f"finetune {offline:,} offline gradient steps, then {online:,} online env steps" in text
    assert f"mopo {learning.BUDGETS['short']['mopo']['num_steps']:,} gradient steps" in text
    checkpoint = learning.parse_set("finetune:offline_checkpoint=runs/awac/agent.pt")
    text = learning.budget_text(["finetune"], "short", [0], {"sets": [checkpoint]})
    assert "finetune from runs/awac/agent.pt" in text and "offline gradient steps" not in text


def test_restore_adds_saved_seeds_to_a_new_run_without_rerunning_them(learning, examples, tmp_path):
    first = tmp_path / "first"
    assert run(learning, examples, first, seeds=("0",)) == 0
    saved = tmp_path / "saved"  # what a session commits: the CSVs, not the cell folders
    saved.mkdir()
    for name in ("results.csv", "curves.csv"):
        (saved / name).write_text((first / name).read_text())
    before = len(calls(examples))
    second = tmp_path / "second"
    assert run(learning, examples, second, "--restore", str(saved), seeds=("0", "1")) == 0
    ran = calls(examples)[before:]
    assert sorted(line.split()[2] for line in ran) == ["1", "1"]  # bc and fake seed 1 only
    restored = json.loads(result_path(second, "fake", 0).read_text())
    assert restored["restored_from"] == str(saved)
    assert [p["step"] for p in restored["history"]] == [20, 40]
    assert "| 9.0 ± 5.0 | 2/2 | 4.0 / 14.0 |" in table_rows(second)[2]
    # an existing cell is never overwritten
    result_path(second, "fake", 1).write_text(json.dumps({"normalized_score": 99.0, "history": []}))
    learning.restore_results(saved, second)
    assert json.loads(result_path(second, "fake", 1).read_text())["normalized_score"] == 99.0
    with pytest.raises(SystemExit, match="no results.csv"):
        run(learning, examples, second, "--table-only", "--restore", str(tmp_path / "nowhere"))


def test_side_by_side_pairs_renamed_keys_and_skips_missing_ones(tmp_path):
    spec = importlib.util.spec_from_file_location("side_by_side", ROOT / "benchmarks" / "peers" / "side_by_side.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "ours").mkdir()
    (tmp_path / "kit").mkdir()
    (tmp_path / "ours" / "result.json").write_text(json.dumps({"history": [
        {"step": 5, "normalized_score": 1.5, "q_data": 10.0, "model_terminated": 0.1},
        {"step": 10, "normalized_score": 2.5, "q_data": 20.0}]}))
    (tmp_path / "kit" / "result.json").write_text(json.dumps({"history": [
        {"step": 5, "normalized_score": 3.0, "q_data": 11.0, "termination_rate": 0.2}]}))
    ours, kit = str(tmp_path / "ours" / "result.json"), str(tmp_path / "kit" / "result.json")
    table = script.main(["--ours", ours, "--peer", kit, "--peer-name", "Kit", "--keys", "normalized_score",
                         "model_terminated:termination_rate", "--save", str(tmp_path / "cmp")])
    assert table == [
        {"source": "cmbrl", "run": "ours", "step": 5, "normalized_score": 1.5, "model_terminated": 0.1},
        {"source": "cmbrl", "run": "ours", "step": 10, "normalized_score": 2.5, "model_terminated": None},
        {"source": "Kit", "run": "kit", "step": 5, "normalized_score": 3.0, "model_terminated": 0.2}]
    with open(tmp_path / "cmp.csv") as f:
        assert f.readline().strip() == "source,run,step,normalized_score,model_terminated"
    assert (tmp_path / "cmp.png").stat().st_size > 0
    (tmp_path / "kit" / "result.json").write_text(json.dumps({"args": {}}))
    with pytest.raises(SystemExit, match="no 'history'"):
        script.main(["--ours", ours, "--peer", kit, "--save", str(tmp_path / "cmp")])
