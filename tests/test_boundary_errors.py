"""What a new user gets for a wrong input at each public entry point: an error that names the input, what was
expected and what was given (issue 28, item 5), instead of an AttributeError, a matmul size mismatch or a silently
wrong result from deep inside. Small networks only: the whole file runs in seconds."""
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from cmbrl import (AWAC, BC, COMBO, SAC, ConservativeModelEnv, GymVectorModelEnv, ModelEnv, get_penalty,
                   get_termination_fn, load_dataset, make_dataset)
from cmbrl.agents import OptimisticExplorer, make_explorers
from cmbrl.components.errors import MissingKeysError

from model_fixtures import ACT, OBS, healthy_starts, tiny_ensemble

B = 8
SMALL = {SAC: dict(hidden_sizes=(16,)), AWAC: dict(hidden_sizes=(16,), actor_hidden_sizes=(16,)),
         COMBO: dict(hidden_sizes=(16,), num_action_samples=2)}


def transitions(real: bool = False, obs: int = OBS, act: int = ACT) -> TensorDict:
    data = {"observation": torch.randn(B, obs), "action": torch.rand(B, act) * 2 - 1,
            "next": {"observation": torch.randn(B, obs), "reward": torch.randn(B, 1),
                     "terminated": torch.zeros(B, 1, dtype=torch.bool), "done": torch.zeros(B, 1, dtype=torch.bool)}}
    if real:  # COMBO: half dataset rows, half model rows
        data["is_real"] = (torch.arange(B) < B // 2).unsqueeze(-1)
    return TensorDict(data, batch_size=[B])


@pytest.fixture(scope="module", params=[SAC, AWAC, COMBO], ids=lambda c: c.__name__)
def learner(request):
    return request.param(OBS, ACT, seed=0, **SMALL[request.param])


def batch_for(agent, **kwargs) -> TensorDict:
    return transitions(real=isinstance(agent, COMBO), **kwargs)


def test_a_complete_batch_updates(learner):
    assert set(learner.update(batch_for(learner))) == set(learner.METRICS)


def test_a_batch_without_next_names_the_missing_and_the_expected_keys(learner):
    # was: AttributeError: 'NoneType' object has no attribute 'get' (SAC) / 'select' (AWAC)
    with pytest.raises(KeyError) as error:
        learner.update(batch_for(learner).exclude("next"))
    message = str(error.value)
    assert isinstance(error.value, MissingKeysError)
    assert f"{type(learner).__name__}.update: the batch is missing ('next', 'observation'), ('next', 'reward'), " \
           "('next', 'terminated')" in message
    assert "it expects 'observation' (B, 11), 'action' (B, 3)" in message
    assert "('next', 'reward') (B, 1)" in message and "the batch has keys ['observation', 'action'" in message


@pytest.mark.parametrize("key", ["action", ("next", "reward"), ("next", "terminated")])
def test_each_missing_key_is_named(learner, key):
    with pytest.raises(KeyError, match=f"missing {key!r}".replace("(", r"\(").replace(")", r"\)")):
        learner.update(batch_for(learner).exclude(key))


def test_combo_names_is_real():
    agent = COMBO(OBS, ACT, seed=0, **SMALL[COMBO])
    with pytest.raises(KeyError, match=r"missing 'is_real'; it expects .*'is_real' \(B, 1\) bool"):
        agent.update(transitions())


def test_wrong_widths_dtypes_and_types(learner):
    name = type(learner).__name__
    with pytest.raises(ValueError, match=rf"{name}.update: batch entry 'observation' must have shape \(B, 11\), "
                                         r"got \(8, 5\)"):
        learner.update(batch_for(learner, obs=5))  # was: mat1 and mat2 shapes cannot be multiplied
    with pytest.raises(ValueError, match=r"'action' must have shape \(B, 3\), got \(8, 2\)"):
        learner.update(batch_for(learner, act=2))
    with pytest.raises(ValueError, match=r"\('next', 'reward'\) must have shape \(B, 1\), got \(8,\)"):
        learner.update(batch_for(learner).set(("next", "reward"), torch.randn(B)))
    with pytest.raises(TypeError, match="'observation' must be floating point, got torch.int64"):
        learner.update(batch_for(learner).set("observation", torch.ones(B, OBS, dtype=torch.long)))
    with pytest.raises(TypeError, match="must be a TensorDict of transitions, got dict"):
        learner.update(dict(batch_for(learner).items()))


def test_bc_missing_key_is_a_key_error_and_still_a_value_error():
    agent = BC(OBS, ACT, hidden_sizes=(16,))
    with pytest.raises(KeyError, match=r"missing \['action'\]"):
        agent.update(transitions().exclude("action"))
    with pytest.raises(ValueError, match=r"missing \['action'\]"):  # what BC raised before
        agent.update(transitions().exclude("action"))


@pytest.fixture(scope="module")
def awac():
    return AWAC(OBS, ACT, hidden_sizes=(16,), actor_hidden_sizes=(16,), num_qvalue_nets=3, seed=0)


def test_explorers_name_missing_keys_and_widths(awac):
    o3f = OptimisticExplorer(awac.policy, awac, num_candidates=4)
    switchable = make_explorers(awac.policy, awac, active="none")
    for explorer, name in ((o3f, "OptimisticExplorer"), (switchable, "SwitchableExplorer")):
        with pytest.raises(KeyError, match=rf"{name}: the tensordict is missing 'observation'; the actor reads "
                                           r"'observation' \(\*B, 11\); the tensordict has keys \['obs'\]"):
            explorer(TensorDict({"obs": torch.randn(4, OBS)}, [4]))
        with pytest.raises(ValueError, match=r"'observation' must have shape \(\*B, 11\) .*got \(4, 5\)"):
            explorer(TensorDict({"observation": torch.randn(4, 5)}, [4]))  # was: mat1 and mat2 shapes ...
        with pytest.raises(TypeError, match="takes a TensorDict"):
            explorer({"observation": torch.randn(4, OBS)})
    for active in ("none", "gaussian", "o3f"):  # every member behind the switchable one
        switchable.use(active)
        assert switchable(TensorDict({"observation": torch.randn(4, OBS)}, [4]))["action"].shape == (4, ACT)
        with pytest.raises(ValueError, match=r"\(\*B, 11\)"):
            switchable(TensorDict({"observation": torch.randn(4, 5)}, [4]))


@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


@pytest.mark.parametrize("conservative", [False, True])
def test_model_env_step_names_the_action_shape(ensemble, conservative):
    env = (ConservativeModelEnv(ensemble, start_states=healthy_starts(), batch_size=6, seed=0) if conservative
           else ModelEnv(ensemble, healthy_starts(), batch_size=6, seed=0))
    td = env.reset()
    # was: RuntimeError: The size of tensor a (2) must match the size of tensor b (3) at non-singleton dimension 1
    with pytest.raises(ValueError, match=r"ModelEnv.step: the action has shape \(6, 2\); expected \(B, A\) = \(6, 3\)"):
        env.step(td.clone().set("action", torch.zeros(6, 2)))
    with pytest.raises(ValueError, match=r"the action has shape \(6,\); expected \(B, A\) = \(6, 3\)"):
        env.step(td.clone().set("action", torch.zeros(6)))
    with pytest.raises(KeyError, match=r"missing \['action'\]"):
        env.step(td.clone())
    with pytest.raises(ValueError, match=r"the observation has shape \(6, 5\); expected \(B, O\) = \(6, 11\)"):
        env.step(td.clone().set("observation", torch.zeros(6, 5)).set("action", torch.zeros(6, ACT)))
    # a float64 action (NumPy's default) is computed as float32, as the same action in float32
    out64 = env.step(td.clone().set("action", torch.zeros(6, ACT, dtype=torch.float64)))
    assert out64["next", "observation"].dtype == torch.float32


def test_gym_vector_step_names_the_action_shape(ensemble):
    env = GymVectorModelEnv(ConservativeModelEnv(ensemble, start_states=healthy_starts(), batch_size=6, seed=0))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must have shape \(num_envs, action_dim\) = \(6, 3\), got \(6, 2\)"):
        env.step(np.zeros((6, 2), np.float32))
    env.close()


def test_ensemble_forward_and_forward_member(ensemble):
    obs, act = torch.randn(5, OBS), torch.rand(5, ACT) * 2 - 1
    with pytest.raises(TypeError, match="must be torch tensors .*got ndarray and ndarray"):
        ensemble(obs.numpy(), act.numpy())  # was: AttributeError: 'str' object has no attribute 'type'
    with pytest.raises(ValueError, match=r"expected observation \(\.\.\., 11\) and action \(\.\.\., 3\)"):
        ensemble(obs, act[:, :2])
    mean64, std64 = ensemble(obs.double(), act.double())  # was: RuntimeError: Input dtypes must be the same
    mean, std = ensemble(obs, act)
    assert mean64.dtype == torch.float32 and torch.equal(mean64, mean) and torch.equal(std64, std)
    with pytest.raises(ValueError, match=r"member must be a \(B,\) = \(5,\) tensor .*got \(4,\)"):
        ensemble.forward_member(obs, act, torch.zeros(4, dtype=torch.long))  # was: silently accepted
    with pytest.raises(ValueError, match=r"member indices must be in \[0, 4\) .*got 9"):
        ensemble.forward_member(obs, act, torch.full((5,), 9))  # was: a RuntimeError about expanded sizes


def test_ensemble_fit_inputs():
    ensemble = tiny_ensemble()
    data = transitions()
    with pytest.raises(TypeError, match="transitions must be a TensorDict .*got dict"):
        ensemble.fit(dict(data.items()), max_epochs=1)  # was: dict.keys() takes no keyword arguments
    with pytest.raises(KeyError, match=r"transitions lack keys \[\('next', 'observation'\), \('next', 'reward'\)\]"):
        ensemble.fit(data.exclude("next"), max_epochs=1)
    with pytest.raises(ValueError, match=r"\('next', 'observation'\) must be \(N, 11\) .*got \(8, 4\)"):
        ensemble.fit(data.clone().set(("next", "observation"), torch.randn(B, 4)), max_epochs=1)
    with pytest.raises(ValueError, match=r"\('next', 'reward'\) must be \(N, 1\) or \(N,\) .*got \(8, 2\)"):
        ensemble.fit(data.clone().set(("next", "reward"), torch.randn(B, 2)), max_epochs=1)
    with pytest.raises(ValueError, match=r"holdout_ratio must be in \[0, 1\), got 1.5"):
        ensemble.fit(data, max_epochs=1, holdout_ratio=1.5)  # was: random_ expects 'from' to be less than 'to'
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        ensemble.fit(data, max_epochs=1, batch_size=0)  # was: range() arg 3 must not be zero


def test_penalties_check_their_shapes():
    mean, std, member = torch.zeros(4, 5, OBS + 1), torch.ones(4, 5, OBS + 1), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"max_aleatoric: mean and std must both be \(E, B, D\) .*got \(5, 12\)"):
        get_penalty("max_aleatoric")(mean[0], std[0], None)  # was: a 0-d result, silently
    with pytest.raises(ValueError, match=r"ensemble_std: .*got \(4, 5, 12\) and \(4, 5, 11\)"):
        get_penalty("ensemble_std")(mean, std[..., :-1], member)
    with pytest.raises(ValueError, match=r"combined reads the sampled member of each row: member must be \(B,\) = "
                                         r"\(5,\), got None"):
        get_penalty("combined")(mean, std, None)  # was: IndexError
    assert get_penalty("combined")(mean, std, member).shape == (5,)


