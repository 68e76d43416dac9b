"""The dynamics ensemble and the model envs on any torch device (the ``device`` fixture: cpu, and cuda where torch
sees one), and the model env's compiled prediction step (issue 26)."""
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from cmbrl import ConservativeModelEnv, DynamicsEnsemble, GymVectorModelEnv, ModelEnv
from cmbrl.components.calibration import morel_halt_threshold
from cmbrl.components.devices import resolve_device
from cmbrl.components.penalties import PENALTIES
from cmbrl.components.termination import TERMINATION_FNS

from model_fixtures import ACT, OBS, healthy_starts, tiny_ensemble

FAST_COMPILE = {"backend": "aot_eager", "fullgraph": True}  # no inductor codegen: seconds; no graph breaks


@pytest.fixture
def dev(device) -> torch.device:
    """The ``device`` fixture with its index (``cuda`` -> ``cuda:0``), as tensors report it."""
    return resolve_device(device)


def toy_transitions(n=300, obs_dim=3, act_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=g)
    act = torch.rand(n, act_dim, generator=g) * 2 - 1
    nxt = obs + 0.1 * torch.sin(obs) + 0.2 * act.sum(-1, keepdim=True)
    return TensorDict({"observation": obs, "action": act, "next": {"observation": nxt, "reward": obs[:, :1]}},
                      batch_size=[n])  # on the CPU, as datasets load


def small_ensemble(device, seed=0):
    return DynamicsEnsemble(3, 2, num_members=3, num_elites=2, hidden_sizes=(16,), weight_decay=(0, 0), seed=seed,
                            device=device)


def fitted(device):
    ensemble = small_ensemble(device)
    history = ensemble.fit(toy_transitions(), max_epochs=2, batch_size=64, seed=1)
    return ensemble, history


def test_ensemble_fit_and_forward_on_device(dev):
    ensemble, history = fitted(dev)
    assert ensemble.device == dev and history["epochs"] == 2
    assert all(p.device == dev for p in ensemble.parameters()) and ensemble.elite_indices.device == dev
    obs, act = torch.randn(5, 3, device=dev), torch.randn(5, 2, device=dev)
    with torch.no_grad():
        mean, std = ensemble(obs, act, members="elites")
        member_mean, member_std = ensemble.forward_member(obs, act, torch.tensor([0, 2, 1, 1, 0], device=dev))
        chunked, _ = ensemble(obs, act, members="elites", chunk_size=2)
    assert mean.device == std.device == member_mean.device == member_std.device == dev
    assert mean.shape == (2, 5, 4) and member_mean.shape == (5, 4)
    torch.testing.assert_close(chunked, mean)
    all_mean, _ = ensemble(obs, act)
    torch.testing.assert_close(member_mean[1], all_mean[2, 1])


def test_same_seed_same_device_same_fit(dev):
    (first, history1), (second, history2) = fitted(dev), fitted(dev)
    assert history1 == history2
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_fit_gives_the_same_batches_on_every_device(dev):
    """Index generation stays on a CPU generator: the device only changes float rounding."""
    on_device, history = fitted(dev)
    on_cpu, history_cpu = fitted("cpu")
    assert history["elites"] == history_cpu["elites"] or dev.type == "cuda"
    tolerance = 1e-5 if dev.type == "cpu" else 2e-3  # other kernels: Adam turns rounding into up to ~lr steps
    for a, b in zip(on_device.state_dict().values(), on_cpu.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b, rtol=tolerance, atol=tolerance)


def test_save_then_load_on_the_cpu(dev, tmp_path):
    ensemble, _ = fitted(dev)
    ensemble.save(tmp_path / "ensemble.pt")
    loaded = DynamicsEnsemble.load(tmp_path / "ensemble.pt", map_location="cpu")
    assert loaded.device == torch.device("cpu")
    for a, b in zip(ensemble.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a.cpu(), b)
    back = DynamicsEnsemble.load(tmp_path / "ensemble.pt", map_location="cpu", device=dev)
    assert back.device == dev and torch.equal(back.elite_indices, ensemble.elite_indices)


