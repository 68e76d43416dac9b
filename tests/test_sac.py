import math

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import SACLoss, SoftUpdate

from cmbrl import SAC
from cmbrl.agents.sac import ClampedLogStdNormalParams, make_sac_actor


def batch(n=64, seed=0, obs_dim=11, act_dim=3):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({"observation": torch.randn(n, obs_dim, generator=g),
                       "action": torch.rand(n, act_dim, generator=g) * 2 - 1,
                       "next": {"observation": torch.randn(n, obs_dim, generator=g),
                                "reward": torch.randn(n, 1, generator=g),
                                "terminated": torch.rand(n, 1, generator=g) < 0.25,
                                "done": torch.zeros(n, 1, dtype=torch.bool)}}, batch_size=[n])


def test_update_changes_actor_critic_and_targets():
    agent = SAC(11, 3, seed=0)
    before = {k: v.clone() for k, v in agent.loss_module.state_dict().items()}
    metrics = agent.update(batch())
    assert set(metrics) == {"loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy"}
    assert all(type(value) is float for value in metrics.values())
    after = agent.loss_module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("actor_network_params" in k for k in changed)
    assert any(k.startswith("qvalue_network_params") for k in changed)
    assert any("target_qvalue" in k for k in changed) and "log_alpha" in changed


def test_seed_and_state_dict_round_trip():
    a, b = SAC(11, 3, seed=1), SAC(11, 3, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict()["modules"].values(), b.state_dict()["modules"].values()))
    a.update(batch())
    c = SAC(11, 3, seed=2)
    c.load_state_dict(a.state_dict())
    obs = TensorDict({"observation": torch.randn(5, 11)}, [5])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.testing.assert_close(c.policy(obs.clone())["action"], a.policy(obs.clone())["action"])
    # the copy trains on exactly like the original (parameters, Adam moments, α, target critics)
    for agent in (a, c):
        torch.manual_seed(5)
        agent.update(batch(seed=3))
    for (key, x), y in zip(a.state_dict()["modules"].items(), c.state_dict()["modules"].values()):
        assert torch.equal(x, y), key
    assert all(group["foreach"] for group in c.critic_optim.param_groups)


def test_defaults_match_their_documentation():
    agent = SAC(11, 3, seed=0)
    lrs = {name: [g["lr"] for g in getattr(agent, name).param_groups]
           for name in ("actor_optim", "critic_optim", "alpha_optim")}
    assert lrs == {"actor_optim": [3e-4], "critic_optim": [3e-4], "alpha_optim": [3e-4]}  # SAC paper
    loss = agent.loss_module
    assert float(loss.max_log_alpha) == 0.0 and loss.min_log_alpha is None  # α ≤ 1 (OfflineRL-Kit)
    assert float(loss.log_alpha.detach()) == 0.0 and float(loss.target_entropy) == -3.0  # α₀ = 1, target entropy -A
    assert loss.loss_function == "l2" and loss.num_qvalue_nets == 2
    assert agent.target_updater.eps == pytest.approx(1 - 0.005)
    assert loss.value_estimator.gamma == pytest.approx(0.99)
    head = agent.policy.module[0].module[-1]
    assert isinstance(head, ClampedLogStdNormalParams) and (head.log_std_min, head.log_std_max) == (-5.0, 2.0)
    # OfflineRL-Kit's MOPO learning rates are explicit arguments
    kit = SAC(11, 3, actor_lr=1e-4, alpha_lr=1e-4, seed=0)
    assert [kit.actor_optim.param_groups[0]["lr"], kit.critic_optim.param_groups[0]["lr"],
            kit.alpha_optim.param_groups[0]["lr"]] == [1e-4, 3e-4, 1e-4]


def test_alpha_is_clamped_at_max_alpha():
    # target entropy far above what the actor can reach: the α loss pushes log α up at every step
    def run(max_alpha):
        agent = SAC(4, 2, hidden_sizes=(16, 16), target_entropy=50.0, alpha_init=0.5, alpha_lr=0.1,
                    max_alpha=max_alpha, seed=0)
        alphas = [agent.update(batch(16, seed=i, obs_dim=4, act_dim=2))["alpha"] for i in range(25)]
        return agent, alphas

    agent, alphas = run(1.0)
    assert max(alphas) <= 1.0 and alphas[-1] == pytest.approx(1.0)
    assert float(agent.loss_module._alpha) <= 1.0  # the value the next update will use
    _, unclamped = run(None)
    assert unclamped[-1] > 2.0  # without the bound the same run leaves [0, 1]
    with pytest.raises(ValueError):
        SAC(4, 2, max_alpha=0.0)


