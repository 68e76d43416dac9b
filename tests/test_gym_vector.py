import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import DictInfoToList, RecordEpisodeStatistics

from cmbrl import ConservativeModelEnv, GymVectorModelEnv

from model_fixtures import ACT, OBS, healthy_starts, tiny_ensemble

B = 6


@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


def make_envs(ensemble, **kwargs):
    kwargs = {"start_states": healthy_starts(), "batch_size": B, "seed": 0, "horizon": 3, **kwargs}
    return GymVectorModelEnv(ConservativeModelEnv(ensemble, **kwargs))


def actions_for(step, dtype=np.float32):
    return np.tanh(np.sin(np.arange(B * ACT).reshape(B, ACT) + step)).astype(dtype)


def is_start_state(observation):
    return bool((observation[None] == healthy_starts().numpy()).all(-1).any())


def test_spaces_shapes_and_dtypes(ensemble):
    envs = make_envs(ensemble, action_low=torch.tensor([-1.0, -2.0, -0.5]), action_high=2.0)
    assert envs.num_envs == B and envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert envs.single_observation_space == gymnasium.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    assert envs.single_action_space == gymnasium.spaces.Box(np.array([-1.0, -2.0, -0.5], np.float32), 2.0,
                                                            dtype=np.float32)
    assert envs.observation_space == gymnasium.vector.utils.batch_space(envs.single_observation_space, B)
    assert envs.action_space.shape == (B, ACT) and envs.render_mode is None
    observations, infos = envs.reset(seed=0)
    assert observations.shape == (B, OBS) and observations.dtype == np.float32 and infos == {}
    assert envs.observation_space.contains(observations)
    envs.action_space.seed(0)
    observations, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())
    assert envs.observation_space.contains(observations)
    assert rewards.shape == (B,) and rewards.dtype == np.float32
    assert terminations.shape == truncations.shape == (B,) and terminations.dtype == truncations.dtype == np.bool_
    assert set(infos) == {"model_reward", "_model_reward", "uncertainty", "_uncertainty"}
    assert infos["uncertainty"].shape == (B,) and infos["_uncertainty"].dtype == np.bool_
    assert infos["_uncertainty"].all()  # no row was reset in this step
    envs.step(actions_for(0, np.float64))  # float64 actions are accepted
    actions = actions_for(0)
    assert envs._action_tensor(actions).data_ptr() == actions.ctypes.data  # float32: no copy
    actions.setflags(write=False)
    envs.step(actions[::-1])  # read-only, negative strides: copied without torch warnings
    envs.close()
    assert envs.closed and envs.env.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        envs.step(actions_for(0))


def test_truncation_at_horizon_then_next_step_autoreset(ensemble):
    always_row0 = lambda o, a, n: torch.arange(n.shape[0]) == 0  # noqa: E731 - row 0 terminates every step
    envs = make_envs(ensemble, termination_fn=always_row0)  # horizon 3
    observations, _ = envs.reset(seed=1)
    assert all(is_start_state(o) for o in observations)
    history = []
    for t in range(8):  # step 1..8
        previous = observations
        observations, rewards, terminations, truncations, infos = envs.step(actions_for(t))
        history.append((previous, observations, rewards, terminations, truncations, infos))

    # row 0 terminates on every real step, so it alternates: terminate (step 1), reset (step 2), terminate, ...
    for t, (_, obs, rew, term, trunc, infos) in enumerate(history, start=1):
        assert not trunc[0]
        assert term[0] == (t % 2 == 1)
        if t % 2 == 0:  # reset step: a start state, reward 0, no info
            assert is_start_state(obs[0]) and rew[0] == 0 and not infos["_model_reward"][0]
    # rows 1..5: episodes of 3 steps then a reset step -> truncated on steps 3 and 7, reset on steps 4 and 8
    rows = slice(1, None)
    for t, (prev, obs, rew, term, trunc, infos) in enumerate(history, start=1):
        assert not term[rows].any()
        assert trunc[rows].all() == (t in (3, 7)) and trunc[rows].any() == (t in (3, 7))
        if t in (4, 8):
            assert all(is_start_state(o) for o in obs[rows])
            assert (rew[rows] == 0).all() and not infos["_uncertainty"][rows].any()
            assert (infos["uncertainty"][rows] == 0).all()
        else:  # a real model step: moved away from the previous observation, with a positive uncertainty
            assert not np.array_equal(obs[rows], prev[rows]) and infos["_uncertainty"][rows].all()
            assert (infos["uncertainty"][rows] > 0).all()
    # on step 2 only row 0 restarted: rows 1..5 went on from their step-1 observations
    assert not any(is_start_state(o) for o in history[1][1][rows])


