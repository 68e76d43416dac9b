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
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kit_common import evaluate, fit_or_load_dynamics, import_kit, load_data  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kit-path", required=True, help="a checkout of OfflineRL-Kit")
    p.add_argument("--dataset", default="cmbrl/walker2d/medium-replay-v0")
    p.add_argument("--max-transitions", type=int, default=0, help="first N transitions (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30, help="epochs of 1,000 gradient steps")
    p.add_argument("--eval-every", type=int, default=5, help="epochs between evaluations")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--beta", type=float, required=True, help="β, Kit's cql_weight")
    p.add_argument("--horizon", type=int, required=True, help="h")
    p.add_argument("--rollout-batch-size", type=int, default=10_000)
    p.add_argument("--dynamics-max-epochs", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    kit = import_kit(a.kit_path)
    torch.set_num_threads(a.threads)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    dataset_id, data, dataset_meta, env = load_data(a.dataset, a.max_transitions)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    hidden = [256, 256, 256]
    actor = kit.ActorProb(kit.MLP(obs_dim, hidden), kit.TanhDiagGaussian(
        256, act_dim, unbounded=True, conditioned_sigma=True, max_mu=1.0), "cpu")
    critics = [kit.Critic(kit.MLP(obs_dim + act_dim, hidden), "cpu") for _ in range(2)]
    actor_optim = torch.optim.Adam(actor.parameters(), lr=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(actor_optim, a.epochs)
    log_alpha = torch.zeros(1, requires_grad=True)
    dynamics = fit_or_load_dynamics(kit, dataset_id, data, obs_dim, act_dim, out, a.dynamics_max_epochs)
    policy = kit.COMBOPolicy(dynamics, actor, *critics, actor_optim,
                             *[torch.optim.Adam(c.parameters(), lr=3e-4) for c in critics], env.action_space,
                             tau=0.005, gamma=0.99, alpha=(-act_dim, log_alpha, torch.optim.Adam([log_alpha], lr=1e-4)),
                             cql_weight=a.beta, temperature=1.0, max_q_backup=False, deterministic_backup=True,
                             with_lagrange=False, num_repeart_actions=10, uniform_rollout=False, rho_s="model")
    real = kit.ReplayBuffer(len(data["observations"]), (obs_dim,), np.float32, act_dim, np.float32, "cpu")
    real.load_dataset(data)
    fake = kit.ReplayBuffer(a.rollout_batch_size * a.horizon * 5, (obs_dim,), np.float32, act_dim, np.float32, "cpu")

    rollout_log = []  # Kit's dynamics.step, recorded: what its rollout saw
    kit_step = dynamics.step

    def recording_step(obs, action):
        next_obs, reward, terminal, info = kit_step(obs, action)
        rollout_log.append((info["raw_reward"].ravel(), terminal.ravel(), (np.abs(action) > 0.99).ravel()))
        return next_obs, reward, terminal, info

    dynamics.step = recording_step
    probe = np.random.default_rng(1234).choice(len(data["observations"]), 1000, replace=False)
    probe_obs, probe_act = torch.as_tensor(data["observations"][probe]), torch.as_tensor(data["actions"][probe])
    history, started, step, model_stats = [], time.time(), 0, {}
    n_real = int(256 * 0.5)
    for epoch in range(1, a.epochs + 1):
        policy.train()
        for _ in range(1000):
            if step % 1000 == 0:  # Kit's MBPolicyTrainer: a rollout every 1,000 steps into the model buffer
                rollout_log.clear()
                transitions, _ = policy.rollout(real.sample(a.rollout_batch_size)["observations"].numpy(), a.horizon)
                fake.add_batch(**transitions)
                raw, terminal, saturated = (np.concatenate(parts) for parts in zip(*rollout_log))
                model_stats = {"model_reward": float(raw.mean()), "termination_rate": float(terminal.mean()),
                               "saturated": float(saturated.mean())}
            loss = policy.learn({"real": real.sample(n_real), "fake": fake.sample(256 - n_real)})
            step += 1
        schedule.step()
        if epoch % a.eval_every == 0 or epoch == a.epochs:
            score, returns = evaluate(policy, env, dataset_meta, a.seed, a.eval_episodes)
            with torch.no_grad():
                q = torch.min(critics[0](probe_obs, probe_act), critics[1](probe_obs, probe_act)).mean().item()
                dist = actor(probe_obs)
                entropy = -dist.log_prob(*dist.rsample()).mean().item()
            point = {"step": step, "normalized_score": float(score), "returns": returns, "q_data": q,
                     "entropy": entropy, "wall_s": time.time() - started,
                     **{k: float(v) for k, v in loss.items()}, **model_stats}
            history.append(point)
            print(json.dumps(point), flush=True)
            (out / "result.json").write_text(json.dumps({"args": vars(a), "history": history}, indent=1))


if __name__ == "__main__":
    main()
