"""Cost of one ``cmbrl.COMBO.update`` against one ``cmbrl.SAC.update`` at the same batch size and networks.

Work measured: one gradient step of each on pre-generated random transitions (default Hopper dimensions O=11, A=3,
batch 256 of which half are marked real, ``"is_real"``), both with the same hidden sizes (default 256 x 256, MOPO's
SAC; ``--hidden 256 256 256`` for OfflineRL-Kit's COMBO networks), one CPU thread. COMBO runs its defaults unless
told otherwise: ``n = 10`` actions per source, ρ = the model rows (128 states), uniform prior, deterministic backup.

The issue's target is ``combo / sac <= 1.5``. The third contender says how far any implementation can get: the
matrix products the regulariser adds, alone, in plain torch: for each critic layer the forward product and the
backward products (weight gradient; input gradient but for the first layer) over ``3n · B_ρ`` rows of the stacked
critics, into preallocated outputs, nothing else (no bias, activation, log-sum-exp, sampling or optimiser; see
:class:`RegulariserMatmuls`). ``(sac + matmuls) / sac`` is a lower bound on the ratio for this algorithm at these
sizes, whatever the code.

Timing blocks of ``--steps`` steps alternate between the contenders ``--rounds`` times (after a warm-up), so the
noise of a shared machine hits all; medians per step are compared. The clock is the process's CPU time
(``time.process_time``) by default; ``--clock wall`` for elapsed time. The harness (batches, blocks, medians,
printing) is ``_timing.py``, shared with the other step benchmarks.

    python benchmarks/combo_step.py [--steps 30] [--rounds 5] [--hidden 256 256] [--batch-size 256]
        [--num-action-samples 10] [--rho model|mixed] [--prior uniform|previous_policy] [--learn-beta]
        [--obs-dim 11] [--act-dim 3] [--threads 1] [--clock cpu|wall] [--compile 0|1] [--backend inductor|aot_eager]
        [--unfused 0|1]

``--unfused 1`` adds a contender: COMBO with its critics through autograd instead of the hand-written
``_StackedReluMLP`` (what that private fast path saves, ``docs/private_internals.md``). ``--compile 1`` builds both
learners with ``compile={"backend": <backend>}`` (the first update of each, which
compiles, runs before timing).

Prints ms/step for each, then one summary line ``sac=<ms> combo=<ms> combo/sac=<ratio> matmuls=<ms>
bound=<(sac + matmuls) / sac>``.
"""
from __future__ import annotations

import argparse
import time

import torch

from _timing import CLOCKS, add_timing_args, interleaved, make_batches, on_batches, print_blocks, setup
from cmbrl import COMBO, SAC
from cmbrl.components.cli import HelpFormatter