def test_log_std_is_bounded_for_extreme_inputs():
    agent = SAC(11, 3, seed=0)
    net = agent.policy.module[0].module
    obs = torch.cat([torch.randn(64, 11) * 1e4, torch.zeros(1, 11)])
    with torch.no_grad():
        for layer in net[0]:  # blow the output layer up so both bounds are hit
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(50.0)
        loc, scale = net(obs)
    log_std = scale.log()
    assert (log_std >= -5.0 - 1e-6).all() and (log_std <= 2.0 + 1e-6).all()
    assert (log_std < -4.99).any() and (log_std > 1.99).any()
    assert loc.abs().max() > 100  # the mean itself is unbounded (tanh squashes the sample)
    head = ClampedLogStdNormalParams(-5.0, 2.0)
    _, s = head(torch.tensor([[0.0, -1e9], [0.0, 1e9]]))
    torch.testing.assert_close(s.reshape(-1), torch.tensor([math.exp(-5.0), math.exp(2.0)]))


def test_legacy_head_and_argument_checks():
    agent = SAC(11, 3, log_std_min=None, log_std_max=None, max_alpha=None, seed=0)
    assert isinstance(agent.policy.module[0].module[-1], NormalParamExtractor)
    assert agent.loss_module.max_log_alpha is None
    assert isinstance(make_sac_actor(11, 3).module[0].module[-1], NormalParamExtractor)  # checkpoints' head
    # both heads are parameter-free: actor checkpoints load into either
    clamped = make_sac_actor(11, 3, log_std_bounds=(-5.0, 2.0))
    clamped.load_state_dict(agent.policy.state_dict())
    with pytest.raises(ValueError):
        SAC(11, 3, log_std_min=-5.0, log_std_max=None)
    with pytest.raises(ValueError):
        ClampedLogStdNormalParams(2.0, -5.0)


