"""Cost of one ``cmbrl.IQL.update`` (and ``update_critic``) against a plain-torch IQL step doing the same work.

Work measured: one IQL gradient step with O3F's IQL settings (``IQL(num_qvalue_nets=5)``: 5 critics, value and
tanh-Gaussian actor, all 2 x 256 ReLU; expectile 0.7, β 3, exp-advantage clipped at 100) on a batch of
pre-generated random transitions (default Hopper dimensions O=11, A=3, batch 256), then one soft target update of
the critics. ``--part critic`` times the critic-only step (critics and value, no actor).

The floor is plain torch written for speed: the 5 critics are one stacked ``(5, in, out)`` weight per layer run
with ``baddbmm``; the value and the actor are plain MLPs; the tanh-Gaussian log-density of the batch's actions is
written out (``atanh``, the Gaussian, ``2 (log 2 - x - softplus(-2x))``); one backward over the sum of the losses,
three foreach Adams, one ``_foreach_lerp_`` soft update, the metrics read back with one ``tolist()``. IQL's update
draws no random numbers, so given cmbrl's weights the floor returns the same metrics (``--check`` verifies this
before timing, on actions inside the bounds; TorchRL clamps actions on the bounds slightly differently).

Timing as the other step benchmarks (``_timing.py``: interleaved blocks, medians, process CPU time by default).

    python benchmarks/iql_step.py [--part whole|critic] [--steps 300] [--rounds 5] [--obs-dim 11] [--act-dim 3]
                                  [--batch-size 256] [--threads 1] [--clock cpu|wall]

Prints ms/step for each, then one summary line ``floor=<ms> cmbrl=<ms> ratio=<floor/cmbrl>``.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from _timing import add_timing_args, linear_params, make_batches, setup, time_against_floor
from cmbrl.agents import IQL
from cmbrl.components.cli import HelpFormatter

HIDDEN = (256, 256)
NUM_CRITICS = 5
GAMMA, TAU, LR, EXPECTILE, BETA = 0.99, 0.005, 3e-4, 0.7, 3.0
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def _mlp(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    for i in range(0, len(params), 2):
        x = F.linear(x, params[i], params[i + 1])
        if i + 2 < len(params):
            x = x.relu()
    return x


def _stacked(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """``(N, B, 1)`` from the rows ``x (B, in)`` through ``N`` stacked MLPs (weights ``(N, in, out)``)."""
    h = x.expand(params[0].shape[0], *x.shape)
    for i in range(0, len(params), 2):
        h = torch.baddbmm(params[i + 1], h, params[i])
        if i + 2 < len(params):
            h = h.relu()
    return h


class FloorIQL:
    """The IQL step in plain torch with the computation of ``cmbrl.IQL`` (see the module docstring)."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        self.critic = linear_params((obs_dim + act_dim, *HIDDEN, 1), stack=NUM_CRITICS, in_out=True)
        self.target = [p.detach().clone() for p in self.critic]
        self.value = linear_params((obs_dim, *HIDDEN, 1))
        self.actor = linear_params((obs_dim, *HIDDEN, 2 * act_dim))
        self.optims = [torch.optim.Adam(p, lr=LR, foreach=True) for p in (self.actor, self.critic, self.value)]

    def load_from(self, agent: IQL) -> None:
        """Copies ``agent``'s weights (critics, targets, value, actor) into the floor."""
        loss = agent.loss_module
        with torch.no_grad():
            for mine, source in ((self.critic, loss.qvalue_network_params), (self.target,
                                                                             loss.target_qvalue_network_params)):
                leaves = list(source.flatten_keys().values())
                for p, q in zip(mine, leaves):
                    p.copy_(q.transpose(-1, -2) if q.ndim == 3 else q.unsqueeze(1))
            for mine, source in ((self.value, loss.value_network_params), (self.actor, loss.actor_network_params)):
                for p, q in zip(mine, source.flatten_keys().values()):
                    p.copy_(q)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        loc, log_std = _mlp(obs, self.actor).chunk(2, -1)
        scale = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        eps = torch.finfo(action.dtype).eps
        x = action.clamp(-1 + eps, 1 - eps).atanh()
        gaussian = -((x - loc) ** 2) / (2 * scale ** 2) - scale.log() - 0.5 * math.log(2 * math.pi)
        return (gaussian - 2 * (math.log(2) - x - F.softplus(-2 * x))).sum(-1)

    def update(self, batch, part: str = "whole") -> dict[str, float]:
        obs, action = batch["observation"], batch["action"]
        next_obs = batch["next", "observation"]
        reward, terminated = batch["next", "reward"].squeeze(-1), batch["next", "terminated"].squeeze(-1)
        rows = torch.cat([obs, action], -1)
        with torch.no_grad():
            min_q = _stacked(rows, self.target).min(0)[0].squeeze(-1)
            target = reward + GAMMA * (~terminated) * _mlp(next_obs, self.value).squeeze(-1)
        value = _mlp(obs, self.value).squeeze(-1)
        diff = min_q - value
        loss_value = (torch.where(diff > 0, EXPECTILE, 1 - EXPECTILE) * diff ** 2).mean()
        loss_q = ((_stacked(rows, self.critic).squeeze(-1) - target) ** 2).sum(0).mean()
        losses = [loss_q, loss_value]
        optims = self.optims[1:]
        if part == "whole":
            weights = ((min_q - value.detach()) * BETA).exp().clamp_max(100)
            log_prob = self.log_prob(obs, action)
            loss_actor = -(weights * log_prob).mean()
            losses, optims = [loss_actor, *losses], self.optims
        for optim in optims:
            optim.zero_grad(set_to_none=True)
        sum(losses).backward()
        for optim in optims:
            optim.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.target, [p.detach() for p in self.critic], TAU)
        if part == "whole":
            values = torch.stack([losses[0].detach(), loss_q.detach(), loss_value.detach(),
                                  -log_prob.detach().mean()]).tolist()
            return dict(zip(IQL.METRICS, values))
        return dict(zip(IQL.CRITIC_METRICS, torch.stack([loss_q.detach(), loss_value.detach()]).tolist()))


