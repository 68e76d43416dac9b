"""The timing harness of the step benchmarks (``sac_step.py``, ``awac_step.py``, ``combo_step.py``) and
``explorer_speed.py``: random transition batches, the floors' parameters, interleaved timing blocks, medians, and
the printed summary.

The benchmarks are run as scripts (``python benchmarks/awac_step.py``), so this module is imported from the
script's own folder, which Python puts first on ``sys.path``.

Timing: blocks of calls alternate between the contenders ``rounds`` times after an untimed warm-up, so that the
noise of a shared machine hits all of them; the median per call of each contender's blocks is reported. The
default clock is the process's CPU time (``time.process_time``), which time slices lost to other processes do not
inflate; ``--clock wall`` (``time.perf_counter``) measures elapsed time (use it with ``--threads`` > 1, where CPU
time adds up the threads).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from tensordict import TensorDict

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def make_batches(n: int, batch_size: int, obs_dim: int, act_dim: int, seed: int = 0,
                 action_spread: float = 1.0, terminal_rate: float = 0.05) -> list[TensorDict]:
    """``n`` batches of random transitions (TorchRL keys), a share ``terminal_rate`` of them terminal (on average).

    Actions are uniform on ``[-action_spread, action_spread)``, clamped to ``[-1, 1]`` when ``action_spread > 1``
    (then some lie exactly on the bounds, as clipped dataset actions do).
    """
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        observation = torch.randn(batch_size, obs_dim, generator=g)
        action = torch.rand(batch_size, act_dim, generator=g) * (2 * action_spread) - action_spread
        if action_spread > 1:
            action = action.clamp(-1, 1)
        next_observation = torch.randn(batch_size, obs_dim, generator=g)
        reward = torch.randn(batch_size, 1, generator=g)
        terminated = (torch.rand(batch_size, 1, generator=g) < terminal_rate if terminal_rate > 0
                      else torch.zeros(batch_size, 1, dtype=torch.bool))
        batches.append(TensorDict({
            "observation": observation, "action": action,
            "next": {"observation": next_observation, "reward": reward, "terminated": terminated,
                     "done": torch.zeros(batch_size, 1, dtype=torch.bool)}}, batch_size=[batch_size]))
    return batches


def linear_params(sizes, stack: int | None = None, in_out: bool = False) -> list[torch.Tensor]:
    """Weights ``(out, in)`` (or ``(stack, out, in)``; ``in_out=True``: ``(in, out)``, ``(stack, in, out)``) and
    biases ``(out,)`` (or ``(stack, 1, out)``) of an MLP of layer widths ``sizes``, with nn.Linear's default
    initialisation, requiring grad: the parameters of a plain-torch floor."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1 / math.sqrt(fan_in)
        shape = (fan_in, fan_out) if in_out else (fan_out, fan_in)
        shape = shape if stack is None else (stack, *shape)
        b_shape = (fan_out,) if stack is None else (stack, 1, fan_out)
        params += [torch.empty(shape).uniform_(-bound, bound).requires_grad_(),
                   torch.empty(b_shape).uniform_(-bound, bound).requires_grad_()]
    return params


def add_timing_args(parser: argparse.ArgumentParser, *, steps: int, rounds: int, warmup: int) -> None:
    """The options every step benchmark takes: ``--steps``, ``--rounds``, ``--warmup``, ``--obs-dim``,
    ``--act-dim``, ``--batch-size``, ``--threads`` and ``--clock`` (defaults for the first three as given)."""
    parser.add_argument("--steps", type=int, default=steps, help="steps per timing block")
    parser.add_argument("--rounds", type=int, default=rounds, help="timing blocks per contender (interleaved)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps of each before timing")
    parser.add_argument("--obs-dim", type=int, default=11, help="observation size O (Hopper: 11)")
    parser.add_argument("--act-dim", type=int, default=3, help="action size A (Hopper: 3)")
    parser.add_argument("--batch-size", type=int, default=256, help="minibatch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu", help="process CPU time or elapsed time")


def setup(threads: int = 1) -> None:
    """One process-wide setting for all contenders: ``threads`` torch threads, global seed 0."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def on_batches(update: Callable, batches: list) -> Callable[[int], object]:
    """``call(i)``: ``update`` on ``batches[i % len(batches)]``."""
    return lambda i: update(batches[i % len(batches)])


def time_calls(call: Callable[[int], object], calls: int, clock: Callable[[], float] = time.process_time) -> float:
    """Milliseconds per call of ``call(i)`` over ``i = 0 .. calls - 1``."""
    start = clock()
    for i in range(calls):
        call(i)
    return (clock() - start) / calls * 1e3


def interleaved(contenders: dict[str, tuple[Callable[[int], object], int]], rounds: int,
                clock: Callable[[], float] = time.process_time,
                warmup: int | None = None) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Times each contender ``name -> (call, calls per block)`` in ``rounds`` interleaved blocks.

    Args:
        contenders: ``call(i)`` and the number of calls per block, by name (timed in this order each round).
        rounds: blocks per contender.
        clock: a ``() -> seconds`` clock (:data:`CLOCKS`).
        warmup: untimed calls of each contender before timing; default a tenth of its block (at least one).

    Returns:
        ``(times, medians)``: each contender's ms per call in every block, and their median.
    """
    for call, calls in contenders.values():
        time_calls(call, max(1, calls // 10) if warmup is None else warmup)
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (call, calls) in contenders.items():
            times[name].append(time_calls(call, calls, clock))
    return times, {name: statistics.median(t) for name, t in times.items()}


def print_blocks(times: dict[str, list[float]], medians: dict[str, float], width: int = 6) -> None:
    """One line per contender: its median and every block, ms per step."""
    for name, t in times.items():
        print(f"{name:>{width}}: median {medians[name]:.2f} ms/step  (blocks: {', '.join(f'{x:.2f}' for x in t)})")


def time_against_floor(floor_update: Callable, make_agent: Callable[[], object], batches: list,
                       args: argparse.Namespace, settings: str) -> None:
    """A floor-against-cmbrl benchmark after its setup: builds the agent (elapsed time of its construction and of
    its first update), times ``floor_update`` and ``agent.update`` in interleaved blocks of ``args.steps`` steps
    (options of :func:`add_timing_args`), and prints the settings (``args``'s and the script's own ``settings``,
    e.g. ``"hidden=(256, 256)"``), the construction line, the blocks, and the summary line ``floor=<ms> cmbrl=<ms>
    ratio=<floor/cmbrl>``."""
    start = time.perf_counter()
    agent = make_agent()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    agent.update(batches[0])
    first_s = time.perf_counter() - start
    contenders = {"floor": (on_batches(floor_update, batches), args.steps),
                  "cmbrl": (on_batches(agent.update, batches), args.steps)}
    times, med = interleaved(contenders, args.rounds, CLOCKS[args.clock], warmup=args.warmup)
    print(f"O={args.obs_dim} A={args.act_dim} batch={args.batch_size} {settings} threads={args.threads} "
          f"steps={args.steps} rounds={args.rounds} clock={args.clock}")
    print(f"cmbrl.{type(agent).__name__}: construction {build_s * 1e3:.0f} ms, first update {first_s * 1e3:.0f} ms")
    print_blocks(times, med)
    print(f"floor={med['floor']:.2f}ms cmbrl={med['cmbrl']:.2f}ms ratio={med['floor'] / med['cmbrl']:.3f}")