def _tanh_normal_sample(loc, scale, eps):
    pre = loc + eps * scale
    log_prob = (-eps.pow(2) / 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prob = log_prob - (2 * (math.log(2) - pre - F.softplus(-2 * pre))).sum(-1)
    return torch.tanh(pre), log_prob


def test_update_is_the_sac_v2_rule(mlp):
    """One update against a hand-written SAC v2 step: losses, every gradient, the target update."""
    obs_dim, act_dim, n, gamma, tau = 5, 2, 8, 0.99, 0.005
    agent = SAC(obs_dim, act_dim, hidden_sizes=(16, 16), alpha_init=0.5, seed=0)
    data = batch(n, seed=1, obs_dim=obs_dim, act_dim=act_dim)
    loss = agent.loss_module
    actor_params = [p.detach().clone().requires_grad_() for p in loss.actor_network_params.flatten_keys().values()]
    critic_params = [p.detach().clone().requires_grad_() for p in loss.qvalue_network_params.flatten_keys().values()]
    target_params = [p.detach().clone() for p in loss.target_qvalue_network_params.flatten_keys().values()]
    log_alpha = loss.log_alpha.detach().clone().requires_grad_()
    torch.manual_seed(123)
    eps_next, eps_now = torch.randn(n, act_dim), torch.randn(n, act_dim)  # the two draws of one update, in order
    torch.manual_seed(123)
    metrics = agent.update(data.clone())

    def actor(obs):
        loc, log_std = mlp(obs, list(zip(actor_params[::2], actor_params[1::2]))).chunk(2, -1)
        return loc, log_std.clamp(-5.0, 2.0).exp()

    def q(obs, action, params):  # (2, n)
        x = torch.cat([obs, action], -1)
        return torch.stack([mlp(x, [(params[j][i], params[j + 1][i]) for j in range(0, len(params), 2)])
                            for i in range(2)]).squeeze(-1)

    alpha = log_alpha.detach().exp()
    with torch.no_grad():
        next_action, next_log_prob = _tanh_normal_sample(*actor(data["next", "observation"]), eps_next)
        next_value = (q(data["next", "observation"], next_action, target_params) - alpha * next_log_prob).min(0)[0]
        not_terminated = (~data["next", "terminated"]).float().squeeze(-1)
        target = data["next", "reward"].squeeze(-1) + gamma * not_terminated * next_value
    loss_q = (q(data["observation"], data["action"], critic_params) - target).pow(2).mean(-1).sum()
    action, log_prob = _tanh_normal_sample(*actor(data["observation"]), eps_now)
    min_q = q(data["observation"], action, [p.detach() for p in critic_params]).min(0)[0]
    loss_actor = (alpha * log_prob - min_q).mean()
    loss_alpha = (-log_alpha * (log_prob.detach() - act_dim)).mean()
    expected = {"loss_actor": loss_actor, "loss_qvalue": loss_q, "loss_alpha": loss_alpha, "alpha": alpha,
                "entropy": -log_prob.mean()}
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(float(value.detach()), rel=1e-5, abs=1e-6), key
    (loss_actor + loss_q + loss_alpha).backward()
    got = [p.grad for p in loss.actor_network_params.flatten_keys().values()]
    got += [p.grad for p in loss.qvalue_network_params.flatten_keys().values()] + [loss.log_alpha.grad]
    for mine, theirs in zip(actor_params + critic_params + [log_alpha], got):
        torch.testing.assert_close(theirs, mine.grad, rtol=1e-4, atol=1e-6)
    for old, new, online in zip(target_params, loss.target_qvalue_network_params.flatten_keys().values(),
                                loss.qvalue_network_params.flatten_keys().values()):
        torch.testing.assert_close(new, old + tau * (online.detach() - old))


def test_foreach_soft_update_equals_torchrl_soft_update():
    agent = SAC(11, 3, hidden_sizes=(32, 32), seed=0)
    with torch.no_grad():
        for p in agent.loss_module.qvalue_network_params.flatten_keys().values():
            p.add_(torch.randn_like(p))
    targets = list(agent.loss_module.target_qvalue_network_params.flatten_keys().values())
    start = [t.clone() for t in targets]
    SoftUpdate.step(agent.target_updater)  # TorchRL's own step
    reference = [t.clone() for t in targets]
    with torch.no_grad():
        for t, s in zip(targets, start):
            t.copy_(s)
    agent.target_updater.step()
    assert all(torch.equal(t, r) for t, r in zip(targets, reference))
    assert not any(torch.equal(t, s) for t, s in zip(targets, start))


def test_actor_samples_by_default_and_chunking_is_exact():
    actor = make_sac_actor(11, 3)
    obs = TensorDict({"observation": torch.randn(10_000, 11)}, [10_000])
    with torch.no_grad():
        a1, a2 = actor(obs.clone())["action"], actor(obs.clone())["action"]
        assert not torch.equal(a1, a2)  # stochastic by default
        assert (a1.abs() <= 1).all()
        net = actor.module[0].module
        chunked = net(obs["observation"])  # 10,000 rows > chunk size: chunked path
    full = net(obs["observation"])  # grad enabled: one pass
    for x, y in zip(chunked, full):
        torch.testing.assert_close(x, y.detach())


def test_fast_forward_equals_sacloss_forward():
    """The tensor forward of SAC's loss against TorchRL's SACLoss.forward on an identical agent, step after step:
    losses, α, entropy, td_error, every gradient."""
    fast, plain = SAC(11, 3, hidden_sizes=(32, 32), alpha_init=0.5, seed=0), SAC(11, 3, hidden_sizes=(32, 32),
                                                                                alpha_init=0.5, seed=0)
    assert isinstance(fast.loss_module, SACLoss) and fast.loss_module._fused
    assert fast.loss_module._fast_path_applies(batch())
    plain.loss_module._fast_path_applies = lambda tensordict: False  # always SACLoss.forward

    def params(agent):
        loss = agent.loss_module
        return [*loss.actor_network_params.flatten_keys().values(), *loss.qvalue_network_params.flatten_keys().values(),
                loss.log_alpha]

    for step in range(4):
        data = batch(seed=step)
        outs, tds, grads = [], [], []
        for agent in (fast, plain):
            td = data.clone()
            torch.manual_seed(step)
            out = agent.loss_module(td)
            outs.append(out), tds.append(td)
            grads.append(torch.autograd.grad(out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"], params(agent)))
        assert set(outs[0].keys()) == set(outs[1].keys()) == {"loss_actor", "loss_qvalue", "loss_alpha", "alpha",
                                                              "entropy"}
        for key in outs[1].keys():
            torch.testing.assert_close(outs[0][key], outs[1][key], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(tds[0]["td_error"], tds[1]["td_error"], rtol=1e-6, atol=1e-6)
        for mine, theirs in zip(*grads):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
        for agent in (fast, plain):  # train both on: the next comparison starts from updated weights and Adam moments
            torch.manual_seed(100 + step)
            agent.update(data.clone())
    # batches or settings the tensor forward does not cover go to SACLoss.forward
    weighted = batch()
    weighted.set("priority_weight", torch.ones(64))
    assert not fast.loss_module._fast_path_applies(weighted)
    assert set(fast.update(weighted)) == {"loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy"}
    fast.loss_module.reduction = "sum"
    assert not fast.loss_module._fast_path_applies(batch())
