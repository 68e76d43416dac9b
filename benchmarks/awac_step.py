"""Cost of one ``cmbrl.AWAC.update`` against a plain-torch AWAC step doing the same work, in one process.

Work measured: one AWAC gradient step with cmbrl's defaults (tanh-squashed 5-component Gaussian-mixture actor,
3 x 256 ReLU actor and twin critics, target critics, λ = 1/3, weights ``min(exp(A/λ), 20)``, one policy sample for
the value baseline) on a batch of pre-generated random transitions (default Hopper dimensions O=11, A=3, batch 256),
then one soft target update.

The floor is plain torch written for speed: the twin critics are one stacked ``(2, out, in)`` weight per layer run
with ``baddbmm``, the mixture is sampled by Gumbel-max and scored with one ``logsumexp``, the critic forward on the
batch's actions is reused for the advantage, one backward pass over ``loss_actor + loss_qvalue``, two Adams with
the same settings as ``cmbrl.AWAC`` (``foreach``), one ``_foreach_lerp_`` soft update, and the seven metrics read
back with one ``tolist()``. Given cmbrl's weights and the same RNG state it returns the same metrics as
``cmbrl.AWAC.update`` step after step (``--check`` verifies this before timing).

Timing blocks of ``--steps`` steps alternate between the two ``--rounds`` times (after a warm-up), so that the
noise of a shared machine hits both; the medians per step are compared. The default clock is the process's CPU
time (``time.process_time``), which time slices lost to other processes do not inflate; ``--clock wall`` measures
elapsed time (use it with ``--threads`` > 1, where CPU time adds up the threads). The harness (batches, blocks,
medians, printing) is ``_timing.py``, shared with the other step benchmarks.

    python benchmarks/awac_step.py [--steps 300] [--rounds 5] [--obs-dim 11] [--act-dim 3] [--batch-size 256]
                                   [--threads 1] [--clock cpu|wall] [--compile 0|1] [--backend inductor|aot_eager]
                                   [--critics 2] [--target-critics 0] [--part whole|critic]

``--critics 5 --target-critics 2 --part critic`` times ``AWAC.update_critic`` with fine-tuning's 5 critics and REDQ
targets (the 19 extra critic steps per env step of ``examples/finetune.py --critic-utd 20``) against the floor's
critic-only step.

``--compile 1`` times ``cmbrl.AWAC(compile={"backend": <backend>})`` (loss and optimiser steps through
``torch.compile``; the first update, which compiles, is printed apart) against the same eager floor.

Prints ms/step for each, then one summary line ``floor=<ms> cmbrl=<ms> ratio=<floor/cmbrl>``.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from _timing import add_timing_args, linear_params, make_batches, setup, time_against_floor
from cmbrl.agents import AWAC
from cmbrl.components.cli import HelpFormatter

HIDDEN = (256, 256, 256)
NUM_COMPONENTS = 5
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
GAMMA, TAU, LR, TEMPERATURE, MAX_WEIGHT = 0.99, 0.005, 3e-4, 1 / 3, 20.0
TANH_EPS = 1e-6


class FloorAWAC:
    """The AWAC step in plain torch with the computation of ``cmbrl.AWAC`` (see the module docstring)."""

    def __init__(self, obs_dim: int, act_dim: int, num_q: int = 2, subset: int | None = None):
        self.act_dim, self.num_q, self.k, self.subset = act_dim, num_q, NUM_COMPONENTS, subset
        self.actor = linear_params((obs_dim, *HIDDEN, self.k * (1 + 2 * act_dim)))
        self.critic = linear_params((obs_dim + act_dim, *HIDDEN, 1), stack=num_q)
        self.target = [p.detach().clone() for p in self.critic]
        self.optims = [torch.optim.Adam(self.actor, lr=LR, foreach=True),
                       torch.optim.Adam(self.critic, lr=LR, foreach=True)]

    @torch.no_grad()
    def load_from(self, agent: AWAC) -> None:
        """Copies cmbrl's actor, critics and target critics (same layouts up to the bias shape)."""
        loss = agent.loss_module
        for mine, theirs in zip(self.actor, loss.actor_network_params.flatten_keys().values()):
            mine.copy_(theirs)
        for mine, target, online, their_target in zip(self.critic, self.target,
                                                      loss.qvalue_network_params.flatten_keys().values(),
                                                      loss.target_qvalue_network_params.flatten_keys().values()):
            mine.copy_(online.view_as(mine))
            target.copy_(their_target.view_as(target))

    def mixture(self, obs):
        x, w = obs, self.actor
        for i in range(0, len(w) - 2, 2):
            x = torch.relu(F.linear(x, w[i], w[i + 1]))
        x = F.linear(x, w[-2], w[-1])
        logits, params = x.split([self.k, 2 * self.k * self.act_dim], -1)
        loc, log_std = params.unflatten(-1, (self.k, 2, self.act_dim)).unbind(-2)
        return logits, loc, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()

    @staticmethod
    def sample(logits, loc, scale, n: int | None = None):
        shape = logits.shape if n is None else (n, *logits.shape)
        index = (logits - torch.empty(shape).exponential_().log()).argmax(-1)  # Gumbel-max
        index = index[..., None, None].expand(*index.shape, 1, loc.shape[-1])
        full = (*index.shape[:-2], *loc.shape[-2:])
        mean = loc.expand(full).gather(-2, index).squeeze(-2)
        std = scale.expand(full).gather(-2, index).squeeze(-2)
        return torch.tanh(mean + std * torch.randn_like(mean))

    @staticmethod
    def log_prob(logits, loc, scale, action):
        x = torch.atanh(action.clamp(-1 + TANH_EPS, 1 - TANH_EPS))
        z = (x.unsqueeze(-2) - loc) / scale
        log_normal = (-0.5 * z.pow(2) - scale.log()).sum(-1) - loc.shape[-1] * 0.5 * math.log(2 * math.pi)
        log_jacobian = 2 * (math.log(2) - x - F.softplus(-2 * x))
        return torch.logsumexp(torch.log_softmax(logits, -1) + log_normal, -1) - log_jacobian.sum(-1)

    def q(self, obs, action, params):
        x = torch.cat([obs.expand(*action.shape[:-1], -1), action], -1)
        batch = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1]).expand(params[0].shape[0], -1, -1)
        for i in range(0, len(params) - 2, 2):
            x = torch.relu(torch.baddbmm(params[i + 1], x, params[i].mT))
        return torch.baddbmm(params[-1], x, params[-2].mT).reshape(params[0].shape[0], *batch)  # (num_q, *batch)

    def update(self, batch: TensorDict, part: str = "whole") -> dict[str, float]:
        obs, act = batch["observation"], batch["action"]
        nxt = batch["next"]
        with torch.no_grad():
            next_action = self.sample(*self.mixture(nxt["observation"]))
            target_params = self.target
            if self.subset is not None and self.subset < self.num_q:  # REDQ: a fresh random subset per update
                index = torch.randperm(self.num_q)[:self.subset]
                target_params = [p[index] for p in self.target]
            next_value = self.q(nxt["observation"], next_action, target_params).min(0)[0]
            target = nxt["reward"].squeeze(-1) + GAMMA * (~nxt["terminated"].squeeze(-1)) * next_value
        q_all = self.q(obs, act, self.critic)
        loss_q = (q_all - target).pow(2).sum(0).mean()
        if part == "critic":  # AWAC.update_critic: the critics' step and the target update only
            self.optims[1].zero_grad(set_to_none=True)
            loss_q.backward()
            self.optims[1].step()
            with torch.no_grad():
                torch._foreach_lerp_(self.target, [p.detach() for p in self.critic], TAU)
            return dict(zip(AWAC.CRITIC_METRICS, torch.stack([loss_q.detach(), q_all.detach().min(0)[0].mean()]
                                                             ).tolist()))
        logits, loc, scale = self.mixture(obs)
        log_prob = self.log_prob(logits, loc, scale, act)
        with torch.no_grad():
            q_data = q_all.min(0)[0]
            sampled = self.sample(logits, loc, scale, n=1)
            advantage = q_data - self.q(obs, sampled, self.critic).min(0)[0].mean(0)
            weights = (advantage / TEMPERATURE).clamp(max=math.log(MAX_WEIGHT)).exp()
        loss_actor = -(log_prob * weights).mean()
        for optim in self.optims:
            optim.zero_grad(set_to_none=True)
        (loss_actor + loss_q).backward()
        for optim in self.optims:
            optim.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.target, [p.detach() for p in self.critic], TAU)
        values = torch.stack([loss_actor.detach(), loss_q.detach(), advantage.mean(), weights.mean(), weights.max(),
                              q_data.mean(), log_prob.detach().mean()]).tolist()
        return dict(zip(AWAC.METRICS, values))


