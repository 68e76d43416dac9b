"""IQL side by side: CORL's IQL (https://github.com/tinkoff-ai/CORL, ``algorithms/offline/iql.py``) and cmbrl's
``IQL`` (TorchRL's ``IQLLoss``, as ``examples/finetune.py --base iql`` trains it offline) on the same cmbrl dataset,
budget and evaluation episodes.

    python benchmarks/peers/corl_iql.py --impl corl --corl-path ../CORL --seed 0 --out runs/corl_iql/corl_s0
    python benchmarks/peers/corl_iql.py --impl cmbrl --seed 0 --out runs/corl_iql/cmbrl_s0
    python benchmarks/peers/corl_iql.py --impl cmbrl --weights runs/ft_hcm_iql/finetune/cmbrl_halfcheetah_medium-v0/seed0/offline/agent.pt --seed 0 --out runs/corl_iql/cmbrl_s0_ft
    python benchmarks/peers/side_by_side.py --ours runs/corl_iql/cmbrl_s*/result.json \\
        --peer runs/corl_iql/corl_s*/result.json --peer-name CORL --keys normalized_score q_data \\
        --save benchmarks/results/iql_vs_corl_halfcheetah_medium

CORL is not a dependency and none of its code is here: ``--corl-path`` is a checkout, whose IQL module is imported
with its unused imports (d4rl, pyrallis, wandb) stubbed and Gymnasium serving ``gym``, and its networks, ``ImplicitQLearning`` trainer and
``ReplayBuffer`` used unchanged, built as its ``train()`` builds them (TwinQ, ValueFunction, GaussianPolicy with a
state-independent σ, Adam 3e-4, cosine actor-lr decay over ``--corl-max-steps``). CORL's halfcheetah-medium config
normalises states (``--corl-normalize 1``) and not rewards (``--corl-normalize-reward 0``); IQL's paper scales
locomotion rewards by 1000 / (max − min) episode return, which cmbrl's ``--base iql`` does by default, and does not
normalise states (cmbrl's default; ``--normalize-observations 1`` standardises them as CORL).

Both are evaluated by the same loop (``kit_common.evaluate``: deterministic, episode ``i`` reset with seed
``10,000·seed + i``, D4RL-normalised with the dataset's reference scores) every ``--eval-every`` updates, with
``q_data``: the mean over critics of Q on 1,000 fixed dataset pairs (in each learner's reward units). Writes
``<out>/result.json`` (``history``, ``side_by_side.py``'s format).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from kit_common import evaluate, load_data, prepare  # noqa: E402


def import_corl_iql(corl_path: str):
    """CORL's ``algorithms/offline/iql.py`` as a module; its d4rl, gym, pyrallis and wandb imports stubbed (the
    driver loads the data, builds the env and logs itself)."""
    import gymnasium
    sys.modules.setdefault("gym", gymnasium)  # only its type hints and unused env wrappers read it
    for name in ("d4rl", "wandb"):
        sys.modules.setdefault(name, types.ModuleType(name))
    pyrallis = types.ModuleType("pyrallis")
    pyrallis.wrap = lambda *a, **k: (lambda f: f)
    sys.modules.setdefault("pyrallis", pyrallis)
    import importlib.util
    path = Path(corl_path) / "algorithms" / "offline" / "iql.py"
    if not path.exists():
        raise SystemExit(f"--corl-path {corl_path}: no {path} (expected a checkout of tinkoff-ai/CORL)")
    spec = importlib.util.spec_from_file_location("corl_iql", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CorlPolicy:
    """CORL's actor behind ``kit_common.evaluate``'s ``select_action`` (states normalised as CORL's env wrapper)."""

    def __init__(self, actor, mean, std):
        self.actor, self.mean, self.std = actor, mean, std

    def select_action(self, obs, deterministic=True):
        return self.actor.act((obs[0] - self.mean) / self.std, "cpu").reshape(1, -1)

    def eval(self):
        self.actor.eval()

    def train(self):
        self.actor.train()


class CmbrlPolicy:
    """cmbrl's TorchRL policy behind ``select_action`` (deterministic: the tanh-Gaussian's mode)."""

    def __init__(self, agent, loc=None, scale=None):
        self.agent, self.loc, self.scale = agent, loc, scale

    def select_action(self, obs, deterministic=True):
        from tensordict import TensorDict
        from torchrl.envs.utils import ExplorationType, set_exploration_type
        obs = torch.as_tensor(obs, dtype=torch.float32)
        obs = obs if self.loc is None else (obs - self.loc) / self.scale
        td = TensorDict({"observation": obs}, batch_size=[1])
        with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
            return self.agent.policy(td)["action"].numpy()

    def eval(self):
        pass

    def train(self):
        pass


def corl_learner(a, data, obs_dim, act_dim):
    """CORL's trainer, replay buffer and evaluation policy, built as its ``train()`` does; returns
    ``(update(), q_data(), policy)``."""
    corl = import_corl_iql(a.corl_path)
    data = {k: v.astype(np.float32).copy() for k, v in data.items()}
    if a.corl_normalize_reward:
        corl.modify_reward(data, a.dataset)
    mean, std = corl.compute_mean_std(data["observations"], eps=1e-3) if a.corl_normalize else (0.0, 1.0)
    data["observations"] = corl.normalize_states(data["observations"], mean, std)
    data["next_observations"] = corl.normalize_states(data["next_observations"], mean, std)
    buffer = corl.ReplayBuffer(obs_dim, act_dim, len(data["observations"]), "cpu")
    buffer.load_d4rl_dataset(data)
    q, v = corl.TwinQ(obs_dim, act_dim), corl.ValueFunction(obs_dim)
    actor = corl.GaussianPolicy(obs_dim, act_dim, 1.0)
    trainer = corl.ImplicitQLearning(
        max_action=1.0, actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), lr=3e-4),
        q_network=q, q_optimizer=torch.optim.Adam(q.parameters(), lr=3e-4), v_network=v,
        v_optimizer=torch.optim.Adam(v.parameters(), lr=3e-4), iql_tau=a.expectile, beta=a.beta,
        max_steps=a.corl_max_steps, discount=0.99, tau=0.005, device="cpu")

    def q_data(obs, act):
        with torch.no_grad():
            return torch.stack(q.both((obs - torch.as_tensor(mean, dtype=torch.float32))
                                      / torch.as_tensor(std, dtype=torch.float32), act)).mean().item()

    return (lambda: trainer.train(buffer.sample(256))), q_data, CorlPolicy(actor, mean, std)


