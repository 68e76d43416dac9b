"""The learners (SAC, AWAC, COMBO, BC) and the explorers on any torch device, eager and compiled (issue 26).

Device-parametrised tests run on ``cpu`` and, where torch sees one, ``cuda`` (the ``device`` fixture of
``conftest.py``; ``pytest -m cuda`` runs the CUDA half). Compiled-vs-eager equality uses the fast ``aot_eager``
backend in the default suite and real inductor under ``-m slow``.
"""
from __future__ import annotations

import io

import math

import pytest
import torch
import torch._inductor.config
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from cmbrl import AWAC, BC, COMBO, SAC
from cmbrl.agents import OptimisticExplorer, make_explorer, make_explorers
from cmbrl.agents._common import _optimizer_state_to, on_device
from cmbrl.components.devices import resolve_device

HIDDEN = (32, 32)
# compiles in seconds (dynamo + AOTAutograd, no inductor code generation); fullgraph: the loss has no graph break
# (the compiled update's only breaks are the backward and torch.optim's own around each step, not covered by it)
AOT_EAGER = {"backend": "aot_eager", "fullgraph": True}
LEARNERS = ("sac", "awac", "combo", "bc")


def make(name: str, **kwargs):
    """A small learner (hidden 32, O=11, A=3), seed 0."""
    if name == "sac":
        return SAC(11, 3, hidden_sizes=HIDDEN, seed=0, **kwargs)
    if name == "awac":
        return AWAC(11, 3, hidden_sizes=HIDDEN, actor_hidden_sizes=HIDDEN, seed=0, **kwargs)
    if name == "combo":
        return COMBO(11, 3, hidden_sizes=HIDDEN, num_action_samples=3, seed=0, **kwargs)
    return BC(11, 3, hidden_sizes=HIDDEN, seed=0, **kwargs)


