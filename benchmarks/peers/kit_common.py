"""What the OfflineRL-Kit drivers share: importing a checkout, the data, Kit's dynamics ensemble and the evaluation.

OfflineRL-Kit (https://github.com/yihaosun1124/OfflineRL-Kit) is not a dependency and none of its code is here;
these helpers import a checkout of it (``kit_path``) and feed it a cmbrl dataset in the arrays it expects.
"""
import argparse
import json
import random
import sys
import time
import types
from pathlib import Path

import gymnasium
import gymnasium.envs.mujoco.mujoco_env  # noqa: F401  (Kit imports gym.envs.mujoco)
import minari
import numpy as np
import torch

from cmbrl import load_dataset
from cmbrl.components.training import dataset_env_id


def import_kit(kit_path: str):
    """Kit imports the old ``gym`` (served here by Gymnasium) and tensorboard (its logger; stubbed)."""
    sys.modules.setdefault("gym", gymnasium)
    stub = types.ModuleType("torch.utils.tensorboard")
    stub.SummaryWriter = object
    sys.modules.setdefault("torch.utils.tensorboard", stub)
    sys.path.insert(0, kit_path)
    from offlinerlkit.buffer import ReplayBuffer
    from offlinerlkit.dynamics import EnsembleDynamics
    from offlinerlkit.modules import ActorProb, Critic, EnsembleDynamicsModel, TanhDiagGaussian
    from offlinerlkit.nets import MLP
    from offlinerlkit.policy import COMBOPolicy, MOPOPolicy
    from offlinerlkit.utils.scaler import StandardScaler
    from offlinerlkit.utils.termination_fns import get_termination_fn
    return types.SimpleNamespace(**locals())


class FitLog:
    """The few methods of Kit's Logger that ``EnsembleDynamics.train`` calls."""

    def __init__(self, model_dir: Path):
        self.model_dir, self.rows, self.row = str(model_dir), [], {}

    def log(self, text):
        print(text, flush=True)

    def logkv(self, key, value):
        self.row[key] = float(value)

    def set_timestep(self, t):
        self.row["epoch"] = t

    def dumpkvs(self, exclude=None):
        self.rows.append(self.row)
        print(self.row, flush=True)
        self.row = {}


def load_data(dataset: str, max_transitions: int):
    """The cmbrl dataset as Kit's arrays, its Minari metadata (reference scores), and the Gymnasium env.

    Returns ``(dataset_id, data, dataset_meta, env)``; ``max_transitions`` 0 keeps all transitions."""
    dataset_id, env_id = dataset_env_id(dataset)
    td = load_dataset(dataset_id)  # generated locally when absent
    dataset_meta = minari.load_dataset(dataset_id)  # its reference scores, as the cmbrl examples normalise
    if max_transitions:
        td = td[:max_transitions]
    data = {"observations": td["observation"].numpy(), "actions": td["action"].numpy(),
            "next_observations": td["next", "observation"].numpy(), "rewards": td["next", "reward"].reshape(-1).numpy(),
            "terminals": td["next", "terminated"].reshape(-1).float().numpy()}
    return dataset_id, data, dataset_meta, gymnasium.make(env_id)


def fit_or_load_dynamics(kit, dataset_id: str, data: dict, obs_dim: int, act_dim: int, out: Path,
                         max_epochs: int, penalty_coef: float = 0.0):
    """Kit's 7-member / 5-elite 4×200 ensemble (its defaults), fitted on ``data`` with its early stopping capped at
    ``max_epochs``, saved in ``<out>/dynamics``; an existing fit there is loaded (seeds can share one by copying)."""
    model = kit.EnsembleDynamicsModel(obs_dim=obs_dim, action_dim=act_dim, hidden_dims=[200] * 4, num_ensemble=7,
                                      num_elites=5, weight_decays=[2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4], device="cpu")
    dynamics = kit.EnsembleDynamics(model, torch.optim.Adam(model.parameters(), lr=1e-3), kit.StandardScaler(),
                                    kit.get_termination_fn(dataset_id.split("/")[1]), penalty_coef=penalty_coef)
    model_dir = out / "dynamics"
    if (model_dir / "dynamics.pth").exists():
        dynamics.load(str(model_dir))
        return dynamics
    model_dir.mkdir(parents=True, exist_ok=True)
    real = kit.ReplayBuffer(len(data["observations"]), (obs_dim,), np.float32, act_dim, np.float32, "cpu")
    real.load_dataset(data)
    log, started = FitLog(model_dir), time.time()
    dynamics.train(real.sample_all(), log, max_epochs=max_epochs, max_epochs_since_update=5)
    (out / "dynamics_fit.json").write_text(json.dumps({"wall_time_s": time.time() - started, "epochs": log.rows}))
    return dynamics


