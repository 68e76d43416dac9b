import math

import pytest
import torch
from tensordict import TensorDict
from torch import distributions as D
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, TanhNormal

from cmbrl.agents import AWAC, AWACLoss, TanhGaussianMixture, make_mixture_actor
from cmbrl.agents.sac import _ForeachSoftUpdate, _ValueOperator


def batch(n=64, seed=0, obs_dim=11, act_dim=3, on_bounds=False):
    g = torch.Generator().manual_seed(seed)
    action = torch.rand(n, act_dim, generator=g) * 2 - 1
    if on_bounds:
        action[: n // 4] = action[: n // 4].sign()  # dataset actions clipped to the bounds
    return TensorDict({"observation": torch.randn(n, obs_dim, generator=g),
                       "action": action,
                       "next": {"observation": torch.randn(n, obs_dim, generator=g),
                                "reward": torch.randn(n, 1, generator=g),
                                "terminated": torch.rand(n, 1, generator=g) < 0.25,
                                "done": torch.zeros(n, 1, dtype=torch.bool)}}, batch_size=[n])


def small_loss(obs_dim=5, act_dim=2, num_q=2, action_key="action", **kwargs):
    actor = make_mixture_actor(obs_dim, act_dim, hidden_sizes=(16, 16), num_components=3)
    critics = [_ValueOperator(MLP(in_features=obs_dim + act_dim, out_features=1, num_cells=[16, 16]),
                              in_keys=["observation", action_key]) for _ in range(num_q)]
    loss = AWACLoss(actor, critics, **{"num_qvalue_nets": num_q, **kwargs})
    _ForeachSoftUpdate(loss, tau=0.005)  # registers a target updater (TorchRL warns without one)
    return loss


def torch_mixture(logits, loc, scale):
    """The same distribution from torch.distributions (unbounded atanh: interior actions only)."""
    squashed = D.TransformedDistribution(D.Normal(loc, scale), [D.TanhTransform()])
    return D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(squashed, 1))


# --- the distribution ------------------------------------------------------------------------------------------


def test_mixture_density_integrates_to_one_and_matches_samples():
    """1-D actions in [-2, 3]: ∫ exp(log_prob) = 1 on a fine grid, and a histogram of samples matches it."""
    logits = torch.tensor([[0.0, 1.0, -0.5], [2.0, 0.0, 0.0]])
    loc = torch.tensor([[[-1.0], [0.3], [1.2]], [[0.0], [-0.8], [2.0]]])
    scale = torch.tensor([[[0.5], [0.3], [0.8]], [[1.5], [0.2], [0.6]]])
    dist = TanhGaussianMixture(logits, loc, scale, low=-2.0, high=3.0)
    grid = torch.linspace(-2.0, 3.0, 400_001, dtype=torch.float64)[1:-1]
    density = dist.log_prob(grid.float()[:, None, None].expand(-1, 2, 1)).double().exp()  # (G, 2)
    torch.testing.assert_close(torch.trapezoid(density, grid, dim=0), torch.ones(2, dtype=torch.float64),
                               atol=2e-4, rtol=0)
    samples = dist.sample((200_000,))  # (S, 2, 1)
    assert samples.shape == (200_000, 2, 1) and (samples >= -2).all() and (samples <= 3).all()
    edges = torch.linspace(-2.0, 3.0, 26, dtype=torch.float64)
    cdf = torch.cat([torch.zeros(1, 2, dtype=torch.float64),
                     torch.cumulative_trapezoid(density, grid, dim=0)])
    cell = torch.bucketize(edges[1:-1], grid)  # grid index of each interior edge
    probs = torch.diff(torch.cat([torch.zeros(1, 2, dtype=torch.float64), cdf[cell],
                                  torch.ones(1, 2, dtype=torch.float64)]), dim=0)  # (25, 2)
    for i in range(2):
        counts = torch.histc(samples[:, i, 0].double(), bins=25, min=-2.0, max=3.0) / samples.shape[0]
        sigma = (probs[:, i] * (1 - probs[:, i]) / samples.shape[0]).sqrt()
        assert ((counts - probs[:, i]).abs() <= 5 * sigma + 1e-4).all()