def check_equal(obs_dim: int, act_dim: int, batches: list[TensorDict], steps: int = 5, critics: int = 2,
                target_critics: int | None = None, part: str = "whole") -> float:
    """Largest relative difference of the metrics of ``steps`` updates of cmbrl and the floor from equal states."""
    agent = AWAC(obs_dim, act_dim, seed=1, num_qvalue_nets=critics, target_subset_size=target_critics)
    floor = FloorAWAC(obs_dim, act_dim, critics, target_critics)
    floor.load_from(agent)
    step = agent.update if part == "whole" else agent.update_critic
    worst = 0.0
    for i in range(steps):
        torch.manual_seed(100 + i)
        mine = floor.update(batches[i].clone(), part)
        torch.manual_seed(100 + i)
        theirs = step(batches[i].clone())
        for key in theirs:
            worst = max(worst, abs(mine[key] - theirs[key]) / max(1.0, abs(theirs[key])))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_timing_args(parser, steps=300, rounds=5, warmup=30)
    parser.add_argument("--no-check", action="store_true", help="skip the equality check against the floor")
    parser.add_argument("--compile", type=int, choices=(0, 1), default=0,
                        help="1: time cmbrl.AWAC(compile=...) against the eager floor")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend with --compile 1")
    parser.add_argument("--critics", type=int, default=2, help="critic ensemble size N (O3F: 5)")
    parser.add_argument("--target-critics", type=int, default=0,
                        help="REDQ random target subset size M (0: all N; O3F's setting here: 2)")
    parser.add_argument("--part", choices=("whole", "critic"), default="whole",
                        help="whole: AWAC.update; critic: AWAC.update_critic (the critics' step of --critic-utd)")
    args = parser.parse_args()
    setup(args.threads)
    subset = args.target_critics or None

    batches = make_batches(64, args.batch_size, args.obs_dim, args.act_dim, action_spread=1.1)  # some on the bounds
    if not args.no_check:
        diff = check_equal(args.obs_dim, args.act_dim, batches, critics=args.critics, target_critics=subset,
                           part=args.part)
        print(f"check: largest relative metric difference cmbrl vs floor over 5 steps: {diff:.2e}")
        if diff > 1e-4:
            raise SystemExit("the floor does not compute what cmbrl.AWAC computes")
    floor = FloorAWAC(args.obs_dim, args.act_dim, args.critics, subset)
    compile = {"backend": args.backend} if args.compile else False

    def make_agent():
        agent = AWAC(args.obs_dim, args.act_dim, seed=0, compile=compile, num_qvalue_nets=args.critics,
                     target_subset_size=subset)
        if args.part == "critic":
            agent.update = agent.update_critic  # time_against_floor times agent.update
        return agent

    time_against_floor(lambda batch: floor.update(batch, args.part), make_agent, batches, args,
                       f"hidden={HIDDEN} K={NUM_COMPONENTS} critics={args.critics} target_critics={subset} "
                       f"part={args.part} compile={compile}")


if __name__ == "__main__":
    main()
