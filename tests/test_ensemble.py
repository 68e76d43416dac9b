import pytest
import torch
from tensordict import TensorDict

from cmbrl.components.ensemble import DynamicsEnsemble


def toy_transitions(n=2000, obs_dim=3, act_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=g)
    act = torch.rand(n, act_dim, generator=g) * 2 - 1
    nxt = obs + 0.1 * torch.sin(obs) + 0.2 * act.sum(-1, keepdim=True) + 0.01 * torch.randn(n, obs_dim, generator=g)
    rew = (obs[:, :1] - act[:, :1] ** 2)
    return TensorDict({"observation": obs, "action": act,
                       "next": {"observation": nxt, "reward": rew}}, batch_size=[n])


def test_shapes_dtypes_and_members():
    ens = DynamicsEnsemble(3, 2, num_members=4, num_elites=2, hidden_sizes=(16, 16), weight_decay=(0, 0, 0), seed=0)
    obs, act = torch.randn(6, 3), torch.randn(6, 2)
    mean, std = ens(obs, act)
    assert mean.shape == std.shape == (4, 6, 4) and mean.dtype == torch.float32
    assert (std > 0).all()
    assert ens(obs, act, members="elites")[0].shape == (2, 6, 4)
    chunked = ens(obs, act, chunk_size=4)[0]
    torch.testing.assert_close(chunked, mean)
    member = torch.tensor([0, 3, 1, 1, 2, 0])
    m1, s1 = ens.forward_member(obs, act, member)
    torch.testing.assert_close(m1, mean[member, torch.arange(6)])
    torch.testing.assert_close(s1, std[member, torch.arange(6)])


def test_bad_inputs():
    ens = DynamicsEnsemble(3, 2, num_members=2, num_elites=1, hidden_sizes=(8,), weight_decay=(0, 0))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        ens(torch.randn(4, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="num_elites"):
        DynamicsEnsemble(3, 2, num_members=2, num_elites=3)
    bad = toy_transitions(10)
    bad["next", "reward"][3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        ens.fit(bad)
    with pytest.raises(ValueError, match="lack keys"):
        ens.fit(bad.exclude(("next", "reward")))


def test_seeded_init_is_reproducible():
    a, b = DynamicsEnsemble(3, 2, seed=1), DynamicsEnsemble(3, 2, seed=1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_fit_lowers_holdout_error_and_saves(tmp_path):
    data = toy_transitions()
    ens = DynamicsEnsemble(3, 2, num_members=3, num_elites=2, hidden_sizes=(32, 32), weight_decay=(0, 0, 0), seed=0)
    metrics = ens.fit(data, max_epochs=15, seed=0)
    assert max(metrics["holdout_mse_final"]) < 0.5 * min(metrics["holdout_mse_initial"])
    assert len(metrics["elites"]) == 2 and 1 <= metrics["epochs"] <= 15
    ens.save(tmp_path / "e.pt")
    loaded = DynamicsEnsemble.load(tmp_path / "e.pt")
    obs, act = data["observation"][:5], data["action"][:5]
    torch.testing.assert_close(loaded(obs, act)[0], ens(obs, act)[0])
    assert torch.equal(loaded.elite_indices, ens.elite_indices)
    with pytest.raises(FileNotFoundError):
        DynamicsEnsemble.load(tmp_path / "missing.pt")


def test_fit_on_real_hopper_data_lowers_holdout_error():
    from cmbrl import load_dataset, make_dataset

    make_dataset("cmbrl/hopper/medium-v0", num_steps=3_000, seed=0)  # the shipped policy in real Hopper-v5
    data = load_dataset("cmbrl/hopper/medium-v0")
    ens = DynamicsEnsemble(11, 3, num_members=3, num_elites=2, hidden_sizes=(64, 64), weight_decay=(0, 0, 0), seed=0)
    metrics = ens.fit(data, max_epochs=8, seed=0)
    assert metrics["holdout_mse"][-1] < metrics["holdout_mse"][0]
    assert max(metrics["holdout_mse_final"]) < 0.5 * min(metrics["holdout_mse_initial"])
    mean, std = ens(data["observation"][:10], data["action"][:10], members="elites")
    assert mean.shape == (2, 10, 12) and torch.isfinite(std).all()


def test_fit_is_reproducible_with_a_seed():
    data = toy_transitions(600)
    kwargs = dict(num_members=2, num_elites=1, hidden_sizes=(16,), weight_decay=(0, 0), seed=3)
    a, b = DynamicsEnsemble(3, 2, **kwargs), DynamicsEnsemble(3, 2, **kwargs)
    ma, mb = a.fit(data, max_epochs=2, seed=7), b.fit(data, max_epochs=2, seed=7)
    assert ma["holdout_mse"] == mb["holdout_mse"]
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    c = DynamicsEnsemble(3, 2, **kwargs)
    assert c.fit(data, max_epochs=2, seed=8)["holdout_mse"] != ma["holdout_mse"]
