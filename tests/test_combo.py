"""COMBOLoss and COMBO: the regulariser against a hand computation, the SAC limit, gradient routing, the priors,
shapes, argument checks, state dicts, and a resumable smoke run of examples/combo.py."""
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import SACLoss

from cmbrl import COMBO, COMBOLoss, make_dataset, make_sac_actor
from cmbrl.agents._common import _StackedReluMLP

ROOT = Path(__file__).resolve().parents[1]
O, A, B = 3, 2, 8
# the losses here run without a SoftUpdate on purpose (the component tests have one)
pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")


def make_batch(batch_size=B, num_real=B // 2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({
        "observation": torch.randn(batch_size, O, generator=g),
        "action": torch.rand(batch_size, A, generator=g) * 2 - 1,
        "is_real": (torch.arange(batch_size) < num_real).unsqueeze(-1),
        "next": {"observation": torch.randn(batch_size, O, generator=g),
                 "reward": torch.randn(batch_size, 1, generator=g),
                 "terminated": torch.rand(batch_size, 1, generator=g) < 0.2,
                 "done": torch.zeros(batch_size, 1, dtype=torch.bool)}}, batch_size=[batch_size])


def make_critic(activation=nn.ReLU, cells=(16,)):
    return ValueOperator(MLP(in_features=O + A, out_features=1, num_cells=list(cells), activation_class=activation),
                         in_keys=["observation", "action"])


class _PlainCritic(nn.Module):  # not an MLP: COMBOLoss must fall back to TorchRL's vmap
    def __init__(self):
        super().__init__()
        self.obs, self.act = nn.Linear(O, 8), nn.Linear(A, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, observation, action):
        return self.out(torch.relu(self.obs(observation) + self.act(action)))


def make_loss(critic=None, **kwargs):
    torch.manual_seed(0)
    actor = make_sac_actor(O, A, (16,), log_std_bounds=(-5.0, 2.0))
    return COMBOLoss(actor, critic if critic is not None else make_critic(), **kwargs)


def hand_q(params, obs, act, activation):
    """Q_j(s, a) of stacked MLP critics, one row at a time, straight from the parameter tensors."""
    layers = sorted({key[1] for key in params.keys(True, True)}, key=int)
    values = []
    for j in range(params.batch_size[0]):
        x = torch.cat([obs, act])
        for i, name in enumerate(layers):
            x = params["module", name, "weight"][j] @ x + params["module", name, "bias"][j]
            if i < len(layers) - 1:
                x = activation(x)
        values.append(x.item())
    return values


