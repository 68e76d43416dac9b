import torch
from tensordict import TensorDict

from cmbrl import SAC
from cmbrl.agents.sac import make_sac_actor


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({"observation": torch.randn(n, 11, generator=g), "action": torch.rand(n, 3, generator=g) * 2 - 1,
                       "next": {"observation": torch.randn(n, 11, generator=g), "reward": torch.randn(n, 1, generator=g),
                                "terminated": torch.zeros(n, 1, dtype=torch.bool),
                                "done": torch.zeros(n, 1, dtype=torch.bool)}}, batch_size=[n])


def test_update_changes_actor_critic_and_targets():
    agent = SAC(11, 3, seed=0)
    before = {k: v.clone() for k, v in agent.loss_module.state_dict().items()}
    metrics = agent.update(batch())
    assert set(metrics) == {"loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy"}
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
    from torchrl.envs.utils import ExplorationType, set_exploration_type
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.testing.assert_close(c.policy(obs.clone())["action"], a.policy(obs.clone())["action"])


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