def test_single_component_is_tanh_normal():
    torch.manual_seed(1)
    loc, scale = torch.randn(64, 1, 3), torch.rand(64, 1, 3) + 0.1
    low, high = torch.tensor([-1.0, -2.0, 0.0]), torch.tensor([1.0, 0.5, 4.0])
    dist = TanhGaussianMixture(torch.zeros(64, 1), loc, scale, low=low, high=high)
    reference = TanhNormal(loc[:, 0], scale[:, 0], low=low, high=high)
    action = reference.sample()
    torch.testing.assert_close(dist.log_prob(action), reference.log_prob(action), rtol=1e-5, atol=1e-4)
    # and the mixture against torch.distributions' own MixtureSameFamily, on [-1, 1]
    logits, loc, scale = torch.randn(64, 4), torch.randn(64, 4, 3), torch.rand(64, 4, 3) + 0.1
    action = torch.rand(64, 3) * 1.9 - 0.95
    torch.testing.assert_close(TanhGaussianMixture(logits, loc, scale).log_prob(action),
                               torch_mixture(logits, loc, scale).log_prob(action), rtol=1e-5, atol=1e-5)


def test_log_prob_is_finite_on_the_bounds_and_shapes():
    logits = torch.randn(6, 5, requires_grad=True)
    loc = torch.randn(6, 5, 2, requires_grad=True)
    scale = (torch.rand(6, 5, 2) + 0.05).requires_grad_()
    dist = TanhGaussianMixture(logits, loc, scale, low=torch.tensor([-1.0, 0.0]), high=torch.tensor([1.0, 2.0]))
    assert dist.batch_shape == (6,) and dist.event_shape == (2,)
    corners = torch.tensor([[-1.0, 0.0], [1.0, 2.0], [-1.0, 2.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    log_prob = dist.log_prob(corners)
    assert log_prob.shape == (6,) and torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (logits, loc, scale))
    # on the bound = at u = 1 - eps
    inside = dist.log_prob(torch.tensor([1.0 - 1e-6, 2.0 - 1e-6]).expand(6, 2))
    torch.testing.assert_close(dist.log_prob(torch.tensor([1.0, 2.0]).expand(6, 2)), inside)
    samples = dist.rsample((4, 3))
    assert samples.shape == (4, 3, 6, 2) and dist.log_prob(samples).shape == (4, 3, 6)
    assert dist.support.check(samples).all()
    expanded = TanhGaussianMixture(torch.zeros(1, 5), torch.zeros(1, 5, 2), torch.ones(1, 5, 2)).expand((7,))
    assert expanded.batch_shape == (7,) and expanded.sample().shape == (7, 2)
    with pytest.raises(ValueError, match=r"loc \(6, 5, 2\)"):
        TanhGaussianMixture(torch.zeros(6, 4), torch.zeros(6, 5, 2), torch.ones(6, 5, 2))
    with pytest.raises(ValueError, match="high must be > low"):
        TanhGaussianMixture(logits, loc, scale, low=1.0, high=-1.0, validate_args=True)


def test_rsample_is_reparametrised_within_the_component():
    logits = torch.tensor([[0.0, 0.0, 0.0]] * 200, requires_grad=True)
    loc = torch.randn(200, 3, 2, requires_grad=True)
    scale = (torch.rand(200, 3, 2) + 0.1).requires_grad_()
    TanhGaussianMixture(logits, loc, scale).rsample().sum().backward()
    assert logits.grad is None  # the component draw is not differentiable
    # each row's gradient reaches exactly the component it was drawn from
    chosen = loc.grad.abs().sum(-1) > 0
    assert (chosen.sum(-1) == 1).all() and torch.equal(chosen, scale.grad.abs().sum(-1) > 0)
    assert 40 < chosen.sum(0).min() and chosen.sum(0).max() < 100  # ~uniform component choice


def test_deterministic_sample_is_the_heaviest_component_mean():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    loc = torch.randn(2, 3, 2) * 2
    dist = TanhGaussianMixture(logits, loc, torch.ones(2, 3, 2), low=-2.0, high=4.0)
    expected = 1.0 + 3.0 * torch.tanh(torch.stack([loc[0, 1], loc[1, 0]]))
    torch.testing.assert_close(dist.deterministic_sample, expected)
    with pytest.raises(NotImplementedError):
        dist.mean  # noqa: B018 - no closed form


def test_mixture_actor_exploration_modes():
    actor = make_mixture_actor(4, 2, hidden_sizes=(16,), num_components=3, action_low=-2.0, action_high=2.0)
    obs = TensorDict({"observation": torch.randn(32, 4)}, [32])
    with torch.no_grad():
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            td = actor(obs.clone())
            again = actor(obs.clone())
        sampled, resampled = actor(obs.clone())["action"], actor(obs.clone())["action"]
    assert torch.equal(td["action"], again["action"]) and not torch.equal(sampled, resampled)
    assert td["logits"].shape == (32, 3) and td["loc"].shape == td["scale"].shape == (32, 3, 2)
    heaviest = td["loc"][torch.arange(32), td["logits"].argmax(-1)]
    torch.testing.assert_close(td["action"], 2.0 * torch.tanh(heaviest))
    assert (sampled.abs() <= 2.0).all()
    with pytest.raises(ValueError, match="log_std_min"):
        make_mixture_actor(4, 2, log_std_min=2.0, log_std_max=-5.0)


# --- the loss --------------------------------------------------------------------------------------------------


def test_weights():
    advantage = torch.tensor([-3.0, 0.0, 0.1, 2.0, 50.0])
    loss = small_loss(temperature=0.5)
    weights = loss._weights(advantage)
    assert weights.max() == 20.0 and (weights <= 20.0).all()
    torch.testing.assert_close(weights[:3], (advantage[:3] / 0.5).exp())
    assert torch.isfinite(small_loss(temperature=1e-3)._weights(advantage)).all()  # no exp overflow
    assert small_loss(max_weight=None)._weights(torch.tensor([2.0])).item() == pytest.approx(math.exp(6.0))
    softmax = small_loss(weight="batch_softmax", temperature=0.5)._weights(advantage)
    assert softmax.sum().item() == pytest.approx(5.0)
    torch.testing.assert_close(softmax, 5 * torch.softmax(advantage / 0.5, 0))


def test_each_loss_reaches_only_its_own_parameters():
    loss = small_loss()
    actor_params = list(loss.actor_network_params.flatten_keys().values())
    critic_params = list(loss.qvalue_network_params.flatten_keys().values())
    for name, own, other in (("loss_actor", actor_params, critic_params), ("loss_qvalue", critic_params,
                                                                           actor_params)):
        for p in actor_params + critic_params:
            p.grad = None
        out = loss(batch(32, obs_dim=5, act_dim=2))
        out[name].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own), name
        assert all(p.grad is None for p in other), name
    assert all(not t.requires_grad for t in loss.target_qvalue_network_params.values(True, True))
    assert set(out.keys()) == {"loss_actor", "loss_qvalue", "advantage", "weight_mean", "weight_max", "q_data",
                               "log_prob"}


def test_target_bootstraps_truncations_and_stops_at_terminations():
    loss = small_loss(gamma=0.9)
    data = batch(6, obs_dim=5, act_dim=2)
    data["next", "terminated"] = torch.tensor([[True], [False], [False], [True], [False], [False]])
    data["next", "done"] = torch.tensor([[True], [True], [False], [True], [False], [True]])  # 1 and 5 truncated
    torch.manual_seed(3)
    target = loss._target(data)
    torch.manual_seed(3)
    next_action = loss._dist(data["next"]).sample()
    next_q = loss.qvalues(data["next"], next_action, loss.target_qvalue_network_params).min(0)[0]
    reward = data["next", "reward"].squeeze(-1)
    expected = torch.where(data["next", "terminated"].squeeze(-1), reward, reward + 0.9 * next_q)
    torch.testing.assert_close(target, expected)


def test_target_subset_size_draws_random_subsets():
    loss = small_loss(num_q=5, target_subset_size=2)
    with torch.no_grad():  # distinct target critics
        for p in loss.target_qvalue_network_params.values(True, True):
            p.add_(torch.randn_like(p) * 0.3)
    data = batch(16, obs_dim=5, act_dim=2)
    reward, not_terminated = data["next", "reward"].squeeze(-1), ~data["next", "terminated"].squeeze(-1)
    subsets = set()
    for seed in range(8):
        torch.manual_seed(seed)
        target = loss._target(data)
        torch.manual_seed(seed)
        next_action = loss._dist(data["next"]).sample()
        subset = torch.randperm(5)[:2]
        subsets.add(tuple(sorted(subset.tolist())))
        all_q = loss.qvalues(data["next"], next_action, loss.target_qvalue_network_params)  # (5, 16)
        torch.testing.assert_close(target, reward + 0.99 * not_terminated * all_q[subset].min(0)[0])
        # the generic path (TorchRL's vmap over the functional parameters) computes the same
        plan, loss._plan = loss._plan, None
        torch.manual_seed(seed)
        torch.testing.assert_close(loss._target(data), target, rtol=1e-5, atol=1e-5)
        loss._plan = plan
    assert len(subsets) > 2
    full = small_loss(num_q=5)  # None: the min over all critics
    torch.manual_seed(0)
    target = full._target(data)
    torch.manual_seed(0)
    next_action = full._dist(data["next"]).sample()
    all_q = full.qvalues(data["next"], next_action, full.target_qvalue_network_params)
    torch.testing.assert_close(target, reward + 0.99 * not_terminated * all_q.min(0)[0])


def test_set_keys():
    misnamed = small_loss()
    misnamed.set_keys(action="act")
    with pytest.raises(ValueError, match="'act' is not among the critics' in_keys"):
        misnamed(batch(8, obs_dim=5, act_dim=2))
    loss = small_loss(action_key="act")  # critics reading "act"
    loss.set_keys(reward="r", terminated="term", action="act", priority="prio")
    data = batch(8, obs_dim=5, act_dim=2)
    data.rename_key_("action", "act")
    data["next"].rename_key_("reward", "r")
    data["next"].rename_key_("terminated", "term")
    out = loss(data)
    assert torch.isfinite(out["loss_actor"]) and data["prio"].shape == (8,)
    assert ("next", "r") in loss.in_keys and "act" in loss.in_keys
    with pytest.raises(ValueError):
        loss.set_keys(not_a_key="x")


@pytest.mark.parametrize("kwargs, match", [
    (dict(weight="softmax"), "'softmax'"), (dict(temperature=0.0), "0.0"), (dict(max_weight=-1.0), "-1.0"),
    (dict(num_action_samples=0), "got 0"), (dict(target_subset_size=3), "got 3"), (dict(gamma=1.5), "1.5"),
    (dict(num_q=0), "got 0"), (dict(num_q=2, num_qvalue_nets=3), "got 2 critics for num_qvalue_nets=3"),
])
def test_loss_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_loss(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(actor="gmm"), "'gmm'"), (dict(tau=0.0), "0.0"), (dict(action_low=1.0, action_high=-1.0), "-1.0"),
    (dict(num_qvalue_nets=-2), "-2"), (dict(weight="exp"), "'exp'"), (dict(target_subset_size=0), "got 0"),
    (dict(num_components=0), "got 0"),
])
def test_awac_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AWAC(4, 2, hidden_sizes=(8,), actor_hidden_sizes=(8,), **kwargs)