def test_reward_is_model_reward_minus_penalty(ensemble):
    envs = make_envs(ensemble, penalty_coef=2.5)
    envs.reset(seed=0)
    for t in range(5):
        _, rewards, _, _, infos = envs.step(actions_for(t))
        np.testing.assert_allclose(rewards, infos["model_reward"] - 2.5 * infos["uncertainty"], rtol=1e-6,
                                   atol=1e-6)


def test_same_seed_same_trajectory_and_different_seed_differs(ensemble):
    envs = make_envs(ensemble, termination_fn="hopper")

    def run(seed):
        out = [envs.reset(seed=seed)]
        out += [envs.step(actions_for(t)) for t in range(7)]
        return out

    first, second, other = run(3), run(3), run(4)
    assert data_equivalence(first, second, exact=True)
    assert not data_equivalence(first, other)


def test_returned_arrays_are_not_shared_with_the_env(ensemble):
    envs = make_envs(ensemble)
    observations, _ = envs.reset(seed=0)
    kept = observations.copy()
    observations += 100.0  # a user normalising in place must not move the model's state
    reference = make_envs(ensemble)
    reference.reset(seed=0)
    assert np.array_equal(envs.step(actions_for(0))[0], reference.step(actions_for(0))[0])
    assert not np.array_equal(kept, observations)


def test_partial_reset_through_reset_mask(ensemble):
    envs = make_envs(ensemble)
    envs.reset(seed=0)
    observations, *_ = envs.step(actions_for(0))
    mask = np.array([True, False, False, False, False, True])
    after, infos = envs.reset(options={"reset_mask": mask})
    assert np.array_equal(after[~mask], observations[~mask])
    assert all(is_start_state(o) for o in after[mask]) and infos == {}
    truncations = [envs.step(actions_for(t))[3] for t in range(2)][-1]
    assert np.array_equal(truncations, ~mask)  # unmasked rows reach the horizon (3) one step before masked ones


def test_gymnasium_vector_wrappers(ensemble):
    envs = RecordEpisodeStatistics(make_envs(ensemble))  # needs NEXT_STEP semantics to count correctly
    envs.reset(seed=0)
    returns = np.zeros(B)
    for t in range(3):
        _, rewards, _, truncations, infos = envs.step(actions_for(t))
        returns += rewards
    assert truncations.all()
    np.testing.assert_array_equal(infos["episode"]["l"], np.full(B, 3))
    np.testing.assert_allclose(infos["episode"]["r"], returns, rtol=1e-5)
    list_envs = DictInfoToList(make_envs(ensemble))
    list_envs.reset(seed=0)
    for t in range(4):
        *_, list_infos = list_envs.step(actions_for(t))
    assert list_infos == [{}] * B  # step 4 resets every row: no model info on any row


def test_bad_arguments(ensemble):
    envs = make_envs(ensemble)
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(actions_for(0))
    envs.reset()
    with pytest.raises(ValueError, match=r"\(6, 3\).*\(6, 2\)"):
        envs.step(np.zeros((B, ACT - 1), np.float32))
    with pytest.raises(ValueError, match="shape"):
        envs.step(np.zeros(B * ACT, np.float32))
    with pytest.raises(TypeError, match="dtype"):
        envs.step(np.full((B, ACT), "a"))
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": np.zeros(B, bool)})
    with pytest.raises(ValueError, match="unknown reset options"):
        envs.reset(options={"foo": 1})
    with pytest.raises(TypeError, match="seed"):
        envs.reset(seed=[1, 2])
    with pytest.raises(TypeError, match="EnvBase"):
        GymVectorModelEnv(gymnasium.make("CartPole-v1"))