class RegulariserMatmuls:
    """The matrix products COMBO's regulariser adds to a SAC step, alone (see the module docstring).

    Stacked critics with ``nn.Linear``'s ``(N, out, in)`` weights; per layer the forward product and the weight
    gradient, and the input gradient for all but the first layer (the inputs need none), each into a preallocated
    output (no allocation, bias, activation or reduction is timed). The one-unit output layer's input gradient is
    the broadcast product it is (an outer product), its weight gradient a ``(N, 1, R) @ (N, R, H)`` product.
    """

    def __init__(self, rows: int, sizes: list[int], num_q: int = 2):
        self.weights = [torch.randn(num_q, fan_out, fan_in) / fan_in ** 0.5
                        for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
        self.inputs = [torch.randn(num_q, rows, fan_in) for fan_in in sizes[:-1]]
        self.outputs = [torch.empty(num_q, rows, fan_out) for fan_out in sizes[1:]]
        self.weight_grads = [torch.empty_like(w) for w in self.weights]
        self.input_grads = [torch.empty(num_q, rows, fan_in) for fan_in in sizes[:-1]]

    def update(self, _batch=None) -> None:
        for h, weight, out in zip(self.inputs, self.weights, self.outputs):  # forward
            torch.bmm(h, weight.mT, out=out)
        for layer in range(len(self.weights) - 1, -1, -1):  # backward
            grad, weight = self.outputs[layer], self.weights[layer]
            torch.bmm(grad.mT, self.inputs[layer], out=self.weight_grads[layer])
            if layer > 0:
                if weight.shape[1] == 1:
                    torch.mul(grad, weight, out=self.input_grads[layer])
                else:
                    torch.bmm(grad, weight, out=self.input_grads[layer])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_timing_args(parser, steps=30, rounds=5, warmup=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256],
                        help="hidden widths of the actor and critics")
    parser.add_argument("--real-ratio", type=float, default=0.5, help="share of rows marked real (COMBO 0.5)")
    parser.add_argument("--num-action-samples", type=int, default=10,
                        help="n, actions per source and state in the regulariser (CQL, COMBO: 10)")
    parser.add_argument("--rho", choices=("model", "mixed"), default="model",
                        help="states of the push-down term: the model rows (COMBO) or all rows")
    parser.add_argument("--prior", choices=("uniform", "previous_policy"), default="uniform",
                        help="the regulariser's action prior (COMBOLoss prior)")
    parser.add_argument("--learn-beta", action="store_true", help="learn β by CQL-Lagrange")
    parser.add_argument("--compile", type=int, choices=(0, 1), default=0,
                        help="1: both learners with compile={'backend': --backend}")
    parser.add_argument("--unfused", type=int, choices=(0, 1), default=0,
                        help="1: also time COMBO with its critics through autograd (no _StackedReluMLP)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend with --compile 1")
    args = parser.parse_args()
    setup(args.threads)

    batches = make_batches(64, args.batch_size, args.obs_dim, args.act_dim)
    num_real = round(args.real_ratio * args.batch_size)
    for batch in batches:
        batch["is_real"] = (torch.arange(args.batch_size) < num_real).unsqueeze(-1)
    hidden = tuple(args.hidden)
    compile = {"backend": args.backend} if args.compile else False
    sac = SAC(args.obs_dim, args.act_dim, hidden_sizes=hidden, seed=0, compile=compile)
    combo = COMBO(args.obs_dim, args.act_dim, hidden_sizes=hidden, num_action_samples=args.num_action_samples,
                  rho=args.rho, prior=args.prior, learn_beta=args.learn_beta, seed=0, compile=compile)
    if args.compile:
        for agent in (sac, combo):
            start = time.perf_counter()
            agent.update(batches[0])
            print(f"{type(agent).__name__}: first (compiling) update {time.perf_counter() - start:.1f} s")
    rho_states = args.batch_size - num_real if args.rho == "model" else args.batch_size
    matmuls = RegulariserMatmuls(3 * args.num_action_samples * rho_states,
                                 [args.obs_dim + args.act_dim, *hidden, 1])
    updates = [("sac", sac.update), ("combo", combo.update), ("matmuls", matmuls.update)]
    if args.unfused:
        if args.compile:
            raise SystemExit("--unfused 1 measures the eager fused critic: use it with --compile 0")
        unfused = COMBO(args.obs_dim, args.act_dim, hidden_sizes=hidden, num_action_samples=args.num_action_samples,
                        rho=args.rho, prior=args.prior, learn_beta=args.learn_beta, seed=0)
        unfused.loss_module._fused = False  # the critics through autograd instead of _StackedReluMLP
        updates.append(("unfused", unfused.update))
    contenders = {name: (on_batches(update, batches), args.steps) for name, update in updates}
    times, med = interleaved(contenders, args.rounds, CLOCKS[args.clock], warmup=args.warmup)
    print(f"O={args.obs_dim} A={args.act_dim} batch={args.batch_size} real={num_real} hidden={hidden} "
          f"n={args.num_action_samples} rho={args.rho} ({rho_states} states) prior={args.prior} "
          f"learn_beta={args.learn_beta} threads={args.threads} steps={args.steps} rounds={args.rounds} "
          f"clock={args.clock} compile={compile}")
    print_blocks(times, med, width=8)
    print(f"sac={med['sac']:.2f}ms combo={med['combo']:.2f}ms combo/sac={med['combo'] / med['sac']:.2f} "
          f"matmuls={med['matmuls']:.2f}ms bound={(med['sac'] + med['matmuls']) / med['sac']:.2f}")
    if args.unfused:
        print(f"unfused={med['unfused']:.2f}ms fused/unfused={med['combo'] / med['unfused']:.3f} "
              f"(_StackedReluMLP saves {med['unfused'] - med['combo']:.2f} ms/step)")


if __name__ == "__main__":
    main()