def check_equal(obs_dim: int, act_dim: int, batches: list, part: str, steps: int = 5) -> float:
    """Largest relative difference of the metrics of ``steps`` updates of cmbrl and the floor from equal states."""
    agent = IQL(obs_dim, act_dim, num_qvalue_nets=NUM_CRITICS, seed=1)
    floor = FloorIQL(obs_dim, act_dim)
    floor.load_from(agent)
    step = agent.update if part == "whole" else agent.update_critic
    worst = 0.0
    for i in range(steps):
        mine, theirs = floor.update(batches[i].clone(), part), step(batches[i].clone())
        for key in theirs:
            worst = max(worst, abs(mine[key] - theirs[key]) / max(1.0, abs(theirs[key])))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_timing_args(parser, steps=300, rounds=5, warmup=30)
    parser.add_argument("--part", choices=("whole", "critic"), default="whole",
                        help="whole: IQL.update (actor, critics, value); critic: IQL.update_critic (critics, value)")
    parser.add_argument("--no-check", action="store_true", help="skip the equality check against the floor")
    args = parser.parse_args()
    setup(args.threads)
    batches = make_batches(64, args.batch_size, args.obs_dim, args.act_dim, action_spread=0.99)
    if not args.no_check:
        diff = check_equal(args.obs_dim, args.act_dim, batches, args.part)
        print(f"check: largest relative metric difference cmbrl vs floor over 5 steps: {diff:.2e}")
        if diff > 1e-4:
            raise SystemExit("the floor does not compute what cmbrl.IQL computes")
    floor = FloorIQL(args.obs_dim, args.act_dim)

    def make_agent():
        agent = IQL(args.obs_dim, args.act_dim, num_qvalue_nets=NUM_CRITICS, seed=0)
        if args.part == "critic":
            agent.update = agent.update_critic  # time_against_floor times agent.update
        return agent

    time_against_floor(lambda batch: floor.update(batch, args.part), make_agent, batches, args,
                       f"hidden={HIDDEN} critics={NUM_CRITICS} part={args.part}")


if __name__ == "__main__":
    main()
