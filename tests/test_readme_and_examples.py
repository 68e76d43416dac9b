"""The README's commands and quickstart, and smoke runs of the examples with tiny budgets."""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmbrl import make_dataset
from cmbrl.agents.sac import make_sac_actor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_hopper_dataset(tmp_path):
    """cmbrl/hopper/medium-v0 with 2,000 steps of the shipped policy, in the test's Minari folder."""
    make_dataset("cmbrl/hopper/medium-v0", num_steps=2_000, seed=0)
    return "cmbrl/hopper/medium-v0"


def readme_commands():
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2
    assert "examples/mopo.py" in commands[0] and "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_quickstart_runs(small_hopper_dataset):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2  # the TorchRL quickstart, then the Gymnasium vector env view of the same env
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README python block {i}", "exec"), namespace)
    assert namespace["observations"].shape == (1000, 11) and namespace["rewards"].shape == (1000,)
    assert namespace["rollout"].batch_size == (1000, 5)
    assert set(namespace["metrics"]) >= {"loss_actor", "loss_qvalue"}


def test_mopo_example_smoke(small_hopper_dataset, tmp_path):
    out = tmp_path / "mopo"
    cmd = [sys.executable, str(ROOT / "examples" / "mopo.py"), "--dataset", small_hopper_dataset,
           "--num-steps", "40", "--rollout-every", "20",
           "--rollout-batch-size", "100", "--eval-every", "40", "--eval-episodes", "1", "--ensemble-max-epochs", "1",
           "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "learning_curve_seed0.png").stat().st_size > 0
    assert (out / "checkpoint_seed0.pt").exists() and (out / "ensemble_cmbrl_hopper_medium-v0_n2000_seed0.pt").exists()
    assert '"normalized_score"' in result.stdout
    # the last line: the score next to the dataset's average and BC's saved score (both exist for hopper-medium)
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"final score -?\d+\.\d \(data -?\d+\.\d, BC \d+\.\d\)", last), last
    assert "hopper, penalty max_aleatoric over all members, λ=5.0, h=5" in result.stdout  # Kit's hopper-medium row
    import json
    record = json.loads((out / "result.json").read_text())  # the learning benchmark's cell contract
    assert record["history"][-1]["step"] == 40 and record["normalized_score"] == record["history"][-1]["normalized_score"]
    for key in ("q_data", "mc_return", "model_terminated", "model_reward", "model_penalty", "alpha", "entropy"):
        assert key in record["history"][-1], key
    scores = (out / "logs" / "mopo_seed0" / "scalars" / "normalized_score.csv").read_text().splitlines()
    assert scores[-1].startswith("40,")  # the TorchRL CSV logger wrote the evaluation at step 40
    # the first rollout's mean penalised reward decides the falling warning (hopper terminates)
    first = (out / "logs" / "mopo_seed0" / "scalars" / "model_penalised_reward.csv").read_text().splitlines()[0]
    assert first.startswith("0,")
    assert ("will learn to fall" in result.stderr) == (float(first.split(",")[1]) < 0)
    # re-running resumes: nothing left to do, the cached ensemble is loaded and the checkpoint's step is kept
    again = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fit dynamics ensemble" not in again.stderr
    assert torch.load(out / "checkpoint_seed0.pt", weights_only=False)["step"] == 40
    changed = subprocess.run(cmd + ["--penalty", "combined"], capture_output=True, text=True, timeout=600)
    assert changed.returncode != 0 and "other settings" in changed.stderr


