"""OfflineRL-Kit's COMBO on a cmbrl dataset, with ``examples/combo.py``'s settings: the side-by-side check.

OfflineRL-Kit (https://github.com/yihaosun1124/OfflineRL-Kit) is not a dependency and none of its code is here:
this driver imports a checkout of it (``--kit-path``) and drives its ``EnsembleDynamics`` and ``COMBOPolicy`` on the
same transitions, β, h and budget as a ``benchmarks/learning.py`` COMBO cell::

    git clone https://github.com/yihaosun1124/OfflineRL-Kit /tmp/OfflineRL-Kit
    python benchmarks/peers/offlinerlkit_combo.py --kit-path /tmp/OfflineRL-Kit \\
        --dataset cmbrl/walker2d/medium-replay-v0 --beta 0.5 --horizon 1 --seed 0 --out runs/kit/combo_w2dmr_s0

Settings shared with the cmbrl cell (``examples/combo.py`` defaults): Kit's 7 members / 5 elites of 4×200 fitted
here, capped at ``--dynamics-max-epochs`` 50; ``--rollout-batch-size`` 10,000 rollouts every 1,000 steps kept for 5
rollouts; real_ratio 0.5 of a 256 batch; ρ = the model rows (Kit's ``rho_s="model"``); uniform prior; 10 actions per
source; deterministic backup; no Lagrange β; 3×256 actor and critics with Kit's learning rates (actor and α 1e-4,
critics 3e-4), the actor's lr cosine-annealed over the run's epochs; target entropy −dim(A); evaluation every
``--eval-every`` epochs of 1,000 steps with 5 deterministic episodes in the Gymnasium v5 env.

Writes ``<out>/result.json`` (``history``: step, normalized_score, returns, q_data (min of the critics on 1,000
dataset pairs, the same probe as the MOPO driver), entropy (on those states), Kit's losses and α, and the last
rollout's model_reward, termination_rate and saturated (share of |a| > 0.99)) and ``<out>/dynamics`` (Kit's fitted
model; an existing one is loaded, so seeds can share a fit by copying it).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kit_common import add_run_args, fit_or_load_dynamics, load_data, start, train  # noqa: E402


def record(action, terminal, info):
    return info["raw_reward"].ravel(), terminal.ravel(), (np.abs(action) > 0.99).ravel()


def summarise(raw, terminal, saturated):
    return {"model_reward": float(raw.mean()), "termination_rate": float(terminal.mean()),
            "saturated": float(saturated.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(p, "cmbrl/walker2d/medium-replay-v0")
    p.add_argument("--beta", type=float, required=True, help="β, Kit's cql_weight")
    a = p.parse_args()
    kit, out = start(a)
    dataset_id, data, dataset_meta, env = load_data(a.dataset, a.max_transitions)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    hidden = [256, 256, 256]
    actor = kit.ActorProb(kit.MLP(obs_dim, hidden), kit.TanhDiagGaussian(
        256, act_dim, unbounded=True, conditioned_sigma=True, max_mu=1.0), "cpu")
    critics = [kit.Critic(kit.MLP(obs_dim + act_dim, hidden), "cpu") for _ in range(2)]
    log_alpha = torch.zeros(1, requires_grad=True)
    dynamics = fit_or_load_dynamics(kit, dataset_id, data, obs_dim, act_dim, out, a.dynamics_max_epochs)
    policy = kit.COMBOPolicy(dynamics, actor, *critics, torch.optim.Adam(actor.parameters(), lr=1e-4),
                             *[torch.optim.Adam(c.parameters(), lr=3e-4) for c in critics], env.action_space,
                             tau=0.005, gamma=0.99, alpha=(-act_dim, log_alpha, torch.optim.Adam([log_alpha], lr=1e-4)),
                             cql_weight=a.beta, temperature=1.0, max_q_backup=False, deterministic_backup=True,
                             with_lagrange=False, num_repeart_actions=10, uniform_rollout=False, rho_s="model")
    train(a, kit, policy, data, env, dataset_meta, out, 0.5, record, summarise)


if __name__ == "__main__":
    main()