def test_device_follows_to_and_refuses_inputs_elsewhere(dev):
    ensemble = small_ensemble("cpu").to(dev)
    assert ensemble.device == dev
    other = torch.device("meta")  # a device no real input lives on: the check, whatever the machine has
    with pytest.raises(ValueError, match=rf"observation is on meta but the ensemble is on {dev}"):
        ensemble(torch.zeros(4, 3, device=other), torch.zeros(4, 2, device=dev))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="'cuda' was asked for"):
        DynamicsEnsemble(3, 2, device="cuda")
    with pytest.raises(ValueError, match="'cuda:1' was asked for"):
        ModelEnv(tiny_ensemble(), healthy_starts(), batch_size=2, device="cuda:1")


def rollout(env, steps=3, seed=0):
    torch.manual_seed(seed)  # the random actions of rollout() without a policy come from the global RNG
    return env.rollout(steps, break_when_any_done=False)


def test_model_env_on_device_every_penalty_and_termination(dev):
    """Start states (and the transitions the clip box comes from) arrive on the CPU and are moved once."""
    hopper_like = tiny_ensemble().to(dev)
    hopper_data = TensorDict({"observation": healthy_starts(), "next": {"observation": healthy_starts() + 0.1}}, [64])
    # walker2d's and halfcheetah's rules read 17-dimensional observations: an ensemble of that width
    wide = DynamicsEnsemble(17, 6, num_members=4, num_elites=3, hidden_sizes=(32, 32), weight_decay=(0, 0, 0),
                            seed=0).to(dev)
    starts = torch.cat([healthy_starts(), torch.zeros(64, 6)], -1)
    wide_data = TensorDict({"observation": starts, "next": {"observation": starts + 0.1}}, [64])
    for penalty in PENALTIES:
        for termination in [*TERMINATION_FNS, None]:
            ensemble, data = (hopper_like, hopper_data) if termination in ("hopper", None) else (wide, wide_data)
            env = ConservativeModelEnv(ensemble, penalty=penalty, start_states=data, batch_size=6, seed=0,
                                       termination_fn=termination, clip_observations=True)  # device: the ensemble's
            assert env.device == dev and env.base_env.start_states.device == dev
            td = rollout(env)
            for key in ("observation", "reward", "uncertainty", "terminated", "done"):
                assert td["next", key].device == dev, (penalty, termination, key)
            assert torch.isfinite(td["next", "reward"]).all()
    halting = ModelEnv(hopper_like, healthy_starts(), batch_size=4, seed=0, halt_threshold=0.0, halt_penalty=-3.0)
    td = halting.rollout(1)
    assert td["next", "terminated"].all() and (td["next", "model_reward"] == -3.0).all()
    assert halting.num_nonfinite == 0


def test_model_env_moves_the_ensemble_to_the_asked_device(dev):
    ensemble = tiny_ensemble()  # on the CPU
    env = ModelEnv(ensemble, healthy_starts().to(dev), batch_size=4, seed=0, device=dev)
    assert ensemble.device == dev and env.start_states.device == dev
    assert rollout(env, 1)["next", "observation"].device == dev


def test_gym_vector_env_returns_numpy_on_the_cpu(dev):
    env = ConservativeModelEnv(tiny_ensemble().to(dev), start_states=healthy_starts(), batch_size=4, horizon=2,
                               seed=0)
    envs = GymVectorModelEnv(env)
    observations, _ = envs.reset(seed=0)
    for _ in range(3):
        observations, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())
    assert isinstance(observations, np.ndarray) and observations.dtype == np.float32 and observations.shape == (4, OBS)
    assert rewards.dtype == np.float32 and terminations.dtype == truncations.dtype == np.bool_
    assert infos["uncertainty"].shape == (4,) and infos["_uncertainty"].dtype == np.bool_
    envs.close()


def test_morel_threshold_with_the_ensemble_on_device(dev):
    ensemble = tiny_ensemble().to(dev)
    threshold = morel_halt_threshold(ensemble, healthy_starts(), torch.zeros(64, ACT))  # CPU data
    assert isinstance(threshold, float) and threshold > 0


@pytest.mark.parametrize("penalty, members", [("max_aleatoric", "all"), ("combined", "elites"),
                                              ("individual_std", "all")])
