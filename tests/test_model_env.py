import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs.utils import check_env_specs

from cmbrl import SAC, ConservativeModelEnv, DynamicsEnsemble, ModelEnv
from cmbrl.components.penalties import individual_std, max_aleatoric

from model_fixtures import ACT, OBS, healthy_starts, tiny_ensemble


@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


def make_env(ensemble, **kwargs):
    kwargs = {"start_states": healthy_starts(), "batch_size": 6, "seed": 0, **kwargs}
    return ConservativeModelEnv(ensemble, **kwargs)


def test_check_env_specs_and_rollout_shape(ensemble):
    env = make_env(ensemble, penalty="combined", termination_fn="hopper")
    check_env_specs(env)
    td = env.rollout(5, break_when_any_done=False)
    assert td.batch_size == (6, 5)
    assert td["next", "observation"].shape == (6, 5, OBS) and td["next", "reward"].dtype == torch.float32
    check_env_specs(ModelEnv(ensemble, healthy_starts(), batch_size=3))


def test_truncation_at_horizon(ensemble):
    env = make_env(ensemble, horizon=3)
    td = env.rollout(7, break_when_any_done=False)
    truncated = td["next", "truncated"][..., 0]
    assert truncated[:, 2].all() and truncated[:, 5].all()
    assert not truncated[:, [0, 1, 3, 4, 6]].any()
    assert not td["next", "terminated"].any()  # no termination function


def test_termination_function_sets_terminated(ensemble):
    always = lambda o, a, n: n[:, 0] > -1e9  # noqa: E731 - terminates every row
    td = make_env(ensemble, termination_fn=always).rollout(3)
    assert td.shape == (6, 1)  # rollout stops at the first done
    assert td["next", "terminated"].all() and not td["next", "truncated"].any()
    assert td["next", "done"].all()


def test_reward_is_penalised_and_logged(ensemble):
    td = make_env(ensemble, penalty="max_aleatoric", penalty_coef=2.0).rollout(4, break_when_any_done=False)
    torch.testing.assert_close(td["next", "reward"], td["next", "model_reward"] - 2.0 * td["next", "uncertainty"])
    assert (td["next", "uncertainty"] > 0).all()
    with torch.no_grad():  # MOPO's estimator over all members (non-elites too, as MOPO/Kit), reward column included
        mean, std = ensemble(td["observation"][:, 0], td["action"][:, 0], members="all")
        elite_mean, elite_std = ensemble(td["observation"][:, 0], td["action"][:, 0], members="elites")
    torch.testing.assert_close(td["next", "uncertainty"][:, 0, 0], max_aleatoric(mean, std, None))
    elites_only = make_env(ensemble, penalty="max_aleatoric", penalty_members="elites").rollout(1)
    torch.testing.assert_close(elites_only["next", "uncertainty"][:, 0, 0],
                               max_aleatoric(*ensemble(elites_only["observation"][:, 0],
                                                       elites_only["action"][:, 0], members="elites"), None))
    assert not torch.allclose(max_aleatoric(mean, std, None), max_aleatoric(elite_mean, elite_std, None))
    with pytest.raises(ValueError, match="penalty_members"):
        make_env(ensemble, penalty_members="some")


def policy(td):  # deterministic, so that only the env's own randomness is in play
    return td.set("action", torch.tanh(td["observation"][..., :ACT]))


def test_same_seed_same_rollout_and_different_seed_differs(ensemble):
    a = make_env(ensemble, seed=3).rollout(5, policy, break_when_any_done=False)
    b = make_env(ensemble, seed=3).rollout(5, policy, break_when_any_done=False)
    c = make_env(ensemble, seed=4).rollout(5, policy, break_when_any_done=False)
    assert torch.equal(a["next", "observation"], b["next", "observation"])
    assert not torch.equal(a["next", "observation"], c["next", "observation"])
    env = make_env(ensemble)
    env.set_seed(3)
    torch.testing.assert_close(env.rollout(5, policy, break_when_any_done=False)["next", "reward"], a["next", "reward"])


def test_individual_fast_path_matches_full_forward(ensemble):
    fast = make_env(ensemble, penalty="individual_std").rollout(4, policy, break_when_any_done=False)
    full_fn = lambda mean, std, member: individual_std(mean, std, member)  # noqa: E731 (treated as all-members)
    full = make_env(ensemble, penalty=full_fn).rollout(4, policy, break_when_any_done=False)
    torch.testing.assert_close(fast["next", "observation"], full["next", "observation"])
    torch.testing.assert_close(fast["next", "uncertainty"], full["next", "uncertainty"])


def test_observations_are_not_clipped_by_default_and_clipped_on_request(ensemble):
    starts = healthy_starts()
    low, high = starts.amin(0), starts.amax(0)
    nxt = make_env(ensemble).rollout(5, break_when_any_done=False)["next", "observation"]
    assert ((nxt < low) | (nxt > high)).any()  # MOPO / OfflineRL-Kit: the model's own prediction
    td = make_env(ensemble, clip_observations=True).rollout(5, break_when_any_done=False)
    assert (td["next", "observation"] >= low).all() and (td["next", "observation"] <= high).all()


class _TiltEnsemble(DynamicsEnsemble):
    """Predicts the torso angle ``tilt`` for every row (std ~0), everything else unchanged: a predicted fall."""

    def __init__(self, tilt):
        super().__init__(OBS, ACT, num_members=2, num_elites=2, hidden_sizes=(4,), weight_decay=(0, 0), seed=0)
        self.tilt = tilt

    def forward(self, observation, action, members="all", chunk_size=None):
        mean = torch.cat([observation, torch.ones_like(observation[:, :1])], -1)
        mean[:, 1] = self.tilt
        num = 2
        return mean.expand(num, -1, -1).clone(), torch.full((num, *mean.shape), 1e-6)

    def forward_member(self, observation, action, member):
        mean, std = self.forward(observation, action)
        return mean[0], std[0]