def evaluate(policy, env, dataset_meta, seed: int, episodes: int) -> tuple[float, list[float]]:
    """Deterministic episodes in the Gymnasium env (episode ``i`` reset with seed ``10,000·seed + i``); returns the
    D4RL-normalised mean score (×100, the dataset's Minari reference scores) and the returns."""
    policy.eval()
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=10_000 * seed + episode)
        total, done = 0.0, False
        while not done:
            action = policy.select_action(obs.reshape(1, -1).astype(np.float32), deterministic=True)[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
        returns.append(float(total))
    policy.train()
    return 100 * float(minari.get_normalized_score(dataset_meta, np.asarray(returns)).mean()), returns


def add_run_args(p: argparse.ArgumentParser, dataset: str) -> None:
    """The arguments every driver takes: checkout, data, seed, budget, evaluation, rollouts, fit cap, output."""
    p.add_argument("--kit-path", required=True, help="a checkout of OfflineRL-Kit")
    p.add_argument("--dataset", default=dataset)
    p.add_argument("--max-transitions", type=int, default=0, help="first N transitions (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30, help="epochs of 1,000 gradient steps")
    p.add_argument("--eval-every", type=int, default=5, help="epochs between evaluations")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--horizon", type=int, required=True, help="h")
    p.add_argument("--rollout-batch-size", type=int, default=10_000)
    p.add_argument("--dynamics-max-epochs", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)


def prepare(a: argparse.Namespace) -> Path:
    """Sets ``--threads`` and the ``--seed`` of Python, NumPy and torch, creates ``--out``; returns it."""
    torch.set_num_threads(a.threads)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def start(a: argparse.Namespace):
    """Imports Kit, then :func:`prepare`; returns ``(kit, out)``."""
    kit = import_kit(a.kit_path)
    return kit, prepare(a)


def train(a: argparse.Namespace, kit, policy, data: dict, env, dataset_meta, out: Path, real_ratio: float, record,
          summarise) -> None:
    """Kit's ``MBPolicyTrainer`` loop for a Kit model-based SAC policy (its ``dynamics``, ``actor``, ``critic1``,
    ``critic2``): a ``--rollout-batch-size`` rollout of ``--horizon`` steps every 1,000 steps
    into a model buffer kept for 5 rollouts, ``policy.learn`` on 256-row batches with ``real_ratio`` real rows, and
    every ``--eval-every`` epochs an evaluation written to ``<out>/result.json``. ``record(action, terminal, info)``
    returns a tuple of arrays per model step; ``summarise(*arrays concatenated over the rollout)`` returns the
    rollout's statistics (a dict) logged with each evaluation."""
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    real = kit.ReplayBuffer(len(data["observations"]), (obs_dim,), np.float32, act_dim, np.float32, "cpu")
    real.load_dataset(data)
    fake = kit.ReplayBuffer(a.rollout_batch_size * a.horizon * 5, (obs_dim,), np.float32, act_dim, np.float32, "cpu")
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(policy.actor_optim, a.epochs)
    rollout_log = []  # Kit's dynamics.step, recorded: what its rollout saw
    dynamics, actor = policy.dynamics, policy.actor
    kit_step = dynamics.step

    def recording_step(obs, action):
        next_obs, reward, terminal, info = kit_step(obs, action)
        rollout_log.append(record(action, terminal, info))
        return next_obs, reward, terminal, info

    dynamics.step = recording_step
    probe = np.random.default_rng(1234).choice(len(data["observations"]), 1000, replace=False)
    probe_obs, probe_act = torch.as_tensor(data["observations"][probe]), torch.as_tensor(data["actions"][probe])
    history, started, step, model_stats = [], time.time(), 0, {}
    n_real = int(256 * real_ratio)
    for epoch in range(1, a.epochs + 1):
        policy.train()
        for _ in range(1000):
            if step % 1000 == 0:
                rollout_log.clear()
                transitions, _ = policy.rollout(real.sample(a.rollout_batch_size)["observations"].numpy(), a.horizon)
                fake.add_batch(**transitions)
                model_stats = summarise(*(np.concatenate(parts) for parts in zip(*rollout_log)))
            loss = policy.learn({"real": real.sample(n_real), "fake": fake.sample(256 - n_real)})
            step += 1
        schedule.step()
        if epoch % a.eval_every == 0 or epoch == a.epochs:
            score, returns = evaluate(policy, env, dataset_meta, a.seed, a.eval_episodes)
            with torch.no_grad():
                q = torch.min(policy.critic1(probe_obs, probe_act), policy.critic2(probe_obs, probe_act)).mean().item()
                dist = actor(probe_obs)
                entropy = -dist.log_prob(*dist.rsample()).mean().item()
            point = {"step": step, "normalized_score": float(score), "returns": returns, "q_data": q,
                     "entropy": entropy, "wall_s": time.time() - started,
                     **{k: float(v) for k, v in loss.items()}, **model_stats}
            history.append(point)
            print(json.dumps(point), flush=True)
            (out / "result.json").write_text(json.dumps({"args": vars(a), "history": history}, indent=1))
