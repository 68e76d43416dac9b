"""Termination functions against the real Gymnasium v5 environments, on real transitions."""
import gymnasium as gym
import numpy as np
import pytest
import torch

from cmbrl.components.termination import get_termination_fn


def real_transitions(env_id: str, steps: int, seed: int = 0):
    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows = []
    for _ in range(steps):
        action = env.action_space.sample()
        next_obs, _, terminated, truncated, _ = env.step(action)
        rows.append((obs, action, next_obs, terminated))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    obs, act, nxt, term = (np.stack(x) for x in zip(*rows))
    return (torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(act, dtype=torch.float32),
            torch.as_tensor(nxt, dtype=torch.float32), torch.as_tensor(term))


@pytest.mark.parametrize("name,env_id", [("hopper", "Hopper-v5"), ("walker2d", "Walker2d-v5"),
                                         ("halfcheetah", "HalfCheetah-v5")])
def test_matches_real_environment(name, env_id):
    obs, act, nxt, terminated = real_transitions(env_id, 3000)
    predicted = get_termination_fn(name)(obs, act, nxt)
    assert predicted.shape == terminated.shape and predicted.dtype == torch.bool
    assert torch.equal(predicted, terminated)
    if name != "halfcheetah":  # random actions make these fall often: both outcomes are exercised
        assert 10 < int(terminated.sum()) < 2990


def test_hopper_rejects_large_velocity_state():
    nxt = torch.tensor([[1.25, 0.0] + [0.0] * 8 + [150.0]])  # healthy pose, but a state entry outside (-100, 100)
    assert bool(get_termination_fn("hopper")(nxt, None, nxt)[0])
    assert not bool(get_termination_fn("hopper")(nxt, None, torch.tensor([[1.25, 0.0] + [0.0] * 9]))[0])


def test_resolution_errors():
    assert get_termination_fn(None) is None
    fn = lambda o, a, n: torch.zeros(len(n), dtype=torch.bool)  # noqa: E731
    assert get_termination_fn(fn) is fn
    assert get_termination_fn("Hopper-v5") is get_termination_fn("hopper")
    with pytest.raises(ValueError, match="registered"):
        get_termination_fn("ant")
    with pytest.raises(TypeError):
        get_termination_fn(3)