def cmbrl_learner(a, td):
    """cmbrl's IQL as ``examples/finetune.py --base iql`` trains it offline (same reward scale, buffer, batch, and
    observation standardisation with ``--normalize-observations 1``)."""
    import finetune as ft
    from torchrl.data import LazyTensorStorage, ReplayBuffer
    from cmbrl.agents import ensemble_qvalues
    from cmbrl.components.training import observation_stats
    args = ft.Args(dataset=a.dataset, seed=a.seed, base="iql", num_critics=a.num_critics, expectile=a.expectile,
                   beta=a.beta, reward_scale=a.reward_scale, normalize_observations=a.normalize_observations,
                   device="cpu", threads=a.threads)
    obs_dim, act_dim = td["observation"].shape[-1], td["action"].shape[-1]
    agent = ft.make_agent(args, obs_dim, act_dim, a.seed, {"device": torch.device("cpu")})
    loc, scale = observation_stats(td["observation"]) if a.normalize_observations else (None, None)
    if a.weights:
        stage = torch.load(a.weights, map_location="cpu", weights_only=False)
        agent.load_state_dict(stage.get("agent", stage))
        loc, scale = stage.get("observation_loc"), stage.get("observation_scale")  # the agent's own, if any
    buffer = ReplayBuffer(storage=LazyTensorStorage(td.shape[0]), batch_size=256)
    buffer.extend(ft.learner_view(td.select(*ft.KEYS), ft.reward_scale(args, td),
                                  {"observation_loc": loc, "observation_scale": scale}))
    qvalues = ensemble_qvalues(agent)

    def q_data(obs, act):
        from tensordict import TensorDict
        obs = obs if loc is None else (obs - loc) / scale
        with torch.no_grad():
            return qvalues(TensorDict({"observation": obs}, batch_size=[len(obs)]), act.unsqueeze(0)).mean().item()

    return (lambda: agent.update(buffer.sample(), sync=False)), q_data, CmbrlPolicy(agent, loc, scale)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--impl", choices=["corl", "cmbrl"], required=True, help="whose IQL trains")
    p.add_argument("--corl-path", default="../CORL", help="a checkout of tinkoff-ai/CORL (--impl corl)")
    p.add_argument("--dataset", default="halfcheetah-medium", help="a cmbrl dataset (generated locally if absent)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=30_000, help="gradient steps (finetune.py's --offline-steps)")
    p.add_argument("--eval-every", type=int, default=5_000, help="gradient steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10, help="deterministic episodes per evaluation")
    p.add_argument("--expectile", type=float, default=0.7, help="IQL's τ (expectile), IQL Appendix B")
    p.add_argument("--beta", type=float, default=3.0, help="IQL's inverse temperature β, IQL Appendix B")
    p.add_argument("--num-critics", type=int, default=5, help="cmbrl: critics (O3F's 5; CORL has 2)")
    p.add_argument("--reward-scale", type=float, default=0.0, help="cmbrl: 0 = IQL's 1000 / (max - min) return")
    p.add_argument("--normalize-observations", type=int, default=0,
                   help="cmbrl: 1 = standardise observations as CORL (finetune.py's --normalize-observations)")
    p.add_argument("--weights", default="", help="cmbrl: evaluate this agent.pt (or checkpoint) with --steps 0")
    p.add_argument("--corl-normalize", type=int, default=1, help="CORL: normalise states (its hcm config: 1)")
    p.add_argument("--corl-normalize-reward", type=int, default=0, help="CORL: its reward scaling (hcm config: 0)")
    p.add_argument("--corl-max-steps", type=int, default=1_000_000, help="CORL: cosine actor-lr horizon (its 1M)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    out = prepare(a)
    dataset_id, data, meta, env = load_data(a.dataset, 0)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if a.impl == "corl":
        update, q_data, policy = corl_learner(a, data, obs_dim, act_dim)
    else:
        from cmbrl import load_dataset
        update, q_data, policy = cmbrl_learner(a, load_dataset(dataset_id))
    probe = np.random.default_rng(1234).choice(len(data["observations"]), 1000, replace=False)
    probe_obs = torch.as_tensor(data["observations"][probe], dtype=torch.float32)
    probe_act = torch.as_tensor(data["actions"][probe], dtype=torch.float32)
    history, started = [], time.time()
    for step in range(a.steps + 1):
        if step % a.eval_every == 0 or step == a.steps:
            score, returns = evaluate(policy, env, meta, a.seed, a.eval_episodes)
            point = {"step": step, "normalized_score": score, "returns": returns, "q_data": q_data(probe_obs, probe_act),
                     "wall_s": time.time() - started}
            history.append(point)
            print(json.dumps(point), flush=True)
            (out / "result.json").write_text(json.dumps({"args": vars(a), "dataset": dataset_id,
                                                         "history": history}, indent=1))
        if step < a.steps:
            update()


if __name__ == "__main__":
    main()