@pytest.mark.parametrize("name, width", [("hopper", 11), ("walker2d", 17), ("halfcheetah", 17)])
def test_termination_functions_check_the_observation_width(name, width):
    fn = get_termination_fn(name)
    assert fn(torch.zeros(5, width), torch.zeros(5, 3), torch.zeros(5, width)).shape == (5,)
    with pytest.raises(ValueError, match=rf"{name}_termination reads next_observation \(B, {width}\).*got \(5, 4\)"):
        fn(torch.zeros(5, 4), torch.zeros(5, 3), torch.zeros(5, 4))  # was: a (5,) result, silently
    with pytest.raises(ValueError, match=rf"got \({width},\)"):
        fn(torch.zeros(width), torch.zeros(3), torch.zeros(width))


def test_model_env_refuses_a_termination_rule_of_another_width(ensemble):
    with pytest.raises(ValueError, match="termination_fn 'walker2d' reads 17-dimensional observations; the "
                                         "ensemble's observation_dim is 11"):
        ModelEnv(ensemble, healthy_starts(), batch_size=6, termination_fn="walker2d")  # was: accepted, wrong flags


def test_dataset_names(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # an empty Minari root: nothing is local
    with pytest.raises(TypeError, match="dataset_id must be a Minari id string .*got int"):
        load_dataset(3)  # was: TypeError: join() argument must be str, bytes, or os.PathLike object, not 'int'
    with pytest.raises(FileNotFoundError, match=r"Did you mean 'cmbrl/hopper/medium-v0'\?"):
        load_dataset("cmbrl/hopper/mediun-v0")
    with pytest.raises(FileNotFoundError, match=r"Did you mean 'cmbrl/walker2d/medium-replay-v0'\?"):
        load_dataset("walker2d-medium-replay-v0", download=False)
    with pytest.raises(ValueError, match=r"No cmbrl recipe for dataset 'hopper-mediun'. Did you mean "
                                         r"'cmbrl/hopper/medium-v0'\?"):
        make_dataset("hopper-mediun")
