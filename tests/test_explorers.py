"""Explorers (agents/explorers.py): O3F's optimistic action selection, the Gaussian baseline, swapping on a collector;
and the REDQ random-subset target of the AWAC critic ensemble that O3F trains (agents/awac.py)."""
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Bounded
from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import IQLLoss

from cmbrl.agents import (AWAC, EXPLORERS, OptimisticExplorer, SwitchableExplorer, ensemble_qvalues, make_explorer,
                          make_explorers)


def linear_actor(obs_dim=3, act_dim=2, low=-1.0, high=1.0):
    """A deterministic actor ``tanh(W s)`` scaled to the bounds, with a Bounded spec."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(obs_dim, act_dim), nn.Tanh())
    scale = (high - low) / 2
    module = TensorDictModule(lambda obs: net(obs) * scale + (high + low) / 2, ["observation"], ["action"])
    module.spec = Bounded(low=low, high=high, shape=(act_dim,))
    return module


class SpyCritic:
    """A hand-built ensemble ``(tensordict (B,), action (K, B, A)) -> (M, K, B)`` that records its inputs."""

    def __init__(self, fn):
        self.fn, self.actions = fn, []

    def __call__(self, tensordict, action):
        self.actions.append(action.clone())
        return self.fn(tensordict, action)


def states(*batch, obs_dim=3):
    return TensorDict({"observation": torch.randn(*batch, obs_dim)}, batch_size=batch)


def small_awac(**kwargs):
    return AWAC(3, 2, hidden_sizes=(16,), actor_hidden_sizes=(16,), num_qvalue_nets=5, target_subset_size=2,
                seed=0, **kwargs)


def test_executes_the_argmax_candidate_of_a_hand_built_critic():
    target = torch.tensor([0.3, -0.6])
    # three members whose mean is -|a - target|² (offsets -1, 0, +1 cancel)
    critic = SpyCritic(lambda td, a: torch.stack([-(a - target).pow(2).sum(-1) + k for k in (-1.0, 0.0, 1.0)]))
    explorer = OptimisticExplorer(linear_actor(), critic, num_candidates=50, sigma=0.5)
    td = explorer(states(6))
    (scored,) = critic.actions  # one critic call: (N + 1, B, A), row 0 the actor's own action
    assert scored.shape == (51, 6, 2)
    mean = -(scored - target).pow(2).sum(-1)
    best = mean[1:].argmax(0)
    torch.testing.assert_close(td["action"], scored[1:][best, torch.arange(6)])
    torch.testing.assert_close(td["explorer_score"], mean[1:].max(0).values)
    torch.testing.assert_close(td["policy_score"], mean[0])
    torch.testing.assert_close(scored[0], linear_actor()(states(6).set("observation", td["observation"]))["action"])


def test_candidates_stay_within_the_action_bounds():
    critic = SpyCritic(lambda td, a: a.sum(-1).expand(2, *a.shape[:-1]))  # prefers the upper corner
    explorer = OptimisticExplorer(linear_actor(low=-2.0, high=0.5), critic, num_candidates=200, sigma=5.0)
    td = explorer(states(8))
    candidates = critic.actions[0]
    assert candidates.min() >= -2.0 and candidates.max() <= 0.5
    assert (candidates == 0.5).any() and (candidates == -2.0).any()  # σ = 5 clips on both sides
    torch.testing.assert_close(td["action"], torch.full((8, 2), 0.5))  # the clipped corner is a candidate


def test_sigma_zero_executes_the_actors_action():
    actor = linear_actor()
    obs = states(5)
    expected = actor(obs.clone())["action"]
    explorer = OptimisticExplorer(actor, lambda td, a: torch.randn(5, *a.shape[:-1]), num_candidates=20, sigma=0.0)
    torch.testing.assert_close(explorer(obs.clone())["action"], expected, rtol=0, atol=0)


def test_optimism_prefers_the_higher_variance_candidate_when_means_tie():
    # two members ±s(a) with s = |a|₁: mean exactly 0 everywhere, population std s(a)
    spread = lambda a: a.abs().sum(-1)  # noqa: E731
    critic = SpyCritic(lambda td, a: torch.stack([spread(a), -spread(a)]))
    optimistic = OptimisticExplorer(linear_actor(), critic, num_candidates=30, sigma=0.3, optimism=2.0)
    td = optimistic(states(4))
    candidates = critic.actions[-1][1:]
    widest = spread(candidates).argmax(0)
    torch.testing.assert_close(td["action"], candidates[widest, torch.arange(4)])
    # f = mean + ω · std with the population std (the sample std would be √2 larger)
    torch.testing.assert_close(td["explorer_score"], 2.0 * spread(td["action"]))
    neutral = OptimisticExplorer(linear_actor(), critic, num_candidates=30, sigma=0.3, optimism=0.0)
    td = neutral(states(4))
    torch.testing.assert_close(td["action"], critic.actions[-1][1])  # all tie at ω = 0: the first candidate


@pytest.mark.parametrize("batch", [(), (1,), (7,), (2, 3)])
@pytest.mark.parametrize("critics", ["awac", "iql"])
def test_batched_shapes_for_one_and_many_states(batch, critics):
    agent = small_awac()
    if critics == "iql":  # TorchRL's IQLLoss with a 5-critic ensemble (O3F's other base learner)
        qnet = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[16]), in_keys=["observation", "action"])
        vnet = ValueOperator(MLP(in_features=3, out_features=1, num_cells=[16]), in_keys=["observation"])
        source = IQLLoss(agent.policy, qnet, vnet, num_qvalue_nets=5)
    else:
        source = agent
    qvalues = ensemble_qvalues(source)
    assert qvalues(states(4), torch.rand(9, 4, 2)).shape == (5, 9, 4)
    td = OptimisticExplorer(agent.policy, source, num_candidates=9)(states(*batch))
    assert td["action"].shape == (*batch, 2)
    assert td["explorer_score"].shape == td["policy_score"].shape == batch
    assert (td["action"].abs() <= 1).all()


def test_deterministic_exploration_is_the_bare_actor():
    actor = linear_actor()
    obs = states(3)
    for name in EXPLORERS:
        explorer = make_explorer(name, actor, lambda td, a: torch.zeros(2, *a.shape[:-1]), sigma=0.5)
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            out = explorer(obs.clone())
        torch.testing.assert_close(out["action"], actor(obs.clone())["action"])
        assert "explorer_score" not in out.keys()


def test_swapping_explorers_on_a_running_collector_changes_actions_not_the_learner():
    # a near-deterministic AWAC actor (σ ≈ e^-19) so that "none" acts as the actor's mean
    agent = AWAC(3, 1, action_low=-2.0, action_high=2.0, hidden_sizes=(16,), actor_hidden_sizes=(16,),
                 actor="tanh_normal", log_std_min=-20.0, log_std_max=-19.0, num_qvalue_nets=5,
                 target_subset_size=2, seed=0)
    before = {k: v.clone() for k, v in agent.state_dict()["modules"].items()}
    explorer = make_explorers(agent.policy, agent, active="none", sigma=0.5, num_candidates=20)
    env = TransformedEnv(GymEnv("Pendulum-v1"), DoubleToFloat())
    env.set_seed(0)
    collector = Collector(env, explorer, frames_per_batch=6, total_frames=-1, auto_register_policy_transforms=False)
    assert collector.policy is explorer
    frames = iter(collector)

    def policy_mean(batch):
        with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
            return agent.policy(batch.select("observation"))["action"]

    batches = {}
    for name in ("none", "gaussian", "o3f", "none"):
        collector.policy.use(name)  # the documented swap
        batch = next(frames)
        batches.setdefault(name, []).append(batch)
        moved = (batch["action"] - policy_mean(batch)).abs()
        assert (batch["action"].abs() <= 2).all()
        if name == "none":
            assert moved.max() < 1e-4 and batch["explorer_score"].isnan().all()
        else:
            assert (moved > 1e-4).all()
    o3f = batches["o3f"][0]
    assert not (o3f["explorer_score"].isnan().any() or o3f["policy_score"].isnan().any())
    collector.shutdown()
    after = agent.state_dict()["modules"]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_random_subset_target_uses_exactly_num_target_critics_members():
    agent = small_awac()
    loss = agent.loss_module
    for i in range(5):  # distinct target critics, so that a wrong member would show in the target
        loss.target_qvalue_network_params.flatten_keys()["module.2.bias"][i].fill_(float(i))
    n = 16
    batch = TensorDict({"observation": torch.randn(n, 3), "action": torch.rand(n, 2) * 2 - 1,
                        "next": {"observation": torch.randn(n, 3), "reward": torch.randn(n, 1),
                                 "terminated": torch.rand(n, 1) < 0.3, "done": torch.zeros(n, 1, dtype=torch.bool)}},
                       batch_size=[n])
    calls, original = [], loss.qvalues

    def spy(td, action, params, subset=None):
        out = original(td, action, params, subset)
        calls.append((action, subset, out))
        return out

    loss.qvalues = spy
    seen = set()
    for _ in range(40):
        calls.clear()
        target = loss._target(batch)
        ((action, subset, out),) = calls
        assert subset is not None and subset.shape == (2,) and subset.unique().numel() == 2
        assert out.shape == (2, n)
        full = original(batch["next"], action, loss.target_qvalue_network_params)  # all 5 members
        torch.testing.assert_close(out, full[subset])
        not_terminated = 1.0 - batch["next", "terminated"].squeeze(-1).float()
        torch.testing.assert_close(target, batch["next", "reward"].squeeze(-1)
                                   + 0.99 * not_terminated * full[subset].min(0).values)
        seen.update(subset.tolist())
    assert seen == set(range(5))  # a fresh subset per update


def test_bad_arguments_raise():
    actor = linear_actor()
    zero = lambda td, a: torch.zeros(2, *a.shape[:-1])  # noqa: E731
    with pytest.raises(ValueError, match="num_candidates"):
        OptimisticExplorer(actor, zero, num_candidates=0)
    with pytest.raises(ValueError, match="sigma"):
        OptimisticExplorer(actor, zero, sigma=-0.1)
    with pytest.raises(TypeError, match="critics must be"):
        OptimisticExplorer(actor, nn.Linear(2, 2))
    unbounded = TensorDictModule(nn.Linear(3, 2), ["observation"], ["action"])
    with pytest.raises(ValueError, match="need bounded actions"):
        OptimisticExplorer(unbounded, zero)
    with pytest.raises(ValueError, match="critics returned shape"):
        OptimisticExplorer(actor, lambda td, a: torch.zeros(2, 3))(states(4))
    with pytest.raises(ValueError, match="explorer must be one of"):
        make_explorer("thompson", actor)
    with pytest.raises(ValueError, match="no explorer 'o3f'"):
        SwitchableExplorer({"none": actor}).use("o3f")
