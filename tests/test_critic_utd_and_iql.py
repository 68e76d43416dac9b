"""Issue 29: critic-only updates (REDQ's critic update-to-data ratio), IQL as a second base, and both in
examples/finetune.py and benchmarks/finetune_explorers.py."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from cmbrl import make_dataset
from cmbrl.agents import AWAC, IQL, iql_reward_scale, make_explorers
from cmbrl.agents.iql import episode_return_range

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import finetune  # noqa: E402

O, A, B = 3, 2, 16


def _batch(seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict({"observation": torch.randn(B, O, generator=g), "action": torch.rand(B, A, generator=g) * 2 - 1,
                       "next": {"observation": torch.randn(B, O, generator=g), "reward": torch.randn(B, 1, generator=g),
                                "terminated": torch.zeros(B, 1, dtype=torch.bool),
                                "done": torch.zeros(B, 1, dtype=torch.bool)}}, batch_size=[B])


def _params(params) -> dict:
    return {k: v.detach().clone() for k, v in params.flatten_keys().items()}


def _changed(before: dict, params) -> set:
    after = params.flatten_keys()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def _small_awac(seed=0):
    return AWAC(O, A, hidden_sizes=(16, 16), actor_hidden_sizes=(16, 16), num_qvalue_nets=5, target_subset_size=2,
                seed=seed)


def test_awac_update_critic_steps_the_critics_and_targets_only():
    agent = _small_awac()
    loss = agent.loss_module
    actor, critics, targets = (_params(loss.actor_network_params), _params(loss.qvalue_network_params),
                               _params(loss.target_qvalue_network_params))
    metrics = agent.update_critic(_batch())
    assert set(metrics) == {"loss_qvalue", "q_data"} and all(isinstance(v, float) for v in metrics.values())
    assert not _changed(actor, loss.actor_network_params)  # the actor is not stepped
    assert _changed(critics, loss.qvalue_network_params) == set(critics)
    assert not agent.actor_optim.state  # no Adam moments for the actor either
    tau = 0.005  # the soft update after the critic step: target <- target + tau (online - target)
    online = loss.qvalue_network_params.flatten_keys()
    for key, target in loss.target_qvalue_network_params.flatten_keys().items():
        torch.testing.assert_close(target, targets[key] + tau * (online[key] - targets[key]))


def test_awac_update_critic_is_the_critic_half_of_update():
    """Same seed, same RNG state, same batch: the critic-only step moves the critics exactly as the whole update does
    (the same target, subset and Bellman loss), so the REDQ loop differs from UTD G only by leaving the actor."""
    a, b = _small_awac(), _small_awac()
    batch = _batch()
    torch.manual_seed(1)
    a.update_critic(batch.clone())
    torch.manual_seed(1)
    b.update(batch.clone())
    for key, value in a.loss_module.qvalue_network_params.flatten_keys().items():
        assert torch.equal(value, b.loss_module.qvalue_network_params.flatten_keys()[key]), key
    assert _changed(_params(a.loss_module.actor_network_params), b.loss_module.actor_network_params)


def test_awac_update_critic_sync_false_returns_device_tensors():
    values = _small_awac().update_critic(_batch(), sync=False)
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in values.values())


def test_iql_updates_reach_their_own_parameters():
    agent = IQL(O, A, hidden_sizes=(16, 16), actor_hidden_sizes=(16, 16), num_qvalue_nets=5, seed=0)
    loss = agent.loss_module
    assert loss.qvalue_network_params.batch_size[0] == 5 and loss.expectile == 0.7 and loss.temperature == 3.0
    parts = {"actor": loss.actor_network_params, "critics": loss.qvalue_network_params,
             "value": loss.value_network_params}
    before = {name: _params(p) for name, p in parts.items()}
    metrics = agent.update_critic(_batch())
    assert set(metrics) == {"loss_qvalue", "loss_value"}
    assert not _changed(before["actor"], parts["actor"])
    assert _changed(before["critics"], parts["critics"]) and _changed(before["value"], parts["value"])
    before = {name: _params(p) for name, p in parts.items()}
    metrics = agent.update(_batch(1))
    assert set(metrics) == {"loss_actor", "loss_qvalue", "loss_value", "entropy"}
    assert all(_changed(before[name], parts[name]) for name in parts)


def test_iql_state_dict_round_trip_resumes_identically():
    a = IQL(O, A, hidden_sizes=(16,), actor_hidden_sizes=(16,), num_qvalue_nets=3, seed=0)
    a.update(_batch())
    b = IQL(O, A, hidden_sizes=(16,), actor_hidden_sizes=(16,), num_qvalue_nets=3, seed=5)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(3)
    ma = a.update(_batch(2))
    torch.manual_seed(3)
    mb = b.update(_batch(2))
    assert ma == mb


def test_o3f_scores_candidates_with_iqls_critics():
    agent = IQL(O, A, hidden_sizes=(16,), actor_hidden_sizes=(16,), num_qvalue_nets=5, seed=0)
    explorer = make_explorers(agent.policy, agent, ["o3f"], num_candidates=7)
    out = explorer(TensorDict({"observation": torch.randn(4, O)}, [4]))
    assert out["action"].shape == (4, A) and out["action"].abs().max() <= 1
    assert torch.all(out["explorer_score"] >= out["policy_score"] - 1e-6)  # the best of the candidates and a


@pytest.mark.parametrize("kwargs, match", [({"expectile": 1.0}, "expectile"), ({"temperature": 0.0}, "temperature"),
                                           ({"gamma": 1.5}, "gamma"), ({"num_qvalue_nets": 0}, "num_qvalue_nets"),
                                           ({"tau": 0.0}, "tau")])
def test_iql_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IQL(O, A, **kwargs)


def test_iql_reward_scale_is_1000_over_the_episode_return_range():
    reward = torch.tensor([1.0, 2.0, 3.0, 4.0, 3.0, 100.0])  # episodes [1, 2], [3, 4], [3], then an unfinished one
    done = torch.tensor([False, True, False, True, True, False])
    assert episode_return_range(reward, done) == (3.0, 7.0)
    assert iql_reward_scale(reward.unsqueeze(-1), done.unsqueeze(-1)) == pytest.approx(1000 / 4)
    with pytest.raises(ValueError, match="no complete episode"):
        iql_reward_scale(reward, torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="same return"):
        iql_reward_scale(torch.ones(4), torch.tensor([False, True, False, True]))


def test_finetune_critic_utd_counts_and_shared_offline_dir(tmp_path, monkeypatch):
    make_dataset("cmbrl/hopper/medium-v0", num_steps=2_000, seed=0)
    calls = {"critic": 0, "whole": 0}
    critic, whole = AWAC.update_critic, AWAC.update

    def count(name, method):
        def wrapped(self, *args, **kwargs):
            calls[name] += 1
            return method(self, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(AWAC, "update_critic", count("critic", critic))
    monkeypatch.setattr(AWAC, "update", count("whole", whole))
    shared = str(tmp_path / "offline" / "{dataset}" / "seed{seed}")
    args = finetune.Args(offline_steps=6, num_steps=5, eval_every=5, eval_episodes=1, num_candidates=4,
                         explorers="o3f", critic_utd=4, utd=1, checkpoint_every=2, threads=1, progress=0,
                         offline_dir=shared, out=str(tmp_path / "o3f"))
    result = finetune.main(args)
    assert calls == {"critic": 5 * 3, "whole": 6 + 5}  # offline 6 whole updates; online (4 - 1) + 1 per env step
    assert (tmp_path / "offline" / "cmbrl_hopper_medium-v0" / "seed0" / "agent.pt").exists()
    assert not (tmp_path / "o3f" / "offline").exists()
    calls.update(critic=0, whole=0)
    other = finetune.main(finetune.dataclasses.replace(args, explorers="gaussian", out=str(tmp_path / "gaussian")))
    assert calls == {"critic": 15, "whole": 5}  # the shared offline agent is loaded, not trained again
    assert other["history"][0]["normalized_score"] == result["history"][0]["normalized_score"]  # the same start
    assert result["args"]["critic_utd"] == 4


def test_finetune_iql_base_scales_rewards_and_rejects_bad_settings(tmp_path):
    make_dataset("cmbrl/hopper/medium-v0", num_steps=2_000, seed=0)
    out = tmp_path / "iql"
    args = finetune.Args(base="iql", offline_steps=4, num_steps=4, eval_every=2, eval_episodes=1, num_candidates=4,
                         explorers="o3f,none", threads=1, progress=0, out=str(out))
    result = finetune.main(args)
    stage = torch.load(out / "offline" / "agent.pt", weights_only=False)
    data = finetune.load_dataset(args.dataset, progress=False)
    assert stage["base"] == "iql" and stage["agent_kwargs"]["num_qvalue_nets"] == 5
    assert stage["reward_scale"] == pytest.approx(iql_reward_scale(data["next", "reward"], data["next", "done"]))
    assert set(result["runs"]) == {"o3f", "none"}
    assert set(result["runs"]["o3f"]["history"][-1]) >= {"loss_value", "loss_actor", "explorer_gain"}
    episodes = result["runs"]["none"]["episodes"]
    for episode in episodes:  # returns are the environment's, not the scaled rewards the learner saw
        assert episode["normalized_score"] == pytest.approx(finetune.normalized(
            finetune.minari.load_dataset(args.dataset), [episode["return"]]))
    import explorer_choices  # O3F's choices with IQL's critics, offline and after fine-tuning (--weights)
    agent_path = str(out / "offline" / "agent.pt")
    offline = explorer_choices.main([agent_path, "--num-states", "20", "--num-candidates", "8"])
    tuned = explorer_choices.main([agent_path, "--num-states", "20", "--num-candidates", "8", "--weights",
                                   str(out / "o3f" / "checkpoint_seed0.pt")])
    assert offline["gain"] >= 0 and tuned["gain"] >= 0 and offline["policy_score"] != tuned["policy_score"]
    with pytest.raises(SystemExit, match="--critic-utd"):
        finetune.main(finetune.dataclasses.replace(args, critic_utd=1, utd=2))
    with pytest.raises(SystemExit, match="--base"):
        finetune.main(finetune.dataclasses.replace(args, base="cql"))
    with pytest.raises(SystemExit, match="holds a iql agent"):
        finetune.main(finetune.dataclasses.replace(args, base="awac", offline_checkpoint=str(out / "offline" / "agent.pt"),
                                                   out=str(tmp_path / "x")))


def test_finetune_explorers_reads_sweep_cells_and_groups_settings(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("finetune_explorers", ROOT / "benchmarks" / "finetune_explorers.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    dataset = "cmbrl/hopper/medium-v0"
    for explorer, scores in (("o3f", [30, 50]), ("gaussian", [30, 40])):
        for seed in (0, 1):
            run = {"explorer": explorer, "normalized_score": scores[-1],
                   "args": {"dataset": dataset, "seed": seed, "base": "awac", "utd": 1, "critic_utd": 20},
                   "history": [{"step": s, "normalized_score": v + seed, "return": v} for s, v in zip((0, 5), scores)],
                   "episodes": [{"step": 3, "normalized_score": 1.0 + seed, "return": 1.0}]}
            path = tmp_path / "out" / f"finetune@explorers={explorer}" / "cmbrl_hopper_medium-v0" / f"seed{seed}"
            path.mkdir(parents=True)
            (path / "result.json").write_text(json.dumps(run))
    summary = script.main([str(tmp_path / "out"), "--save", str(tmp_path / "saved"), "--late", "1"])
    group = f"{dataset} (awac, UTD 1, critic UTD 20)"
    assert list(summary) == [group]
    assert summary[group]["o3f"]["seeds"] == [0, 1] and summary[group]["o3f"]["late"] == pytest.approx(50.5)
    assert summary[group]["gaussian"]["drop"] == pytest.approx(10.0)
    assert (tmp_path / "saved" / "explorers_cmbrl_hopper_medium-v0_awac_UTD_1_critic_UTD_20.png").exists()
    rows = script.read_rows(tmp_path / "saved" / "explorers.csv")
    assert {r["setting"] for r in rows} == {"awac, UTD 1, critic UTD 20"}
    assert script.setting({"dataset": dataset}) == "" and script.setting({"utd": 2}) == "awac, UTD 2, critic UTD 2"


@pytest.mark.parametrize("name", ("awac", pytest.param("iql", marks=pytest.mark.slow)))  # iql: ~1.5 min of compiling
def test_compiled_critic_and_whole_updates_match_eager(name):
    import torch._inductor.config
    torch._dynamo.reset()
    cls = AWAC if name == "awac" else IQL
    kwargs = {"hidden_sizes": (16, 16), "actor_hidden_sizes": (16, 16), "num_qvalue_nets": 5, "seed": 0}
    if name == "awac":
        kwargs["target_subset_size"] = 2
    eager, compiled = cls(O, A, **kwargs), cls(O, A, **kwargs, compile={"backend": "aot_eager"})
    results = []
    with torch._inductor.config.patch(fallback_random=True):
        for agent in (eager, compiled):
            torch.manual_seed(0)
            results.append([agent.update_critic(_batch(0)), agent.update_critic(_batch(1)), agent.update(_batch(2)),
                            agent.update_critic(_batch(3))])
    for e, g in zip(*results):
        assert e.keys() == g.keys()
        for key in e:
            assert g[key] == pytest.approx(e[key], rel=1e-4, abs=1e-5), key
    for key, value in eager.loss_module.qvalue_network_params.flatten_keys().items():
        torch.testing.assert_close(compiled.loss_module.qvalue_network_params.flatten_keys()[key], value,
                                   rtol=1e-4, atol=1e-5)


def test_q_against_return_uses_the_discounted_return_that_followed():
    trace = [(10.0, 1.0, 1.0), (5.0, 2.0, 2.0), (3.0, 0.5, 4.0)]  # (mean Q, std Q, reward)
    errors, spread = finetune.q_against_return(trace, 0.5, truncated=False)
    returns = [1 + 0.5 * (2 + 0.5 * 4), 2 + 0.5 * 4, 4.0]
    assert errors == pytest.approx([10 - returns[0], 5 - returns[1], 3 - returns[2]]) and spread == [1.0, 2.0, 0.5]
    long = [(0.0, 0.0, 1.0)] * (finetune.TRUNCATION_MARGIN + 2)
    errors, spread = finetune.q_against_return(long, 0.9, truncated=True)  # the time limit cut the tail's return
    assert len(errors) == len(spread) == 2
    assert finetune.q_against_return(long[:5], 0.9, truncated=True) == ([], [])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ("awac", "iql"))
@pytest.mark.parametrize("mode", ("eager", "cudagraphs"))
def test_critic_and_whole_updates_on_cuda(name, mode):
    """Written for the GPU check (``pytest -m cuda``); not run on this project's CPU machines."""
    cls = AWAC if name == "awac" else IQL
    kwargs = {"num_qvalue_nets": 5, "seed": 0, "device": "cuda", "compile": mode == "cudagraphs",
              "cudagraphs": mode == "cudagraphs"}
    if name == "awac":
        kwargs["target_subset_size"] = 2
    agent = cls(O, A, hidden_sizes=(16, 16), actor_hidden_sizes=(16, 16), **kwargs)
    actor = _params(agent.loss_module.actor_network_params)
    for i in range(10):  # CudaGraphModule captures after its warm-up calls
        critic = agent.update_critic(_batch(i).to("cuda"), sync=False)
    assert not _changed(actor, agent.loss_module.actor_network_params)
    whole = agent.update(_batch(11).to("cuda"))
    assert all(v.device.type == "cuda" for v in critic.values()) and all(map(math.isfinite, whole.values()))


