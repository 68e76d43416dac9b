"""cmbrl.components.training: MC returns, the Q probe, the MOPO table and the ensemble cache."""
import json

import pytest
import torch
from tensordict import TensorDict

from cmbrl.components import training


def episodes(rewards, dones, terminated):
    n = len(rewards)
    return TensorDict({"observation": torch.arange(n, dtype=torch.float32)[:, None], "action": torch.zeros(n, 1),
                       "next": {"reward": torch.tensor(rewards, dtype=torch.float32)[:, None],
                                "done": torch.tensor(dones)[:, None],
                                "terminated": torch.tensor(terminated)[:, None]}}, batch_size=[n])


def test_discounted_returns_restart_at_episode_ends_and_flag_time_limit_cuts():
    # episode 1: 3 steps ending by termination; episode 2: 2 steps cut by the time limit
    data = episodes([1.0, 2.0, 4.0, 1.0, 1.0], [False, False, True, False, True],
                    [False, False, True, False, False])
    returns, exact = training.discounted_returns_to_go(data, gamma=0.5)
    torch.testing.assert_close(returns, torch.tensor([1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0, 1.5, 1.0]))
    assert exact.tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="got 1.5"):
        training.discounted_returns_to_go(data, gamma=1.5)


def test_q_probe_keeps_only_exact_rows_and_is_reproducible():
    data = episodes([1.0] * 6, [False, True, False, False, False, True], [False, True] + [False] * 4)
    probe = training.make_q_probe(data, gamma=0.9, size=10, seed=3)
    assert sorted(probe["observation"].reshape(-1).tolist()) == [0.0, 1.0]  # the time-limited episode is out
    assert torch.equal(probe["observation"], training.make_q_probe(data, gamma=0.9, size=10, seed=3)["observation"])
    cut = episodes([1.0] * 3, [False, False, True], [False] * 3)
    with pytest.raises(ValueError, match="exact Monte Carlo return"):
        training.make_q_probe(cut)


def test_mopo_table_lookup_by_id_or_short_name():
    assert training.mopo_hyperparameters("cmbrl/hopper/medium-replay-v0") == (5, 2.5)
    assert training.mopo_hyperparameters("walker2d-medium-replay") == (1, 2.5)
    assert training.mopo_hyperparameters("cmbrl/hopper/expert-v0") == training.DEFAULT_MOPO_HYPERPARAMETERS