@pytest.mark.parametrize("clip", [False, True])
def test_termination_fires_on_predicted_fall_that_clipping_would_hide(clip):
    """Hopper falls when |angle| >= 0.2. The start states' angles stay within ±0.1, so a clip to the data's box
    turns a predicted 0.3 tilt into a healthy 0.1: the old env (clip, then termination) never terminated here."""
    starts = healthy_starts()
    starts[:, 1] = torch.linspace(-0.1, 0.1, starts.shape[0])
    env = make_env(_TiltEnsemble(0.3), start_states=starts, termination_fn="hopper", clip_observations=clip)
    td = env.rollout(1)
    assert td["next", "terminated"].all()
    assert (td["next", "observation"][..., 1] <= 0.1 + 1e-6).all() if clip else \
        torch.allclose(td["next", "observation"][..., 1], torch.tensor(0.3))
    healthy = make_env(_TiltEnsemble(0.05), start_states=starts, termination_fn="hopper").rollout(3)
    assert not healthy["next", "terminated"].any()


def test_out_of_bound_actions_are_clipped_to_the_action_spec(ensemble):
    env = ModelEnv(ensemble, healthy_starts(), batch_size=4, seed=0)
    td = env.reset()
    big = td.clone().set("action", torch.full((4, ACT), 7.0))
    edge = td.clone().set("action", torch.ones(4, ACT))
    env.set_seed(1)
    out_big = env.step(big)
    env.set_seed(1)
    out_edge = env.step(edge)
    torch.testing.assert_close(out_big["next", "observation"], out_edge["next", "observation"])
    assert (out_big["action"] == 7.0).all()  # the recorded action is the one given
    with pytest.raises(ValueError, match="action_low"):
        ModelEnv(ensemble, healthy_starts(), batch_size=4, action_low=1.0, action_high=-1.0)


def test_nonfinite_prediction_terminates_row_and_is_counted():
    ens = DynamicsEnsemble(OBS, ACT, num_members=2, num_elites=2, hidden_sizes=(8,), weight_decay=(0, 0), seed=0)
    with torch.no_grad():
        ens.input_std[0] = 0.0  # observation[0] / 0 -> inf/nan for rows with observation[0] != 0 ... (all rows)
    starts = healthy_starts(8)
    starts[:4, 0] = 0.0  # 0/0 -> nan as well: every row is non-finite
    env = make_env(ens, start_states=starts, batch_size=5)
    td = env.rollout(2, break_when_any_done=False)
    for key in ["observation", "reward", "uncertainty", "model_reward"]:
        assert torch.isfinite(td["next", key]).all(), key
    assert td["next", "terminated"].all()
    assert env.num_nonfinite == 10


def test_halting_terminates_with_halt_penalty(ensemble):
    td = make_env(ensemble, halt_threshold=0.0, halt_penalty=-7.0).rollout(3)
    assert td["next", "terminated"].all()
    torch.testing.assert_close(td["next", "model_reward"], torch.full_like(td["next", "model_reward"], -7.0))
    never = make_env(ensemble, halt_threshold=1e9).rollout(3, break_when_any_done=False)
    assert not never["next", "terminated"].any()


def test_partial_reset_only_touches_masked_rows(ensemble):
    env = make_env(ensemble)
    td = env.reset()
    td = env.rand_step(td)
    from torchrl.envs.utils import step_mdp
    td = step_mdp(td)
    before = td["observation"].clone()
    mask = torch.tensor([True, False, False, True, False, False]).unsqueeze(-1)
    td.set("_reset", mask)
    after = env.reset(td)
    assert torch.equal(after["observation"][~mask[:, 0]], before[~mask[:, 0]])
    assert not torch.equal(after["observation"][mask[:, 0]], before[mask[:, 0]])
    assert (after["step_count"][mask[:, 0]] == 0).all()


def test_collector_and_replay_buffer(ensemble):
    env = make_env(ensemble, horizon=2, termination_fn="hopper")
    agent = SAC(OBS, ACT, seed=0)
    collector = Collector(env, agent.policy, frames_per_batch=24, total_frames=48)
    buffer = ReplayBuffer(storage=LazyTensorStorage(100), batch_size=8)
    for data in collector:
        buffer.extend(data.reshape(-1))
    collector.shutdown()
    assert len(buffer) == 48
    batch = buffer.sample()
    assert batch["next", "reward"].shape == (8, 1)
    agent.update(batch)


def test_bad_arguments(ensemble):
    with pytest.raises(ValueError, match="start_states"):
        make_env(ensemble, start_states=torch.randn(5, OBS + 1))
    with pytest.raises(ValueError, match="valid names"):
        make_env(ensemble, penalty="nope")
    with pytest.raises(ValueError, match="horizon"):
        make_env(ensemble, horizon=0)
    with pytest.raises(ValueError, match="penalty_coef"):
        make_env(ensemble, penalty_coef=-1.0)
    bad = healthy_starts()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        make_env(ensemble, start_states=bad)
    data = TensorDict({"observation": healthy_starts(), "next": {"observation": healthy_starts() + 1}}, [64])
    env = make_env(ensemble, start_states=data, clip_observations=True)  # transitions widen the clip range
    assert torch.allclose(env.base_env.observation_high, healthy_starts().amax(0) + 1)
