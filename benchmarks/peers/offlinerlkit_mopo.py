"""OfflineRL-Kit's MOPO on a cmbrl dataset, with ``examples/mopo.py``'s settings: the side-by-side check.

OfflineRL-Kit (https://github.com/yihaosun1124/OfflineRL-Kit) is not a dependency and none of its code is here:
this driver imports a checkout of it (``--kit-path``) and drives its ``EnsembleDynamics`` and ``MOPOPolicy`` on the
same transitions, λ, h and budget as a ``benchmarks/learning.py`` MOPO cell::

    git clone https://github.com/yihaosun1124/OfflineRL-Kit /tmp/OfflineRL-Kit
    python benchmarks/peers/offlinerlkit_mopo.py --kit-path /tmp/OfflineRL-Kit \\
        --dataset cmbrl/halfcheetah/medium-replay-v0 --penalty-coef 0.5 --horizon 5 --seed 0 --out runs/kit/hcmr_s0

Settings shared with the cmbrl cell (``examples/mopo.py`` defaults): 7 members / 5 elites of 4×200 (Kit's), the
fit capped at ``--dynamics-max-epochs`` 50 (Kit's early stopping otherwise), ``--rollout-batch-size`` 10,000 rollouts
every 1,000 steps kept for 5 rollouts, real_ratio 0.05, batch 256, SAC 2×256 with Kit's learning rates (actor and
α 1e-4, critics 3e-4), the actor's lr cosine-annealed over the run's epochs, target entropy −dim(A), evaluation
every ``--eval-every`` epochs of 1,000 steps with 5 deterministic episodes in the Gymnasium v5 env.

Writes ``<out>/result.json`` (``history``: step, normalized_score, returns, q_data (min of the critics on 1,000
dataset pairs), entropy (on those states), Kit's losses and α, and the last rollout's model_reward (r before the
penalty), uncertainty (u), termination_rate and saturated (share of |a| > 0.99)) and ``<out>/dynamics`` (Kit's
fitted model; an existing one is loaded, so seeds can share a fit by copying it).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kit_common import add_run_args, fit_or_load_dynamics, load_data, start, train  # noqa: E402


def record(action, terminal, info):
    return info["raw_reward"].ravel(), info["penalty"].ravel(), terminal.ravel(), (np.abs(action) > 0.99).ravel()


def summarise(raw, penalty, terminal, saturated):
    return {"model_reward": float(raw.mean()), "uncertainty": float(penalty.mean()),
            "termination_rate": float(terminal.mean()), "saturated": float(saturated.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(p, "cmbrl/halfcheetah/medium-replay-v0")
    p.add_argument("--penalty-coef", type=float, required=True, help="λ")
    a = p.parse_args()
    kit, out = start(a)
    dataset_id, data, dataset_meta, env = load_data(a.dataset, a.max_transitions)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]

    actor = kit.ActorProb(kit.MLP(obs_dim, [256, 256]), kit.TanhDiagGaussian(
        256, act_dim, unbounded=True, conditioned_sigma=True, max_mu=1.0), "cpu")
    critics = [kit.Critic(kit.MLP(obs_dim + act_dim, [256, 256]), "cpu") for _ in range(2)]
    log_alpha = torch.zeros(1, requires_grad=True)
    dynamics = fit_or_load_dynamics(kit, dataset_id, data, obs_dim, act_dim, out, a.dynamics_max_epochs,
                                    penalty_coef=a.penalty_coef)
    policy = kit.MOPOPolicy(dynamics, actor, *critics, torch.optim.Adam(actor.parameters(), lr=1e-4),
                            *[torch.optim.Adam(c.parameters(), lr=3e-4) for c in critics], tau=0.005, gamma=0.99,
                            alpha=(-act_dim, log_alpha, torch.optim.Adam([log_alpha], lr=1e-4)))
    train(a, kit, policy, data, env, dataset_meta, out, 0.05, record, summarise)


if __name__ == "__main__":
    main()
