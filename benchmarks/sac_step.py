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

``--compile 1`` times ``cmbrl.SAC(compile=True)`` (the whole update through ``torch.compile``, inductor's default
mode; ``--backend aot_eager`` for a quick check) against the same eager floor; its first update, which compiles, is
printed apart. ``--variants 1`` (eager only) also times ``cmbrl.SAC`` with each of its private TorchRL/tensordict
fast paths switched off, one at a time, in the same interleaved blocks (``docs/private_internals.md``):

* ``no-fused-critic``: the stacked critics through autograd (``_stacked_qvalues``) instead of the hand-written
  ``_StackedReluMLP`` backward (``loss_module._fused = False``);
* ``no-foreach-soft``: TorchRL's own ``SoftUpdate.step`` instead of ``_ForeachSoftUpdate`` (which reads
  ``SoftUpdate``'s private ``_targets``/``_sources``);
* ``_DirectWriteMixin`` is not on the update's path (the loss runs the actor's network on tensors): it is timed on
  what uses it, ``agent.policy(td)`` on a ``(B,)`` and a ``(1,)`` tensordict (a model rollout's and an env step's
  policy call), with and without the mixin's ``_write_to_tensordict``, in a second set of interleaved blocks.

Timing blocks of ``--steps`` steps alternate between the contenders ``--rounds`` times (after a warm-up), so that the
noise of a shared machine hits both; the medians per step are compared. The default clock is the process's CPU
time (``time.process_time``), which time slices lost to other processes on a shared machine do not inflate;
``--clock wall`` measures elapsed time (use it with ``--threads`` > 1, where CPU time adds up the threads). The
harness (batches, blocks, medians, printing) is ``_timing.py``, shared with the other step benchmarks.

    python benchmarks/sac_step.py [--steps 200] [--rounds 5] [--obs-dim 11] [--act-dim 3] [--batch-size 256]
                                  [--threads 1] [--clock cpu|wall] [--compile 0|1] [--backend inductor|aot_eager]
                                  [--mode MODE] [--hidden 256 256] [--variants 0|1]

Prints ms/step for each, then one summary line ``floor=<ms> cmbrl=<ms> ratio=<floor/cmbrl>`` (target >= 0.9 eager,
>= 1.0 compiled); with ``--variants 1`` one line per variant ``<variant>=<ms> ratio_to_cmbrl=<cmbrl/variant>`` (below 1:
the private fast path pays) and the policy-call lines.
"""
from __future__ import annotations

import argparse
import math
import time
import types

import torch
import torch.nn.functional as F
from tensordict import TensorDict

from _timing import (CLOCKS, add_timing_args, interleaved, linear_params, make_batches, on_batches, print_blocks,
                     setup, time_against_floor)
from tensordict.nn import TensorDictModule
from torchrl.objectives import SoftUpdate

from cmbrl import SAC
from cmbrl.components.cli import HelpFormatter

HIDDEN = (256, 256)
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
GAMMA, TAU, LR = 0.99, 0.005, 3e-4


class FloorSAC:
    """The textbook SAC step in plain torch with the computation of TorchRL's SACLoss v2 (see module docstring)."""

    def __init__(self, obs_dim: int, act_dim: int, num_q: int = 2, hidden=HIDDEN):
        self.act_dim, self.num_q = act_dim, num_q
        self.actor = linear_params((obs_dim, *hidden, 2 * act_dim), in_out=True)
        self.critic = linear_params((obs_dim + act_dim, *hidden, 1), stack=num_q, in_out=True)
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


def variant(name: str, obs_dim: int, act_dim: int, hidden=HIDDEN) -> SAC:
    """``cmbrl.SAC`` (seed 0) with one private fast path switched off (see the module docstring)."""
    agent = SAC(obs_dim, act_dim, hidden_sizes=hidden, seed=0)
    if name == "no-fused-critic":
        agent.loss_module._fused = False
    elif name == "no-foreach-soft":
        agent.target_updater = SoftUpdate(agent.loss_module, tau=TAU)
    elif name != "cmbrl":
        raise ValueError(f"unknown variant {name!r}")
    return agent


