"""What the OfflineRL-Kit drivers share: importing a checkout, the data, Kit's dynamics ensemble and the evaluation.

OfflineRL-Kit (https://github.com/yihaosun1124/OfflineRL-Kit) is not a dependency and none of its code is here;
these helpers import a checkout of it (``kit_path``) and feed it a cmbrl dataset in the arrays it expects.
"""
import json
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