# --- the component ---------------------------------------------------------------------------------------------


def test_update_is_the_awac_rule(mlp):
    """One update against a hand-written AWAC step: metrics, every gradient, the target update."""
    obs_dim, act_dim, k, n, gamma, tau, temperature = 5, 2, 3, 16, 0.99, 0.005, 0.01
    agent = AWAC(obs_dim, act_dim, num_components=k, hidden_sizes=(16, 16), actor_hidden_sizes=(16, 16),
                 temperature=temperature, max_weight=1.5, num_action_samples=2, seed=0)
    data = batch(n, seed=1, obs_dim=obs_dim, act_dim=act_dim)
    data["action"] = data["action"] * 0.95  # inside the box: torch.distributions' TanhTransform is the reference
    loss = agent.loss_module
    actor_params = [p.detach().clone().requires_grad_() for p in loss.actor_network_params.flatten_keys().values()]
    critic_params = [p.detach().clone().requires_grad_() for p in loss.qvalue_network_params.flatten_keys().values()]
    target_params = [p.detach().clone() for p in loss.target_qvalue_network_params.flatten_keys().values()]
    torch.manual_seed(123)  # the draws of one update, in order: next-state sample, then two samples per state
    gumbel_next, eps_next = torch.empty(n, k).exponential_(), torch.randn(n, act_dim)
    gumbel_now, eps_now = torch.empty(2, n, k).exponential_(), torch.randn(2, n, act_dim)
    torch.manual_seed(123)
    metrics = agent.update(data.clone())

    def actor(obs):
        x = mlp(obs, list(zip(actor_params[::2], actor_params[1::2])))
        logits, rest = x.split([k, 2 * k * act_dim], -1)
        loc, log_std = rest.unflatten(-1, (k, 2, act_dim)).unbind(-2)
        return logits, loc, log_std.clamp(-5.0, 2.0).exp()

    def sample(logits, loc, scale, gumbel, eps):
        index = (logits - gumbel.log()).argmax(-1)
        rows = torch.arange(loc.shape[0]).expand_as(index)
        return torch.tanh(loc[rows, index] + scale[rows, index] * eps)

    def q(obs, action, params):  # (2, *batch)
        x = torch.cat([obs.expand(*action.shape[:-1], -1), action], -1)
        return torch.stack([mlp(x, [(params[j][i], params[j + 1][i]) for j in range(0, len(params), 2)])
                            for i in range(2)]).squeeze(-1)

    obs, action, nxt = data["observation"], data["action"], data["next"]
    with torch.no_grad():
        logits, loc, scale = actor(nxt["observation"])
        next_value = q(nxt["observation"], sample(logits, loc, scale, gumbel_next, eps_next), target_params).min(0)[0]
        target = nxt["reward"].squeeze(-1) + gamma * (~nxt["terminated"]).float().squeeze(-1) * next_value
    q_data = q(obs, action, critic_params)
    loss_q = (q_data - target).pow(2).mean(-1).sum()
    logits, loc, scale = actor(obs)
    log_prob = torch_mixture(logits, loc, scale).log_prob(action)
    with torch.no_grad():
        value = q(obs, sample(logits, loc, scale, gumbel_now, eps_now), critic_params).min(0)[0].mean(0)
        advantage = q_data.min(0)[0] - value
        weights = (advantage / temperature).exp().clamp(max=1.5)
    loss_actor = -(log_prob * weights).mean()
    expected = {"loss_actor": loss_actor, "loss_qvalue": loss_q, "advantage": advantage.mean(),
                "weight_mean": weights.mean(), "weight_max": weights.max(), "q_data": q_data.min(0)[0].mean(),
                "log_prob": log_prob.mean()}
    assert set(metrics) == set(expected) and all(type(v) is float for v in metrics.values())
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(float(value.detach()), rel=1e-5, abs=1e-6), key
    assert 0 < (weights == 1.5).sum() < n  # the clamp is active on part of the batch
    (loss_actor + loss_q).backward()
    got = [p.grad for p in loss.actor_network_params.flatten_keys().values()]
    got += [p.grad for p in loss.qvalue_network_params.flatten_keys().values()]
    for mine, theirs in zip(actor_params + critic_params, got):
        torch.testing.assert_close(theirs, mine.grad.view_as(theirs), rtol=1e-4, atol=1e-6)
    # the target critics moved only by the soft update: exactly the lerp towards the stepped critics
    for old, new, online in zip(target_params, loss.target_qvalue_network_params.flatten_keys().values(),
                                loss.qvalue_network_params.flatten_keys().values()):
        assert torch.equal(new, old.lerp(online.detach(), tau))
        assert not torch.equal(new, old)