def test_ensemble_is_fitted_once_then_loaded(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    n = 300
    obs, act = torch.randn(n, 3, generator=g), torch.rand(n, 2, generator=g) * 2 - 1
    data = TensorDict({"observation": obs, "action": act,
                       "next": {"observation": obs + 0.1 * act.sum(-1, keepdim=True), "reward": act[:, :1],
                                "terminated": torch.zeros(n, 1, dtype=torch.bool),
                                "done": torch.zeros(n, 1, dtype=torch.bool)}}, batch_size=[n])
    first, report = training.fit_or_load_ensemble(tmp_path, "test/x-v0", data, seed=1, max_epochs=1, progress=False)
    assert (tmp_path / "ensemble_test_x-v0_n300_seed1.pt").exists() and report["epochs"] == 1
    monkeypatch.setattr(training.DynamicsEnsemble, "fit", lambda *a, **k: pytest.fail("fitted twice"))
    second, _ = training.fit_or_load_ensemble(tmp_path, "test/x-v0", data, seed=1, max_epochs=1, progress=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_cached_ensemble_with_another_epoch_cap_is_refused(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    n = 300
    obs, act = torch.randn(n, 3, generator=g), torch.rand(n, 2, generator=g) * 2 - 1
    data = TensorDict({"observation": obs, "action": act,
                       "next": {"observation": obs + 0.1 * act.sum(-1, keepdim=True), "reward": act[:, :1]}},
                      batch_size=[n])
    _, report = training.fit_or_load_ensemble(tmp_path, "test/x-v0", data, seed=1, max_epochs=1, progress=False)
    assert report["max_epochs"] == 1 and report["epochs"] == 1  # stopped by the cap: another cap gives another fit
    with pytest.raises(ValueError, match=r"max_epochs=1 .*max_epochs=3 was asked for"):
        training.fit_or_load_ensemble(tmp_path, "test/x-v0", data, seed=1, max_epochs=3, progress=False)
    path = tmp_path / "ensemble_test_x-v0_n300_seed1.json"
    assert path.exists()  # the refusal deleted nothing
    # a fit that early stopping ended before both caps is the same fit under either cap: reused
    monkeypatch.setattr(training.DynamicsEnsemble, "fit", lambda *a, **k: pytest.fail("fitted twice"))
    path.write_text(json.dumps({**report, "max_epochs": 50, "epochs": 12}))
    _, again = training.fit_or_load_ensemble(tmp_path, "test/x-v0", data, seed=1, max_epochs=400, progress=False)
    assert again["epochs"] == 12
    with pytest.raises(ValueError, match="max_epochs=50"):  # 12 >= 10: a cap of 10 would have cut it short
        training.fit_or_load_ensemble(tmp_path, "test/x-v0", data, seed=1, max_epochs=10, progress=False)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True])
def test_ensemble_fit_refuses_a_bad_epoch_cap(bad):
    data = TensorDict({"observation": torch.zeros(4, 3), "action": torch.zeros(4, 2),
                       "next": {"observation": torch.zeros(4, 3), "reward": torch.zeros(4, 1)}}, batch_size=[4])
    with pytest.raises(ValueError, match=f"max_epochs must be a positive int or None.*{bad!r}"):
        training.DynamicsEnsemble(3, 2, seed=0).fit(data, max_epochs=bad)


def test_negative_penalised_reward_warns_only_where_falling_pays():
    stats = {"model_reward": 1.8, "model_penalty": 7.3, "model_penalised_reward": -5.5}
    text = training.negative_reward_warning(stats, terminates=True)
    assert text is not None and "-5.5" in text and "1.8" in text and "7.3" in text and "--penalty-coef" in text
    assert training.negative_reward_warning(stats, terminates=False) is None  # nothing ends: values only shift
    assert training.negative_reward_warning({**stats, "model_penalised_reward": 0.2}, terminates=True) is None
    assert training.negative_reward_warning({}, terminates=True) is None


def test_model_env_exposes_its_termination_fn_for_the_warning():
    from cmbrl import ConservativeModelEnv
    from model_fixtures import healthy_starts, tiny_ensemble
    ensemble = tiny_ensemble()
    with_falls = ConservativeModelEnv(ensemble, start_states=healthy_starts(), batch_size=2, termination_fn="hopper")
    without = ConservativeModelEnv(ensemble, start_states=healthy_starts(), batch_size=2)
    assert getattr(with_falls, "termination_fn", None) is not None
    assert getattr(without, "termination_fn", None) is None


def test_rollout_stats_are_the_means_the_examples_log():
    reward = torch.tensor([[[1.0], [-3.0]], [[2.0], [0.0]]])
    rollout = TensorDict({"action": torch.tensor([[[1.0, 0.2], [0.0, -0.995]], [[0.5, 0.5], [0.1, 0.0]]]),
                          "next": {"reward": reward, "model_reward": reward + 1.0,
                                   "uncertainty": torch.tensor([[[0.5], [1.5]], [[1.0], [1.0]]]),
                                   "terminated": torch.tensor([[[False], [True]], [[False], [False]]])}},
                         batch_size=[2, 2])
    stats = training.rollout_stats(rollout, penalty_coef=2.0)
    assert stats["model_penalised_reward"] == 0.0 and stats["model_reward"] == 1.0
    assert stats["model_uncertainty"] == 1.0 and stats["model_penalty"] == 2.0
    assert stats["model_terminated"] == 0.25 and stats["model_saturated_actions"] == 2 / 8
    with pytest.raises(KeyError, match="uncertainty"):
        training.rollout_stats(rollout.exclude(("next", "uncertainty")), penalty_coef=2.0)


def test_save_atomic_replaces_whole_files_and_keeps_the_old_one_when_saving_fails(tmp_path):
    from cmbrl.components import save_atomic
    path = tmp_path / "checkpoint.pt"
    save_atomic({"step": 1, "w": torch.arange(3)}, path)
    save_atomic({"step": 2, "w": torch.arange(4)}, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded["step"] == 2 and torch.equal(loaded["w"], torch.arange(4))
    with pytest.raises(Exception):
        save_atomic({"step": 3, "bad": lambda: None}, path)  # a lambda cannot be pickled: torch.save fails mid-way
    assert torch.load(path, weights_only=False)["step"] == 2  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left behind


def test_reference_scores_read_the_card_and_the_saved_bc_rows(tmp_path):
    import minari
    import numpy as np

    from cmbrl import make_dataset
    from cmbrl.datasets import dataset_card

    dataset = "cmbrl/hopper/medium-v0"
    make_dataset(dataset, num_steps=1_000, seed=0)  # in the test's Minari folder (conftest)
    results = tmp_path / "results"
    for folder, rows in {"a": ["bc,cmbrl/hopper/medium-v0,0,done,10.0,10000,1", "bc,cmbrl/hopper/medium-v0,1,done,"
                                "20.0,10000,1", "bc,cmbrl/hopper/medium-v0,2,missing,,,", "mopo,cmbrl/hopper/medium-v0,"
                                "0,done,99.0,10,1", "bc,cmbrl/walker2d/medium-v0,0,done,77.0,10000,1"],
                         "b": ["bc,cmbrl/hopper/medium-v0,0,done,10.0,10000,1"]}.items():  # b restored a's seed 0
        (results / folder).mkdir(parents=True)
        (results / folder / "results.csv").write_text(
            "algo,dataset,seed,status,normalized_score,final_step,wall_time_s\n" + "\n".join(rows) + "\n")
    references = training.reference_scores(dataset, results)
    mean_return = np.array([dataset_card(dataset)["return_mean"]])
    data = 100 * minari.get_normalized_score(minari.load_dataset(dataset), mean_return)
    assert references == pytest.approx({"data": float(data[0]), "BC": 15.0})  # seeds 0 and 1; seed 0 counted once
    assert list(training.reference_lines({"data": 8.26, "BC": 10.0})) == ["data average 8.3", "BC 10.0"]
    assert training.final_score_line(22.84, {"data": 8.26, "BC": 10.0}) == "final score 22.8 (data 8.3, BC 10.0)"
    # no BC row for the dataset, no results folder, no local dataset: the missing references are left out
    assert set(training.reference_scores(dataset, tmp_path / "nowhere")) == {"data"}
    assert training.reference_scores("cmbrl/no-such/dataset-v0", results) == {}
    assert training.final_score_line(22.84, {}) == "final score 22.8"
    assert training.final_score_line(22.84, {"data": 8.26}) == "final score 22.8 (data 8.3)"
    # the saved benchmarks hold BC rows for the main job's dataset
    assert "BC" in training.reference_scores("cmbrl/hopper/medium-replay-v0")


def test_reference_lines_are_drawn_on_the_score_panel(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", lambda self, text, xy, **kw: drawn.append((text, xy[1])))
    training.plot_learning_curve(tmp_path / "curve.png", [{"step": 10, "normalized_score": 5.0}], "t",
                                 training.reference_lines({"data": 8.26, "BC": 10.0}))
    assert drawn == [("data average 8.3", 8.26), ("BC 10.0", 10.0)] and (tmp_path / "curve.png").stat().st_size > 0