@pytest.mark.parametrize("critic_kind", ["relu_mlp", "tanh_mlp", "plain_module"])
@pytest.mark.parametrize("rho", ["model", "mixed"])
def test_regulariser_equals_hand_computation(critic_kind, rho, monkeypatch):
    critic = {"relu_mlp": lambda: make_critic(nn.ReLU), "tanh_mlp": lambda: make_critic(nn.Tanh),
              "plain_module": lambda: TensorDictModule(_PlainCritic(), ["observation", "action"],
                                                       ["state_action_value"])}[critic_kind]()
    n, beta = 2, 0.7
    loss = make_loss(critic, beta=beta, num_action_samples=n, rho=rho, temperature=1.0)
    batch = make_batch()
    rho_rows = list(range(B // 2, B)) if rho == "model" else list(range(B))
    g = torch.Generator().manual_seed(1)
    fixed_actions = torch.rand(3 * n, len(rho_rows), A, generator=g) * 2 - 1
    fixed_log_density = torch.randn(3 * n, len(rho_rows), generator=g)
    monkeypatch.setattr(loss, "_cql_actions", lambda *args: (fixed_actions, fixed_log_density))
    out = loss(batch)

    params = loss.qvalue_network_params.data
    if critic_kind == "plain_module":
        def q_of(obs, act):
            with loss.qvalue_network_params.data[0].to_module(loss.qvalue_network):
                first = loss.qvalue_network.module(obs, act).item()
            with loss.qvalue_network_params.data[1].to_module(loss.qvalue_network):
                second = loss.qvalue_network.module(obs, act).item()
            return [first, second]
    else:
        activation = torch.relu if critic_kind == "relu_mlp" else torch.tanh
        def q_of(obs, act):
            return hand_q(params, obs, act, activation)
    expected_gap = []
    for j in range(2):
        pushdown = []
        for col, row in enumerate(rho_rows):
            terms = [q_of(batch["observation"][row], fixed_actions[k, col])[j] - fixed_log_density[k, col].item()
                     for k in range(3 * n)]
            top = max(terms)
            pushdown.append(top + math.log(sum(math.exp(t - top) for t in terms)))  # over all 3n samples
        pushup = [q_of(batch["observation"][i], batch["action"][i])[j] for i in range(B // 2)]  # real rows only
        expected_gap.append(sum(pushdown) / len(pushdown) - sum(pushup) / len(pushup))
    assert out["loss_cql"].item() == pytest.approx(beta * sum(expected_gap), rel=1e-5, abs=1e-5)
    assert out["cql_gap"].item() == pytest.approx(sum(expected_gap) / 2, rel=1e-5, abs=1e-5)
    assert out["beta"].item() == pytest.approx(beta)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_scales_the_log_sum_exp(temperature, monkeypatch):
    loss = make_loss(beta=1.0, num_action_samples=1, temperature=temperature)
    batch = make_batch()
    actions = torch.rand(3, B // 2, A) * 2 - 1
    log_density = torch.zeros(3, B // 2)
    monkeypatch.setattr(loss, "_cql_actions", lambda *args: (actions, log_density))
    out = loss(batch)
    obs = batch["observation"][B // 2:]
    q = loss.qvalues({"observation": obs}, actions, loss.qvalue_network_params).detach()  # (2, 3, B/2)
    q_real = loss.qvalues({"observation": batch["observation"][:B // 2]}, batch["action"][:B // 2],
                          loss.qvalue_network_params).detach()
    expected = (temperature * torch.logsumexp(q / temperature, 1)).mean(-1) - q_real.mean(-1)
    assert out["loss_cql"].item() == pytest.approx(expected.sum().item(), rel=1e-5)


def test_sampled_actions_and_their_densities():
    n = 4
    loss = make_loss(num_action_samples=n)
    batch = make_batch()
    actor_td = batch.select("observation").clone()
    next_actor_td = batch["next"].select("observation").clone()
    loss.actor_network.get_dist(actor_td), loss.actor_network.get_dist(next_actor_td)  # writes loc and scale
    rows = torch.arange(B // 2, B)
    actions, log_density = loss._cql_actions(batch, actor_td, next_actor_td, rows)
    assert actions.shape == (3 * n, B // 2, A) and log_density.shape == (3 * n, B // 2)
    assert not actions.requires_grad and not log_density.requires_grad
    assert (actions.abs() <= 1).all()
    # π(·|s) samples, then π(·|s') samples, each scored by its own proposal (importance weights)
    live_s = loss.actor_network.build_dist_from_params(actor_td.select("loc", "scale")[rows].detach())
    live_next = loss.actor_network.build_dist_from_params(next_actor_td.select("loc", "scale")[rows].detach())
    torch.testing.assert_close(log_density[:n], live_s.log_prob(actions[:n]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_density[n:2 * n], live_next.log_prob(actions[n:2 * n]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_density[2 * n:], torch.full((n, B // 2), -A * math.log(2.0)))


@pytest.mark.parametrize("n", [1, 3, 7])
@pytest.mark.parametrize("rho", ["model", "mixed"])
def test_batched_shapes_for_any_number_of_samples(n, rho):
    loss = make_loss(num_action_samples=n, rho=rho, prior="previous_policy")
    batch = make_batch(batch_size=10, num_real=3)
    rows = None if rho == "mixed" else torch.arange(3, 10)
    actor_td, next_actor_td = batch.select("observation").clone(), batch["next"].select("observation").clone()
    loss.actor_network.get_dist(actor_td), loss.actor_network.get_dist(next_actor_td)
    actions, log_density = loss._cql_actions(batch, actor_td, next_actor_td, rows)
    states = 10 if rho == "mixed" else 7
    assert actions.shape == (3 * n, states, A) and log_density.shape == (3 * n, states)
    q = loss.qvalues({"observation": batch["observation"][:states]}, actions, loss.qvalue_network_params)
    assert q.shape == (2, 3 * n, states)
    out = loss(batch)
    assert set(out.keys()) == set(COMBOLoss.METRICS) and all(out[k].shape == () for k in COMBOLoss.METRICS)
    assert batch["td_error"].shape == (10,)


def test_beta_zero_is_sacs_critic_loss_exactly():
    torch.manual_seed(0)
    actor = make_sac_actor(O, A, (16,), log_std_bounds=(-5.0, 2.0))
    critic = make_critic()
    sac = SACLoss(actor, critic, num_qvalue_nets=2, loss_function="l2", action_spec=actor.spec["action"])
    sac.make_value_estimator(gamma=0.99)
    combo = COMBOLoss(actor, critic, beta=0.0, deterministic_backup=False, gamma=0.99)
    combo.qvalue_network_params.data.copy_(sac.qvalue_network_params.data)  # SACLoss resamples the expanded critics
    combo.target_qvalue_network_params.data.copy_(sac.target_qvalue_network_params.data)
    batch = make_batch()
    torch.manual_seed(3)
    expected = sac(batch.clone())
    sac_grads = torch.autograd.grad(expected["loss_qvalue"], list(sac.qvalue_network_params.values(True, True)))
    torch.manual_seed(3)
    got = combo(batch.clone())
    critic_loss = got["loss_qvalue"] + got["loss_cql"]
    grads = torch.autograd.grad(critic_loss, list(combo.qvalue_network_params.values(True, True)))
    assert got["loss_cql"].item() == 0.0 and got["beta"].item() == 0.0
    torch.testing.assert_close(critic_loss, expected["loss_qvalue"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["loss_actor"], expected["loss_actor"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["loss_alpha"], expected["loss_alpha"], rtol=1e-6, atol=1e-6)
    for mine, theirs in zip(grads, sac_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_deterministic_backup_drops_the_entropy_term():
    batch = make_batch()
    losses = {}
    for deterministic in (True, False):
        loss = make_loss(beta=0.0, deterministic_backup=deterministic)
        loss.log_alpha.data.fill_(math.log(5.0))  # a large α makes the entropy term visible
        torch.manual_seed(1)
        losses[deterministic] = loss(batch.clone())["loss_qvalue"].item()
    assert losses[True] != pytest.approx(losses[False], rel=1e-3)


@pytest.mark.parametrize("learn_beta", [False, True])
def test_critic_loss_gradients_reach_only_the_critics(learn_beta):
    loss = make_loss(beta=2.0, learn_beta=learn_beta, prior="previous_policy")
    out = loss(make_batch())
    (out["loss_qvalue"] + out["loss_cql"]).backward()
    for name, param in loss.named_parameters():
        if name.startswith("qvalue_network_params"):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None or param.grad.abs().sum() == 0, name
    for name, buffer in loss.named_buffers():
        assert not buffer.requires_grad, name
    loss.zero_grad(set_to_none=True)
    out = loss(make_batch())
    out["loss_actor"].backward()
    for name, param in loss.named_parameters():
        assert (param.grad is not None and param.grad.abs().sum() > 0) == name.startswith("actor_network_params"), name
    if learn_beta:
        loss.zero_grad(set_to_none=True)
        loss(make_batch())["loss_beta"].backward()
        assert [name for name, p in loss.named_parameters() if p.grad is not None] == ["log_beta"]


def test_learned_beta_follows_the_gap():
    agent = COMBO(O, A, hidden_sizes=(16,), learn_beta=True, beta=1.0, beta_lr=0.1, beta_threshold=-100.0, seed=0)
    metrics = agent.update(make_batch())
    assert metrics["cql_gap"] > -100.0 and agent.loss_module.beta.item() > 1.0  # gap above τ: β grows
    agent = COMBO(O, A, hidden_sizes=(16,), learn_beta=True, beta=1.0, beta_lr=0.1, beta_threshold=100.0, seed=0)
    agent.update(make_batch())
    assert agent.loss_module.beta.item() < 1.0


def test_previous_policy_prior_uses_the_stored_copy():
    n = 5
    loss = make_loss(num_action_samples=n, prior="previous_policy")
    stored = loss.prior_actor_network_params.data.clone()
    with torch.no_grad():
        for param in loss.actor_network_params.values(True, True):
            param.add_(0.5 * torch.randn_like(param))  # the live actor moves on
    batch = make_batch()
    actor_td, next_actor_td = batch.select("observation").clone(), batch["next"].select("observation").clone()
    loss.actor_network.get_dist(actor_td), loss.actor_network.get_dist(next_actor_td)
    rows = torch.arange(B // 2, B)
    actions, log_density = loss._cql_actions(batch, actor_td, next_actor_td, rows)
    obs = TensorDict({"observation": batch["observation"][rows]}, [B // 2])
    with stored.to_module(loss.actor_network):
        prior_dist = loss.actor_network.get_dist(obs.clone())
    live_dist = loss.actor_network.get_dist(obs.clone())
    torch.testing.assert_close(log_density[2 * n:], prior_dist.log_prob(actions[2 * n:]), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(log_density[2 * n:], live_dist.log_prob(actions[2 * n:]), rtol=1e-2, atol=1e-2)
    loss.update_prior()
    for prior, live in zip(loss.prior_actor_network_params.values(True, True),
                           loss.actor_network_params.values(True, True)):
        assert torch.equal(prior, live) and prior is not live


def test_the_component_refreshes_the_prior_every_interval():
    agent = COMBO(O, A, hidden_sizes=(16,), prior="previous_policy", prior_update_interval=2, seed=0)
    loss = agent.loss_module

    def prior_is_live():
        return all(torch.equal(p, q) for p, q in zip(loss.prior_actor_network_params.values(True, True),
                                                     loss.actor_network_params.values(True, True)))

    assert prior_is_live()
    agent.update(make_batch())
    assert not prior_is_live()  # the actor stepped, the copy did not
    agent.update(make_batch())
    assert prior_is_live() and int(agent.num_updates) == 2
    with pytest.raises(RuntimeError, match="previous_policy"):
        make_loss().update_prior()


@pytest.mark.parametrize("kwargs, match", [
    ({"prior": "gaussian"}, "prior must be one of .*'gaussian'"),
    ({"rho": "real"}, "rho must be one of .*'real'"),
    ({"num_action_samples": 0}, "num_action_samples must be an integer >= 1, got 0"),
    ({"num_action_samples": 2.5}, "got 2.5"),
    ({"beta": -1.0}, "beta must be a finite number >= 0, got -1.0"),
    ({"beta": 0.0, "learn_beta": True}, "must be > 0 with learn_beta=True, got 0.0"),
    ({"temperature": 0.0}, "temperature must be a positive number, got 0.0"),
    ({"gamma": 1.5}, r"gamma must be in \[0, 1\], got 1.5"),
    ({"num_qvalue_nets": 0}, "num_qvalue_nets must be an integer >= 1, got 0"),
    ({"max_beta": 1.0, "beta": 5.0}, "max_beta must be > 0 and >= beta=5.0, got 1.0"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_loss(**kwargs)


def test_bad_component_arguments_and_batches_raise():
    with pytest.raises(ValueError, match="prior_update_interval must be an integer >= 1, got 0"):
        COMBO(O, A, prior_update_interval=0)
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\], got 0"):
        COMBO(O, A, tau=0)
    loss = make_loss()
    with pytest.raises(KeyError, match="is_real"):
        loss(make_batch().exclude("is_real"))
    with pytest.raises(ValueError, match="no real row"):
        loss(make_batch(num_real=0))
    with pytest.raises(ValueError, match="no model row"):
        loss(make_batch(num_real=B))
    assert make_loss(rho="mixed")(make_batch(num_real=B))["loss_cql"].isfinite()
    with pytest.raises(NotImplementedError, match="gamma"):
        loss.make_value_estimator(gamma=0.9)


def test_fused_critic_gradients_match_autograd():
    torch.manual_seed(0)
    num_q, rows, sizes = 3, 20, [4, 6, 5, 1]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params += [torch.randn(num_q, fan_out, fan_in, dtype=torch.float64, requires_grad=True),
                   torch.randn(num_q, fan_out, dtype=torch.float64, requires_grad=True)]
    x = torch.randn(rows, sizes[0], dtype=torch.float64, requires_grad=True)
    workspace = {}
    assert torch.autograd.gradcheck(lambda x, *p: _StackedReluMLP.apply(workspace, x, *p), (x, *params))
    first = _StackedReluMLP.apply(workspace, x, *params)
    second = _StackedReluMLP.apply(workspace, x, *params)  # the first graph is alive: no buffer is shared
    g1 = torch.autograd.grad(first.sum(), params)
    g2 = torch.autograd.grad(second.sum(), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_state_dict_round_trip_resumes_exactly():
    kwargs = dict(hidden_sizes=(16,), prior="previous_policy", prior_update_interval=3, learn_beta=True)
    agent = COMBO(O, A, seed=0, **kwargs)
    for i in range(4):
        agent.update(make_batch(seed=i))
    state = copy.deepcopy(agent.state_dict())
    assert set(state["optimizers"]) == {"actor_optim", "critic_optim", "alpha_optim", "beta_optim"}
    other = COMBO(O, A, seed=1, **kwargs)
    other.load_state_dict(state)
    for (name, mine), theirs in zip(agent.state_dict()["modules"].items(), other.state_dict()["modules"].values()):
        assert torch.equal(mine, theirs), name
    torch.manual_seed(7)
    first = [agent.update(make_batch(seed=10 + i)) for i in range(3)]
    torch.manual_seed(7)
    second = [other.update(make_batch(seed=10 + i)) for i in range(3)]
    assert first == second


@pytest.fixture
def small_hopper_dataset():
    make_dataset("cmbrl/hopper/medium-v0", num_steps=2_000, seed=0)
    return "cmbrl/hopper/medium-v0"


def test_combo_example_smoke_resumes(small_hopper_dataset, tmp_path):
    out = tmp_path / "combo"
    common = ["--dataset", small_hopper_dataset, "--rollout-every", "10", "--rollout-batch-size", "50",
              "--eval-every", "10", "--eval-episodes", "1", "--ensemble-max-epochs", "1", "--batch-size", "32",
              "--num-action-samples", "2", "--progress", "0", "--out", str(out)]

    def run(*argv):
        cmd = [sys.executable, str(ROOT / "examples" / "combo.py"), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)

    first = run("--num-steps", "10", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "β=5.0, h=5" in first.stdout  # OfflineRL-Kit's hopper-medium row
    assert torch.load(out / "checkpoint_seed0.pt", weights_only=False)["step"] == 10
    second = run("--num-steps", "20", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "fit dynamics ensemble" not in second.stderr
    record = json.loads((out / "result.json").read_text())  # the learning benchmark's cell contract
    assert [h["step"] for h in record["history"]] == [10, 20]  # resumed at 10, not restarted
    assert record["normalized_score"] == record["history"][-1]["normalized_score"] and record["wall_time_s"] > 0
    assert record["args"]["beta"] == 5.0 and record["args"]["real_ratio"] == 0.5
    for key in ("q_data", "mc_return", "q_minus_mc", "model_reward", "model_terminated", "alpha", "beta", "cql_gap",
                "policy_gap", "loss_cql"):
        assert key in record["history"][-1], key
    assert record["history"][-1]["model_penalty"] == 0.0  # COMBO's model MDP has no reward penalty
    assert (out / "learning_curve_seed0.png").stat().st_size > 0
    assert (out / "logs" / "combo_seed0" / "scalars" / "cql_gap.csv").exists()
    refused = run("--num-steps", "20", "--beta", "1.0", *common)
    assert refused.returncode != 0 and "other settings" in refused.stderr