def test_seed_and_state_dict_round_trip():
    kwargs = dict(hidden_sizes=(32, 32), actor_hidden_sizes=(32, 32))
    a, b = AWAC(11, 3, seed=1, **kwargs), AWAC(11, 3, seed=1, **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict()["modules"].values(),
                                                  b.state_dict()["modules"].values()))
    a.update(batch())
    c = AWAC(11, 3, seed=2, **kwargs)
    c.load_state_dict(a.state_dict())
    obs = TensorDict({"observation": torch.randn(5, 11)}, [5])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.testing.assert_close(c.policy(obs.clone())["action"], a.policy(obs.clone())["action"])
    metrics = []
    for agent in (a, c):  # the copy trains on exactly like the original (parameters, Adam moments, targets)
        torch.manual_seed(5)
        metrics.append(agent.update(batch(seed=3)))
    assert metrics[0] == metrics[1]
    for (key, x), y in zip(a.state_dict()["modules"].items(), c.state_dict()["modules"].values()):
        assert torch.equal(x, y), key
    assert all(group["foreach"] for group in c.critic_optim.param_groups)


@pytest.mark.parametrize("actor", ["mixture", "tanh_normal"])
def test_policy_modes_and_bound_actions(actor):
    agent = AWAC(11, 3, actor=actor, hidden_sizes=(32, 32), actor_hidden_sizes=(32, 32), action_low=-0.5,
                 action_high=torch.tensor([0.5, 1.0, 2.0]), seed=0)
    obs = TensorDict({"observation": torch.randn(64, 11)}, [64])
    with torch.no_grad():
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            first, second = agent.policy(obs.clone())["action"], agent.policy(obs.clone())["action"]
        with set_exploration_type(ExplorationType.RANDOM):
            random = agent.policy(obs.clone())["action"]
    assert torch.equal(first, second) and not torch.equal(first, random)
    for action in (first, random):
        assert (action >= -0.5).all() and (action <= torch.tensor([0.5, 1.0, 2.0])).all()
    data = batch(32, obs_dim=11, act_dim=3, on_bounds=True)
    data["action"] = torch.where(data["action"] < 0, -0.5, data["action"] * torch.tensor([0.5, 1.0, 2.0]))
    metrics = agent.update(data)
    assert all(math.isfinite(value) for value in metrics.values())