def test_corl_iql_driver_trains_and_reloads_cmbrl_iql(tmp_path):
    """benchmarks/peers/corl_iql.py's cmbrl side: evaluations at the stated steps, Q on data moves with training, and
    ``--weights`` evaluates a saved agent exactly as the training run did; a wrong CORL checkout is a clear error."""
    import importlib.util
    make_dataset("cmbrl/hopper/medium-v0", num_steps=2_000, seed=0)
    spec = importlib.util.spec_from_file_location("corl_iql", ROOT / "benchmarks" / "peers" / "corl_iql.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    common = ["--dataset", "hopper-medium", "--eval-episodes", "1", "--num-critics", "3"]
    driver.main(["--impl", "cmbrl", "--steps", "4", "--eval-every", "2", "--out", str(tmp_path / "ours"), *common])
    history = json.loads((tmp_path / "ours" / "result.json").read_text())["history"]
    assert [p["step"] for p in history] == [0, 2, 4]
    assert history[0]["q_data"] != history[-1]["q_data"]
    args = finetune.Args(base="iql", num_critics=3, offline_steps=4, num_steps=1, eval_every=1, eval_episodes=1,
                         explorers="none", threads=1, progress=0, out=str(tmp_path / "ft"))
    finetune.main(args)
    weights = str(tmp_path / "ft" / "offline" / "agent.pt")
    for name in ("a", "b"):
        driver.main(["--impl", "cmbrl", "--steps", "0", "--weights", weights, "--out", str(tmp_path / name), *common])
    first, second = (json.loads((tmp_path / n / "result.json").read_text())["history"] for n in ("a", "b"))
    assert len(first) == 1 and first[0]["q_data"] == second[0]["q_data"]  # the saved critics, not fresh ones
    assert first[0]["q_data"] != history[0]["q_data"]
    with pytest.raises(SystemExit, match="expected a checkout of tinkoff-ai/CORL"):
        driver.main(["--impl", "corl", "--corl-path", str(tmp_path), "--steps", "0", "--out", str(tmp_path / "c"),
                     *common])


def test_finetune_normalize_observations_standardises_data_and_envs(tmp_path):
    """--normalize-observations 1: the offline agent carries the dataset's statistics, its step-0 evaluation is the
    one of an env standardised with them (not of the raw env), explorer_choices reads them, and an agent trained
    on raw observations is refused with the flag."""
    from cmbrl.components.training import evaluate_policy, make_eval_env, observation_norm, observation_stats
    make_dataset("cmbrl/hopper/medium-v0", num_steps=2_000, seed=0)
    args = finetune.Args(base="iql", num_critics=2, offline_steps=20, num_steps=2, eval_every=2, eval_episodes=1,
                         explorers="none", normalize_observations=1, threads=1, progress=0, out=str(tmp_path / "n"))
    result = finetune.main(args)
    stage = torch.load(tmp_path / "n" / "offline" / "agent.pt", weights_only=False)
    data = finetune.load_dataset(args.dataset, progress=False)
    loc, scale = observation_stats(data["observation"])
    assert torch.equal(stage["observation_loc"], loc) and torch.equal(stage["observation_scale"], scale)
    assert torch.allclose(scale, data["observation"].double().std(0, unbiased=False).float() + 1e-3)
    agent = finetune.make_agent(stage, stage["observation_dim"], stage["action_dim"], 0, {})
    agent.load_state_dict(stage["agent"])

    def step0(standardise: bool) -> float:
        env = make_eval_env(args.env_id or "Hopper-v5", seed=args.seed + 10_000)
        if standardise:
            env.append_transform(observation_norm(loc, scale))
        return finetune.normalized(finetune.minari.load_dataset(args.dataset), evaluate_policy(env, agent.policy, 1))

    assert result["history"][0]["normalized_score"] == pytest.approx(step0(True))
    assert step0(True) != step0(False)
    import explorer_choices
    agent_path = str(tmp_path / "n" / "offline" / "agent.pt")
    standardised = explorer_choices.main([agent_path, "--num-states", "10", "--num-candidates", "4"])
    stage["observation_loc"] = None  # the same agent fed raw states chooses differently
    torch.save(stage, tmp_path / "raw.pt")
    raw = explorer_choices.main([str(tmp_path / "raw.pt"), "--num-states", "10", "--num-candidates", "4"])
    assert standardised["gain"] != raw["gain"]
    with pytest.raises(SystemExit, match="trained on raw observations"):
        finetune.main(finetune.dataclasses.replace(args, offline_checkpoint=str(tmp_path / "raw.pt"),
                                                   out=str(tmp_path / "r")))
    with pytest.raises(SystemExit, match="--normalize-observations takes 0 or 1"):
        finetune.main(finetune.dataclasses.replace(args, normalize_observations=2))