def without_direct_write(policy) -> None:
    """Every ``_DirectWriteMixin`` module of ``policy`` back on tensordict's own ``_write_to_tensordict``."""
    for module in policy.modules():
        if isinstance(module, TensorDictModule) and type(module).__name__.startswith("_"):
            module._write_to_tensordict = types.MethodType(TensorDictModule._write_to_tensordict, module)


def time_variants(batches, args) -> None:
    """cmbrl.SAC against its variants without each private fast path, and the policy call with and without
    ``_DirectWriteMixin``; interleaved blocks, medians, ratios within this run."""
    names = ("cmbrl", "no-fused-critic", "no-foreach-soft")
    agents = {name: variant(name, args.obs_dim, args.act_dim, tuple(args.hidden)) for name in names}
    contenders = {name: (on_batches(agent.update, batches), args.steps) for name, agent in agents.items()}
    times, med = interleaved(contenders, args.rounds, CLOCKS[args.clock], warmup=args.warmup)
    print(f"variants (eager, one private fast path off each; {args.steps} steps x {args.rounds} rounds):")
    print_blocks(times, med, width=16)
    for name in names[1:]:
        print(f"{name}={med[name]:.2f}ms ratio_to_cmbrl={med['cmbrl'] / med[name]:.3f} "
              f"(saves {med[name] - med['cmbrl']:.2f} ms/step)")

    plain = SAC(args.obs_dim, args.act_dim, hidden_sizes=tuple(args.hidden), seed=0)
    without_direct_write(plain.policy)
    fast = agents["cmbrl"]
    calls = max(args.steps * 5, 500)
    contenders = {}
    for rows in (args.batch_size, 1):
        tds = [b[:rows].select("observation").clone() for b in batches[:8]]
        contenders[f"policy B={rows}"] = (on_batches(fast.policy, tds), calls)
        contenders[f"policy B={rows} plain"] = (on_batches(plain.policy, tds), calls)
    times, med = interleaved(contenders, args.rounds, CLOCKS[args.clock], warmup=args.warmup)
    print(f"policy calls with / without _DirectWriteMixin ({calls} calls x {args.rounds} rounds, ms per call):")
    print_blocks(times, med, width=22)
    for rows in (args.batch_size, 1):
        a, b = med[f"policy B={rows}"], med[f"policy B={rows} plain"]
        print(f"direct_write B={rows}: {a * 1e3:.0f}us vs plain {b * 1e3:.0f}us ratio={a / b:.3f} "
              f"(saves {(b - a) * 1e3:.0f} us/call)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_timing_args(parser, steps=200, rounds=5, warmup=50)
    parser.add_argument("--compile", type=int, choices=(0, 1), default=0,
                        help="1: time cmbrl.SAC(compile=...) against the eager floor")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend with --compile 1")
    parser.add_argument("--mode", default=None,
                        help="torch.compile mode with --compile 1 (e.g. max-autotune-no-cudagraphs)")
    parser.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN), help="hidden widths (both)")
    parser.add_argument("--variants", type=int, choices=(0, 1), default=0,
                        help="1: also time cmbrl.SAC without each private fast path (eager)")
    args = parser.parse_args()
    setup(args.threads)

    batches = make_batches(64, args.batch_size, args.obs_dim, args.act_dim)
    hidden = tuple(args.hidden)
    floor = FloorSAC(args.obs_dim, args.act_dim, hidden=hidden)
    compile = False
    if args.compile:
        compile = {"backend": args.backend} if args.mode is None else {"backend": args.backend, "mode": args.mode}
    if args.compile:
        print(f"torch {torch.__version__}, cmbrl.SAC(compile={compile}) against the eager floor")
    start = time.perf_counter()
    time_against_floor(floor.update, lambda: SAC(args.obs_dim, args.act_dim, hidden_sizes=hidden, seed=0,
                                                 compile=compile), batches, args, f"hidden={hidden} compile={compile}")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.variants:
        if args.compile:
            raise SystemExit("--variants 1 measures the eager fast paths: use it with --compile 0")
        time_variants(batches, args)


if __name__ == "__main__":
    main()
