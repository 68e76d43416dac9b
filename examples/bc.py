"""Behaviour cloning, the reference row of offline RL tables: regress the dataset's actions, evaluate in the real env.

    python examples/bc.py                          # cmbrl/hopper/medium-v0, generated locally on first use
    python examples/bc.py --num-steps 100000 --seed 1

Trains :class:`cmbrl.BC` (MSE to the dataset's actions, CORL's BC settings) on uniform minibatches of the whole
dataset, then runs the deterministic policy for ``eval_episodes`` episodes in the Gymnasium env recorded in the
Minari dataset and reports the mean return and the D4RL-normalised score (100 = expert reference return,
0 = random). Writes ``<out>/<dataset with / as _>_seed<S>.json``, ``<out>/result.json`` (the format of
``benchmarks/learning.py``'s cells) and TorchRL CSV logs under ``<out>/logs``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import minari
import numpy as np
import torch
import tqdm
from torchrl.data import RandomSampler, ReplayBuffer, TensorStorage
from torchrl.record.loggers import get_logger

from cmbrl import BC, load_dataset
from cmbrl.components.training import device_record, learner_kwargs, parse_dataclass_args, resolve_run_device


@dataclasses.dataclass
class Args:
    dataset: str = "cmbrl/hopper/medium-v0"
    """Minari dataset id (cmbrl recipes are generated locally when absent); it names the evaluation env."""
    num_steps: int = 10_000
    """Gradient steps (CORL BC: 1M; 10k take ~30 s on one busy CPU core)."""
    batch_size: int = 256
    """Minibatch size (CORL BC, TD3+BC)."""
    lr: float = 3e-4
    """Adam learning rate (CORL BC)."""
    normalize: bool = True
    """Standardise observations with the dataset's mean and std + 1e-3 (CORL BC)."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes in the real env (D4RL / CORL: 10)."""
    seed: int = 0
    """Seed for the network, the minibatch sampler and the evaluation episodes (seed * 1000 + i)."""
    threads: int = 1
    """torch threads (0: torch's default)."""
    out: str = "runs/bc"
    """Output folder."""
    max_transitions: int = 0
    """Train on the first this-many transitions only (0: all)."""
    log_every: int = 1_000
    """Gradient steps between logged losses."""
    logger: str = "csv"
    """TorchRL logger: csv, tensorboard, wandb or mlflow (the last three need their package)."""
    device: str = "auto"
    """Where the network, the dataset and the sampled minibatches live: auto (CUDA when torch sees one, else the CPU),
    cpu, cuda or cuda:N. The evaluation env is plain Gymnasium on the CPU (BC.act moves each observation)."""
    compile: int = 0
    """1: torch.compile the whole update (loss, backward, Adam step); the first steps pay the compile."""
    compile_backend: str = "inductor"
    """torch.compile backend with --compile 1: inductor (generates code; up to a minute per compile on 2 CPU cores)
    or aot_eager (no code generation, seconds: what the tests use)."""
    cudagraphs: int = 0
    """1: replay the (compiled) update as a CUDA graph (CUDA only: refused with --device cpu)."""


def evaluate(env, agent: BC, episodes: int, seed: int) -> list[float]:
    """Undiscounted returns of the deterministic policy; plain Gymnasium + numpy (a TorchRL rollout is slower)."""
    returns = []
    for i in range(episodes):
        observation, _ = env.reset(seed=seed * 1000 + i)
        total, done = 0.0, False
        while not done:
            observation, reward, terminated, truncated, _ = env.step(agent.act(observation))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return returns


def main(args: Args) -> dict:
    start = time.perf_counter()
    device = resolve_run_device(args)  # a bad --device / --cudagraphs fails here, before the data
    if args.num_steps < 0 or args.batch_size < 1 or args.eval_episodes < 1 or args.max_transitions < 0:
        raise ValueError(f"need num_steps >= 0, batch_size >= 1, eval_episodes >= 1, max_transitions >= 0; got {args}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.dataset, progress=True)  # generated locally on first use
    if args.max_transitions:
        data = data[: args.max_transitions]
    data = data.to(device)  # once: every minibatch is sampled there
    dataset = minari.load_dataset(args.dataset)
    if dataset.storage.metadata.get("ref_min_score") is None:  # check before training, not after
        raise SystemExit(f"{args.dataset} has no ref_min_score / ref_max_score: no normalised score possible.")
    env = dataset.recover_environment(eval_env=True)  # the env id (and TimeLimit) stored with the dataset

    observations = data["observation"]
    mean, std = (observations.mean(0), observations.std(0, correction=0) + 1e-3) if args.normalize else (None, None)
    agent = BC(observations.shape[-1], data["action"].shape[-1], action_low=env.action_space.low,
               action_high=env.action_space.high, observation_mean=mean, observation_std=std, lr=args.lr,
               seed=args.seed, **learner_kwargs(args, device))
    buffer = ReplayBuffer(storage=TensorStorage(data.select("observation", "action")), sampler=RandomSampler(),
                          batch_size=args.batch_size, generator=torch.Generator().manual_seed(args.seed))
    name = f"{args.dataset.replace('/', '_')}_seed{args.seed}"
    logger = get_logger(args.logger, logger_name=str(out / "logs"), experiment_name=f"bc_{name}")

    bar = tqdm.trange(args.num_steps, desc="BC")
    for step in bar:
        metrics = agent.update(buffer.sample(), sync=False)  # a detached tensor: no host sync per step
        if (step + 1) % args.log_every == 0 or step + 1 == args.num_steps:
            loss = float(metrics["loss_bc"])
            logger.log_scalar("loss_bc", loss, step=step + 1)
            bar.set_postfix(loss_bc=f"{loss:.4f}")

    returns = np.asarray(evaluate(env, agent, args.eval_episodes, args.seed))
    env.close()
    score = 100 * float(np.mean(minari.get_normalized_score(dataset, returns)))
    logger.log_scalar("normalized_score", score, step=args.num_steps)
    result = {"dataset": args.dataset, "seed": args.seed, "num_steps": args.num_steps, "batch_size": args.batch_size,
              "return_mean": float(returns.mean()), "return_std": float(returns.std()), "normalized_score": score,
              "wall_time_s": time.perf_counter() - start}
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    # the learning benchmark's cell result (benchmarks/learning.py): the final evaluation as a one-point history
    (out / "result.json").write_text(json.dumps({
        "normalized_score": score,
        "history": [{"step": args.num_steps, "normalized_score": score, "return": result["return_mean"],
                     "return_std": result["return_std"]}],
        "args": dataclasses.asdict(args), "wall_time_s": result["wall_time_s"], **device_record(device)}, indent=1))
    return result


def parse_args(argv: list[str] | None = None) -> Args:
    return parse_dataclass_args(Args, argv, __doc__)


if __name__ == "__main__":
    print(f"normalized_score={main(parse_args())['normalized_score']:.2f}")
