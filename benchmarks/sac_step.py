"""Cost of one ``cmbrl.SAC.update`` against a plain-torch SAC step doing the same work, in one process.

Work measured: one SAC gradient step (SACLoss v2 math: twin critics, target critics, tanh-Gaussian actor with
log σ clamped to [-5, 2], automatic entropy tuning, α ≤ 1) on a batch of pre-generated random transitions
(default Hopper dimensions O=11, A=3, 256x256 ReLU networks, batch 256), then one soft target update.

The floor is plain torch written for speed: the twin critics are one stacked ``(2, in, out)`` weight per layer run
with ``baddbmm`` (what SACLoss's vmap does), the actor's log-probability uses the sampled noise directly, one
backward pass over ``loss_actor + loss_qvalue + loss_alpha`` (critic weights detached in the actor loss, as in
SACLoss), three Adams with the same settings as ``cmbrl.SAC`` (``foreach`` implementation), one ``_foreach_lerp_``
soft update, and the five metrics read back with one ``tolist()``. Given cmbrl's weights and the same RNG state,
it returns the same losses as ``cmbrl.SAC.update`` step after step (checked to 1e-6).

Timing blocks of ``--steps`` steps alternate between the two ``--rounds`` times (after a warm-up), so that the
noise of a shared machine hits both; the medians per step are compared. The default clock is the process's CPU
time (``time.process_time``), which time slices lost to other processes on a shared machine do not inflate;
``--clock wall`` measures elapsed time (use it with ``--threads`` > 1, where CPU time adds up the threads). The
harness (batches, blocks, medians, printing) is ``_timing.py``, shared with the other step benchmarks.

    python benchmarks/sac_step.py [--steps 200] [--rounds 5] [--obs-dim 11] [--act-dim 3] [--batch-size 256]
                                  [--threads 1] [--clock cpu|wall]

Prints ms/step for each, then one summary line ``floor=<ms> cmbrl=<ms> ratio=<floor/cmbrl>`` (target >= 0.9).
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from _timing import add_timing_args, linear_params, make_batches, setup, time_against_floor
from cmbrl import SAC

HIDDEN = (256, 256)
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
GAMMA, TAU, LR = 0.99, 0.005, 3e-4


class FloorSAC:
    """The textbook SAC step in plain torch with the computation of TorchRL's SACLoss v2 (see module docstring)."""

    def __init__(self, obs_dim: int, act_dim: int, num_q: int = 2):
        self.act_dim, self.num_q = act_dim, num_q
        self.actor = linear_params((obs_dim, *HIDDEN, 2 * act_dim), in_out=True)
        self.critic = linear_params((obs_dim + act_dim, *HIDDEN, 1), stack=num_q, in_out=True)
        self.target = [p.detach().clone() for p in self.critic]
        self.log_alpha = torch.zeros((), requires_grad=True)
        self.max_log_alpha = 0.0  # α ≤ 1
        self.target_entropy = -float(act_dim)
        adam = dict(foreach=True)
        self.optims = [torch.optim.Adam(self.actor, lr=LR, **adam), torch.optim.Adam(self.critic, lr=LR, **adam),
                       torch.optim.Adam([self.log_alpha], lr=LR, **adam)]
        self.tanh_lim = 1.0 - torch.finfo(torch.float32).resolution

    def sample(self, obs):
        x = obs
        w = self.actor
        for i in range(0, len(w) - 2, 2):
            x = torch.relu(torch.addmm(w[i + 1], x, w[i]))
        loc, log_std = torch.addmm(w[-1], x, w[-2]).chunk(2, -1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        eps = torch.randn_like(loc)
        pre = loc + log_std.exp() * eps
        action = torch.tanh(pre).clamp(-self.tanh_lim, self.tanh_lim)
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
                    - 2 * (math.log(2) - pre - F.softplus(-2 * pre))).sum(-1)
        return action, log_prob

    def q(self, obs, action, params):
        x = torch.cat([obs, action], -1).expand(self.num_q, *obs.shape[:-1], -1)
        for i in range(0, len(params) - 2, 2):
            x = torch.relu(torch.baddbmm(params[i + 1], x, params[i]))
        return torch.baddbmm(params[-1], x, params[-2]).squeeze(-1)  # (num_q, B)

    def update(self, batch: TensorDict) -> dict[str, float]:
        obs, act = batch["observation"], batch["action"]
        nxt = batch["next"]
        with torch.no_grad():
            self.log_alpha.clamp_(max=self.max_log_alpha)
            alpha = self.log_alpha.exp()
            next_action, next_log_prob = self.sample(nxt["observation"])
            next_value = (self.q(nxt["observation"], next_action, self.target) - alpha * next_log_prob).min(0)[0]
            target = nxt["reward"].squeeze(-1) + GAMMA * (~nxt["terminated"].squeeze(-1)) * next_value
        loss_q = (self.q(obs, act, self.critic) - target).pow(2).sum(0).mean()
        action, log_prob = self.sample(obs)
        q_pi = self.q(obs, action, [p.detach() for p in self.critic]).min(0)[0]
        loss_actor = (alpha * log_prob - q_pi).mean()
        loss_alpha = (-self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        for optim in self.optims:
            optim.zero_grad(set_to_none=True)
        (loss_actor + loss_q + loss_alpha).backward()
        for optim in self.optims:
            optim.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.target, [p.detach() for p in self.critic], TAU)
        values = torch.stack([loss_actor.detach(), loss_q.detach(), loss_alpha.detach(), alpha,
                              -log_prob.detach().mean()]).tolist()
        return dict(zip(("loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy"), values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_args(parser, steps=200, rounds=5, warmup=50)
    args = parser.parse_args()
    setup(args.threads)

    batches = make_batches(64, args.batch_size, args.obs_dim, args.act_dim)
    floor = FloorSAC(args.obs_dim, args.act_dim)
    time_against_floor(floor.update, lambda: SAC(args.obs_dim, args.act_dim, seed=0), batches, args,
                       f"hidden={HIDDEN}")


if __name__ == "__main__":
    main()