def test_compiled_rollout_matches_eager(dev, penalty, members):
    """All members for every row (compiled), the elites' gather (one-member penalties), halting and clipping."""
    kwargs = dict(penalty=penalty, penalty_members=members, start_states=healthy_starts(), batch_size=24, seed=0,
                  termination_fn="hopper", halt_threshold=5.0, clip_observations=True, chunk_size=None)
    eager = rollout(ConservativeModelEnv(tiny_ensemble().to(dev), **kwargs), 4)
    compiled_env = ConservativeModelEnv(tiny_ensemble().to(dev), compile=FAST_COMPILE, **kwargs)
    assert compiled_env.base_env._compiled is not None  # cmbrl's compile=, not TorchRL's constructor argument
    compiled = rollout(compiled_env, 4)
    for key in ("observation", "reward", "model_reward", "uncertainty"):
        torch.testing.assert_close(compiled["next", key], eager["next", key], rtol=1e-5, atol=1e-5)
    assert torch.equal(compiled["next", "terminated"], eager["next", "terminated"])
    assert compiled["next", "observation"].device == dev


def test_compiled_step_counts_nonfinite_rows(dev):
    ensemble = DynamicsEnsemble(OBS, ACT, num_members=2, num_elites=2, hidden_sizes=(8,), weight_decay=(0, 0),
                                seed=0, device=dev)
    with torch.no_grad():
        ensemble.input_std[0] = 0.0  # every prediction is inf/nan
    env = ConservativeModelEnv(ensemble, start_states=healthy_starts(8), batch_size=5, seed=0, chunk_size=None,
                               compile=FAST_COMPILE)
    td = rollout(env, 2)
    assert torch.isfinite(td["next", "observation"]).all() and td["next", "terminated"].all()
    assert env.num_nonfinite == 10


def test_bad_compile_argument():
    with pytest.raises(ValueError, match="compile must be"):
        ModelEnv(tiny_ensemble(), healthy_starts(), batch_size=2, compile=["inductor"])


@pytest.mark.slow
@pytest.mark.parametrize("penalty", ["max_aleatoric", "individual_std"])
def test_inductor_compiled_rollout_matches_eager(dev, penalty):
    """Real inductor code (20-60 s per compile on a small CPU); chunked, so two chunk shapes compile."""
    kwargs = dict(penalty=penalty, start_states=healthy_starts(), batch_size=40, seed=0, termination_fn="hopper",
                  chunk_size=16)
    eager = rollout(ConservativeModelEnv(tiny_ensemble().to(dev), **kwargs), 3)
    compiled = rollout(ConservativeModelEnv(tiny_ensemble().to(dev), compile=True, **kwargs), 3)
    for key in ("observation", "reward", "uncertainty"):
        torch.testing.assert_close(compiled["next", key], eager["next", key], rtol=1e-4, atol=1e-4)
    assert torch.equal(compiled["next", "terminated"], eager["next", "terminated"])


@pytest.mark.parametrize("penalty", ["individual_std", "none", "max_pairwise_diff"])
def test_dense_step_matches_the_eager_step(dev, penalty):
    """The all-rows-all-members function a GPU compiles equals the eager step (on the CPU one-member penalties keep
    the grouped forward pass, so this is where the dense one-member path is checked there)."""
    from cmbrl.envs.model_env import _make_dense_step

    env = ModelEnv(tiny_ensemble().to(dev), healthy_starts(), penalty=penalty, batch_size=32, seed=0,
                   termination_fn="hopper", halt_threshold=3.0, clip_observations=True)
    dense = torch.compile(_make_dense_step(dense_all=env._dense_all, needs_all=env._needs_all_members,
                                           penalty=env.penalty, halt_threshold=env.halt_threshold,
                                           **env._finish_options), **FAST_COMPILE)
    g = torch.Generator().manual_seed(0)
    observation = healthy_starts(32).to(dev)
    action = (3 * torch.rand(32, ACT, generator=g) - 1.5).to(dev)  # some outside [-1, 1]: clipped
    member = torch.randint(env.ensemble.num_elites, (32,), generator=g).to(dev)
    noise = torch.randn(32, OBS + 1, generator=g).to(dev)
    with torch.no_grad():
        expected = env._eager_step(observation, action.clamp(-1, 1), member, noise)
        got = dense(observation, action, member, noise, env._step_tensors())
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
