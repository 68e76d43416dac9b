"""Cost of acting with ``OptimisticExplorer`` (O3F) against the plain actor, and against one AWAC update.

Work measured, with the fine-tuning agent of ``examples/finetune.py`` (``cmbrl.AWAC`` defaults: tanh-squashed
5-component Gaussian-mixture actor, 3 x 256 ReLU actor and critics; 5 critics, REDQ subset 2) at Hopper's
dimensions (O=11, A=3):

* ``actor``: the policy module on one state (tensordict batch ``()``, what a single-env collector passes), no grad,
  ``ExplorationType.RANDOM`` (a sample, as in the collector);
* ``gaussian``: the actor plus TorchRL's ``AdditiveGaussianModule`` (σ = 0.2);
* ``o3f``: ``OptimisticExplorer`` (N = ``--candidates`` candidates, σ = 0.2, ω = 0), i.e. the actor, N Gaussian
  candidates and one call of the 5 critics on N + 1 actions;
* the same three on a batch of ``--batch-states`` states;
* ``update``: one ``AWAC.update`` on a batch of 256 random transitions (the learner's step per env step at UTD 1).

Blocks of ``--calls`` calls alternate between the contenders ``--rounds`` times after a warm-up; medians per call
are reported. The clock is the process's CPU time (``time.process_time``, not inflated by time slices lost to other
processes on a shared machine) with one torch thread. The harness is ``_timing.py``, shared with the step
benchmarks.

    python benchmarks/explorer_speed.py [--candidates 100] [--batch-states 1000] [--calls 200] [--rounds 5]

Prints ms per call for each contender, then ``o3f_one_state / update`` (the target: < 0.2 at N = 100).

Measured (defaults, on a 2-core machine busy with two training processes, load average ~4.5): actor 0.47 ms,
gaussian 0.70 ms, o3f 4.26 ms on one state; 5.4 / 6.3 / 4376 ms on 1,000 states; AWAC update 36.6 ms;
o3f / update = 0.117. The batched O3F is compute bound (5 critics x 101 actions x ~135k multiply-adds per state,
~45 GFLOP/s on one core): batching saves only the per-call overhead, ~4.4 ms per state either way.
"""
from __future__ import annotations

import argparse

import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from _timing import interleaved, make_batches, on_batches, setup
from cmbrl.agents import AWAC, make_explorer
from cmbrl.components.cli import HelpFormatter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--candidates", type=int, default=100, help="O3F's N candidate actions")
    parser.add_argument("--batch-states", type=int, default=1000, help="states of the batched contenders")
    parser.add_argument("--calls", type=int, default=200,
                        help="calls per timing block (a hundredth for the batch, a tenth for the update)")
    parser.add_argument("--rounds", type=int, default=3, help="timing blocks per contender (interleaved)")
    parser.add_argument("--obs-dim", type=int, default=11, help="observation size O (Hopper: 11)")
    parser.add_argument("--act-dim", type=int, default=3, help="action size A (Hopper: 3)")
    parser.add_argument("--critics", type=int, default=5, help="critics of the AWAC agent")
    args = parser.parse_args()
    setup(threads=1)
    o, a = args.obs_dim, args.act_dim
    agent = AWAC(o, a, num_qvalue_nets=args.critics, target_subset_size=min(2, args.critics), seed=0)
    explorers = {name: make_explorer(name, agent.policy, agent, num_candidates=args.candidates)
                 for name in ("none", "gaussian", "o3f")}
    one = TensorDict({"observation": torch.randn(o)}, batch_size=[])
    many = TensorDict({"observation": torch.randn(args.batch_states, o)}, batch_size=[args.batch_states])
    batches = make_batches(8, 256, o, a, terminal_rate=0.0)

    def acting(explorer, td):
        def call(i):
            with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
                explorer(td.clone(False))
        return call

    contenders = {f"{name} (1 state)": (acting(e, one), args.calls) for name, e in explorers.items()}
    contenders |= {f"{name} ({args.batch_states} states)": (acting(e, many), max(1, args.calls // 100))
                   for name, e in explorers.items()}
    contenders["AWAC update (batch 256)"] = (on_batches(agent.update, batches), max(1, args.calls // 10))
    _, median = interleaved(contenders, args.rounds)  # CPU time; warm-up: a tenth of each block
    print(f"O={o} A={a}, {args.critics} critics 3x256, N={args.candidates}, 1 thread, CPU time, median of "
          f"{args.rounds} blocks")
    for name, ms in median.items():
        print(f"  {name:32s} {ms:8.3f} ms/call")
    update = median["AWAC update (batch 256)"]
    o3f = median["o3f (1 state)"]
    print(f"o3f_one_state={o3f:.3f}ms actor_one_state={median['none (1 state)']:.3f}ms update={update:.3f}ms "
          f"o3f/update={o3f / update:.3f} (target < 0.2) "
          f"o3f_batch_per_state={median[f'o3f ({args.batch_states} states)'] / args.batch_states * 1e3:.1f}us")


if __name__ == "__main__":
    main()