def test_defaults_match_their_documentation():
    agent = AWAC(11, 3, seed=0)
    loss = agent.loss_module
    assert [agent.actor_optim.param_groups[0]["lr"], agent.critic_optim.param_groups[0]["lr"]] == [3e-4, 3e-4]
    assert (loss.gamma, loss.temperature, loss.weight, loss.max_weight) == (0.99, pytest.approx(1 / 3),
                                                                              "exp_clamp", 20.0)
    assert (loss.num_qvalue_nets, loss.num_action_samples, loss.target_subset_size) == (2, 1, None)
    assert agent.target_updater.eps == pytest.approx(1 - 0.005)
    widths = [p.shape[-2] for k, p in loss.qvalue_network_params.flatten_keys().items() if k.endswith("weight")]
    assert widths == [256, 256, 256, 1]
    head = agent.policy.module[0].module[-1]
    assert (head.num_components, head.log_std_min, head.log_std_max) == (5, -5.0, 2.0)
    assert [m.out_features for m in agent.policy.module[0].module[0] if isinstance(m, torch.nn.Linear)] == [
        256, 256, 256, 5 * 7]
    assert loss._plan is not None and loss._actor_shared  # the fast paths are taken
    # the critics are initialised independently, not copies
    first = loss.qvalue_network_params.flatten_keys()["module.0.weight"]
    assert not torch.equal(first[0], first[1])