def make_batch(n: int = 32, seed: int = 0, device: torch.device | str = "cpu") -> TensorDict:
    """Transitions with TorchRL's keys plus COMBO's ``is_real`` (half the rows), on ``device``."""
    g = torch.Generator().manual_seed(seed)
    batch = TensorDict({"observation": torch.randn(n, 11, generator=g),
                        "action": torch.rand(n, 3, generator=g) * 2 - 1,
                        "is_real": (torch.arange(n) < n // 2).unsqueeze(-1),
                        "next": {"observation": torch.randn(n, 11, generator=g),
                                 "reward": torch.randn(n, 1, generator=g),
                                 "terminated": torch.rand(n, 1, generator=g) < 0.25,
                                 "done": torch.zeros(n, 1, dtype=torch.bool)}}, batch_size=[n])
    return batch.to(device)


def optimizers(agent) -> dict:
    return {name: getattr(agent, name) for name in getattr(agent, "OPTIMIZERS", ("actor_optim",))}


def state_tensors(agent):
    """``(name, tensor)`` for every module tensor and every optimiser state tensor of ``agent``."""
    for key, value in agent.state_dict()["modules"].items():
        yield key, value
    for name, optim in optimizers(agent).items():
        for i, state in enumerate(optim.state.values()):
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    yield f"{name}.{i}.{key}", value


def assert_same_state(a, b, **tolerance):
    """Equal module tensors and optimiser states (``b`` compared on ``a``'s device)."""
    pairs = list(zip(state_tensors(a), state_tensors(b), strict=True))
    for (key, x), (key_b, y) in pairs:
        assert key == key_b
        torch.testing.assert_close(x, y.to(x.device), msg=lambda m, key=key: f"{key}: {m}", **tolerance)


@pytest.fixture
def dev(device) -> torch.device:
    """conftest's ``device`` with its index (``cuda`` -> ``cuda:0``), as ``agent.device`` and ``tensor.device``."""
    return resolve_device(device)


# ---------------------------------------------------------------------------------------------------------------
# placement


@pytest.mark.parametrize("name", LEARNERS)
def test_update_runs_on_the_device_and_everything_stays_there(dev, name):
    agent = make(name, device=dev)
    assert agent.device == dev
    metrics = agent.update(make_batch(device=dev))
    assert metrics and all(type(value) is float for value in metrics.values())
    lazy = agent.update(make_batch(seed=1, device=dev), sync=False)
    assert lazy.keys() == metrics.keys()
    assert all(value.ndim == 0 and value.device == dev and not value.requires_grad for value in lazy.values())
    for key, tensor in state_tensors(agent):
        if key.endswith(".step") and not agent.cudagraphs:
            assert tensor.device.type == "cpu", key  # torch keeps a non-capturable Adam's step count on the CPU
        else:
            assert tensor.device == dev, key
    td = agent.policy(TensorDict({"observation": torch.randn(4, 11, device=dev)}, [4]))
    assert td["action"].device == dev


@pytest.mark.parametrize("name", ("sac", "awac", "combo"))
def test_batch_elsewhere_is_moved_once_and_priority_lands_on_the_device(dev, name):
    agent = make(name, device=dev)
    batch = make_batch()  # on the CPU, whatever the learner's device
    agent.update(batch)
    moved = on_device(batch, dev)
    assert moved.get("observation").device == dev
    same = make_batch(device=dev)
    assert on_device(same, dev) is same  # the fast path: no copy
    agent.update(same)
    assert same.get("td_error").shape == (32,) and same.get("td_error").device == dev


def test_on_device_refuses_a_non_tensordict():
    with pytest.raises(TypeError, match="TensorDict.*dict"):
        on_device({"observation": torch.zeros(2, 11)}, torch.device("cpu"))


def test_same_seed_same_initial_weights_on_every_device(dev):
    cpu, there = SAC(11, 3, hidden_sizes=HIDDEN, seed=3), SAC(11, 3, hidden_sizes=HIDDEN, seed=3, device=dev)
    assert_same_state(cpu, there, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# compiled == eager


def run_updates(agent, dev, updates: int = 3) -> list[dict[str, float]]:
    out = []
    for i in range(updates):
        torch.manual_seed(100 + i)
        out.append(agent.update(make_batch(seed=i, device=dev)))
    return out


def check_compiled_matches_eager(name, dev, compile):
    torch._dynamo.reset()
    eager, compiled = make(name, device=dev), make(name, device=dev, compile=compile)
    # inductor draws its own random numbers unless told to call aten's: the two runs must sample alike
    with torch._inductor.config.patch(fallback_random=True):
        expected, got = run_updates(eager, dev), run_updates(compiled, dev)
    for step, (e, g) in enumerate(zip(expected, got)):
        assert e.keys() == g.keys()
        for key in e:
            assert g[key] == pytest.approx(e[key], rel=1e-4, abs=1e-5), (step, key)
    assert_same_state(eager, compiled, rtol=1e-4, atol=1e-5)
    lazy = compiled.update(make_batch(seed=7, device=dev), sync=False)
    assert all(value.ndim == 0 and value.device == dev for value in lazy.values())


@pytest.mark.parametrize("name", LEARNERS)
def test_compiled_update_matches_eager_aot_eager(dev, name):
    check_compiled_matches_eager(name, dev, AOT_EAGER)


@pytest.mark.parametrize("name", ("sac", "combo"))
def test_compiled_update_reused_batch_does_not_recompile(name):
    """The loss writes its priority into the batch; a batch given again (or a fresh one) must not change the
    structure the compiled graph was traced with (it did: ``td_error`` made every reused batch a recompilation)."""
    torch._dynamo.reset()
    agent = make(name, compile=AOT_EAGER)
    for seed in range(2):  # the first two updates compile (Adam's state is created at the first step)
        agent.update(make_batch(seed=seed))
    batch = make_batch(seed=5)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = agent.update(batch)
        agent.update(batch)  # now holds td_error from the previous call
        agent.update(make_batch(seed=6))
    assert "td_error" in batch.keys() and batch["td_error"].shape == (32,)
    assert all(math.isfinite(value) for value in first.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNERS)
def test_compiled_update_matches_eager_inductor(dev, name):
    check_compiled_matches_eager(name, dev, True)


def test_compile_swaps_the_fused_critic_for_autograd():
    """``_StackedReluMLP`` (eager's fast critic backward) breaks dynamo: compiled learners use autograd."""
    assert make("sac").loss_module._fused is True and make("combo").loss_module._fused is True
    assert make("sac", compile=AOT_EAGER).loss_module._fused is False
    assert make("combo", compile=True).loss_module._fused is False


# ---------------------------------------------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize("name", LEARNERS)
def test_checkpoint_loads_on_the_cpu_with_map_location(dev, name):
    agent = make(name, device=dev)
    for i in range(2):
        agent.update(make_batch(seed=i, device=dev))
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    clone = make(name, device="cpu")
    clone.load_state_dict(torch.load(buffer, map_location=clone.device, weights_only=False))
    assert_same_state(clone, agent, rtol=0, atol=0)
    for _, tensor in state_tensors(clone):
        assert tensor.device.type == "cpu"
    clone.update(make_batch(seed=5))  # and it trains on there


def test_loaded_optimizer_state_follows_the_learner_not_the_checkpoint():
    """A CUDA-graph checkpoint (``capturable=True``, ``step`` on the GPU) loaded into a CPU learner: the flag and
    the step counters are this learner's (simulated on the CPU: the flag is what changes)."""
    param = torch.nn.Parameter(torch.zeros(3))
    optim = torch.optim.Adam([param], foreach=True)
    param.grad = torch.ones(3)
    optim.step()
    state = optim.state_dict()
    state["param_groups"][0]["capturable"] = True
    state["state"][0]["step"] = state["state"][0]["step"].reshape(1)[0].to(torch.float64)
    optim.load_state_dict(state)
    _optimizer_state_to(optim, torch.device("cpu"), capturable=False)
    assert optim.param_groups[0]["capturable"] is False
    assert optim.state[param]["step"].device.type == "cpu"
    optim.step()  # a non-capturable CPU Adam accepts it


# ---------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error on machines without CUDA")
@pytest.mark.parametrize("name", LEARNERS)
def test_cuda_without_cuda_is_a_clear_error(name):
    with pytest.raises(ValueError, match="'cuda'.*available: cpu"):
        make(name, device="cuda")


@pytest.mark.parametrize("name", LEARNERS)
def test_cudagraphs_off_cuda_is_a_clear_error(name):
    with pytest.raises(ValueError, match="cudagraphs=True needs a CUDA device.*'cpu'"):
        make(name, device="cpu", cudagraphs=True)


@pytest.mark.parametrize("bad", (1, 0.5, ["inductor"]))
def test_bad_compile_option_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="compile must be a bool, a torch.compile mode string or a dict"):
        make("sac", compile=bad)


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        make("awac", device="tpu")


# ---------------------------------------------------------------------------------------------------------------
# explorers


def test_explorers_follow_the_learner_device(dev):
    agent = make("awac", device=dev)
    states = TensorDict({"observation": torch.randn(5, 11, device=dev)}, [5], device=dev)
    generator = torch.Generator(device=dev).manual_seed(0)
    explorer = OptimisticExplorer(agent.policy, agent, num_candidates=8, generator=generator)
    out = explorer(states.clone())
    for key in ("action", "explorer_score", "policy_score"):
        assert out[key].device == dev, key
    assert (out["action"].abs() <= 1).all()
    gaussian = make_explorer("gaussian", agent.policy)
    assert gaussian(states.clone())["action"].device == dev
    switchable = make_explorers(agent.policy, agent, active="gaussian")
    td = switchable(TensorDict({"observation": torch.randn(5, 11, device=dev)}, [5]))  # no tensordict device
    assert td["explorer_score"].device == dev and td["explorer_score"].isnan().all()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert switchable(states.clone())["action"].device == dev


def test_explorer_generator_on_another_device_still_works():
    agent = make("awac")
    explorer = OptimisticExplorer(agent.policy, agent, num_candidates=4, generator=torch.Generator().manual_seed(0))
    assert explorer(TensorDict({"observation": torch.randn(3, 11)}, [3]))["action"].shape == (3, 3)


def test_distribution_checks_are_restored_after_an_off_cpu_or_compiled_update():
    from cmbrl.agents._common import no_distribution_validation

    before = torch.distributions.Distribution._validate_args
    with no_distribution_validation():
        assert torch.distributions.Distribution._validate_args is False
    assert torch.distributions.Distribution._validate_args == before