def test_behavior_training_example_smoke(tmp_path):
    out = tmp_path / "behavior"
    cmd = [sys.executable, str(ROOT / "examples" / "train_behavior_policy.py"), "--total-frames", "400",
           "--init-random-frames", "200", "--frames-per-batch", "100", "--eval-every", "200", "--eval-episodes", "1",
           "--buffer-size", "1000", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    snapshot = torch.load(out / "policies" / "step_0000400.pt", weights_only=True)
    make_sac_actor(11, 3, snapshot["hidden_sizes"]).load_state_dict(snapshot["actor"])
    resumed = subprocess.run(cmd[:3] + ["600"] + cmd[4:], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "resumed at 400 frames" in resumed.stdout


def test_mopo_target_entropy_option():
    import importlib.util
    spec = importlib.util.spec_from_file_location("mopo_example", ROOT / "examples" / "mopo.py")
    mopo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mopo  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mopo)
    assert mopo.Args().target_entropy == "auto"  # OfflineRL-Kit's -dim(A) stays the default
    args = mopo.parse_args(["--target-entropy", "-3"])  # MOPO's code value, a negative number on the command line
    assert mopo.parse_target_entropy(args.target_entropy) == -3.0
    assert mopo.parse_target_entropy("auto") == "auto"
    for bad in ("hot", "nan", "inf", ""):
        with pytest.raises(SystemExit, match=f"--target-entropy must be auto or a finite number.*{bad!r}"):
            mopo.parse_target_entropy(bad)
    from cmbrl import SAC
    assert float(SAC(11, 3, target_entropy=-3.0, seed=0).loss_module.target_entropy) == -3.0


def test_policy_in_real_env_example(small_hopper_dataset, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("policy_in_real_env", ROOT / "examples" / "policy_in_real_env.py")
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(example)
    from cmbrl import SAC, DynamicsEnsemble, load_dataset
    data = load_dataset(small_hopper_dataset)
    ensemble = DynamicsEnsemble(11, 3, seed=0)
    ensemble.fit(data, max_epochs=1)
    ensemble.save(tmp_path / "ensemble.pt")
    torch.save({"agent": SAC(11, 3, seed=0).state_dict()}, tmp_path / "checkpoint.pt")
    args = example.Args(policy=str(tmp_path / "checkpoint.pt"), ensemble=str(tmp_path / "ensemble.pt"),
                        dataset=small_hopper_dataset, episodes=2, max_steps=30, num_pairs=200,
                        json=str(tmp_path / "out.json"))
    results = example.main(args)
    assert len(results["episodes"]) == 2
    for entry in results["episodes"]:
        assert 1 <= entry["steps"] <= 30
        assert abs(entry["real_reward"] * entry["steps"] - entry["return"]) < 1e-3 * max(1.0, abs(entry["return"]))
        assert entry["u"] > 0 and entry["next_state_error"] > 0 and 0 <= entry["saturated"] <= 1
        assert len(entry["velocity_per_tenth"]) == min(10, entry["steps"])  # Hopper's x-velocity, index 5
        assert math.isfinite(entry["q_start"]) and math.isfinite(entry["return_start"])
        # an episode cut at 30 steps (< 300) has no exact return; a terminated one has all its steps exact
        assert entry["exact_steps"] == (entry["steps"] if entry["terminated"] else 0)
    assert results["data"]["steps"] == 200 and results["data"]["u"] > 0
    assert abs(results["data"]["real_reward"] - data["next", "reward"].mean().item()) < 0.5  # a sample of the data
    assert json.loads((tmp_path / "out.json").read_text())["episodes"][0]["steps"] == results["episodes"][0]["steps"]
    with pytest.raises(SystemExit, match="--policy .* and --ensemble .* are required"):
        example.main(example.Args(ensemble=str(tmp_path / "ensemble.pt")))
    with pytest.raises(SystemExit, match=r"the ensemble is for \(O, A\) = \(11, 3\), HalfCheetah-v5 has \(17, 6\)"):
        example.main(dataclasses.replace(args, env_id="HalfCheetah-v5"))


def test_policy_in_real_env_loads_combo_checkpoints_and_compares_q_with_the_discounted_return(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("policy_in_real_env", ROOT / "examples" / "policy_in_real_env.py")
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    from cmbrl import COMBO, SAC
    from cmbrl.components.training import critic_values
    combo = COMBO(11, 3, hidden_sizes=(32, 32), beta=2.0, seed=0)
    args = {"beta": 2.0, "hidden_sizes": "32,32", "num_steps": 10, "not_an_arg_any_more": 1}
    torch.save({"agent": combo.state_dict(), "args": args}, tmp_path / "combo.pt")
    loaded = example.load_agent(str(tmp_path / "combo.pt"), 11, 3, seed=1)
    assert isinstance(loaded, COMBO) and float(loaded.loss_module.beta) == 2.0
    obs, act = torch.randn(4, 11), torch.rand(4, 3) * 2 - 1
    torch.testing.assert_close(critic_values(loaded.loss_module, obs, act), critic_values(combo.loss_module, obs, act))
    torch.save({"agent": SAC(11, 3, seed=0).state_dict()}, tmp_path / "sac.pt")  # no saved args: SAC
    assert isinstance(example.load_agent(str(tmp_path / "sac.pt"), 11, 3, seed=0), SAC)

    reward = torch.tensor([1.0, 2.0, 4.0])
    ended = example.critic_vs_return(loaded, obs[:3], act[:3], reward, terminated=True, gamma=0.5)
    assert ended["return_start"] == pytest.approx(1 + 0.5 * 2 + 0.25 * 4) and ended["exact_steps"] == 3
    assert ended["return_exact"] == pytest.approx((3.0 + 4.0 + 4.0) / 3)  # G_t = 3, 4, 4
    assert ended["q_start"] == pytest.approx(float(critic_values(combo.loss_module, obs[:1], act[:1]).min()))
    cut = example.critic_vs_return(loaded, obs[:3], act[:3], reward, terminated=False, gamma=0.5)
    assert cut["return_start"] == ended["return_start"] and cut["exact_steps"] == 0  # a time-limit cut 3 steps on


def test_compose_torchrl_example_is_short_plain_torchrl_and_runs(small_hopper_dataset, tmp_path, capsys):
    path = ROOT / "examples" / "compose_torchrl.py"
    source = path.read_text()
    assert len(source.splitlines()) <= 80
    assert "cmbrl.agents" not in source and "components.training" not in source  # no cmbrl learner or helper
    for part in ("ConservativeModelEnv(", 'penalty="combined"', "Collector(", "ReplayBuffer(", "SACLoss(",
                 "SoftUpdate(", "torch.optim.Adam(", 'GymEnv('):
        assert part in source, part
    import importlib.util
    spec = importlib.util.spec_from_file_location("compose_torchrl_example", path)
    compose = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = compose  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(compose)
    args = compose.Args(dataset=small_hopper_dataset, num_steps=30, rollout_starts=50, rollout_every=10,
                        ensemble_epochs=1, eval_episodes=1, device="cpu", out=str(tmp_path / "out"))
    score = compose.main(args)
    assert math.isfinite(score) and "30 steps, return" in capsys.readouterr().out
    assert (tmp_path / "out" / "ensemble_cmbrl_hopper_medium-v0_n2000_e1.pt").exists()  # the cached fit
