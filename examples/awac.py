"""AWAC offline (Nair et al., arXiv:2006.09359), MB2PO's stage one: advantage-weighted regression on the dataset.

    python examples/awac.py                                         # hopper-medium-replay, 30k steps
    python examples/awac.py --dataset cmbrl/halfcheetah/medium-v0 --num-steps 100000 --seed 1
    python examples/awac.py --actor tanh_normal --weight batch_softmax   # CORL-like actor, d3rlpy/rlkit weights

Trains :class:`cmbrl.agents.AWAC` (a tanh-squashed 5-component Gaussian-mixture actor as in MB2PO, twin critics)
on uniform minibatches of the dataset and evaluates the deterministic policy in the real environment every
``eval_every`` steps. Diagnostics at each evaluation (CSV logs under ``<out>/logs`` and ``result.json``'s history):
the critic's Q on a fixed probe of dataset (s, a) pairs against their Monte Carlo returns, the mean advantage and
the AWAC weights (mean and max: a max stuck at ``max_weight`` means the clamp is doing the work).

Writes ``checkpoint_seed<S>.pt`` at every evaluation (re-running the same command resumes from it),
``learning_curve_seed<S>.png`` and, when finished, ``agent.pt`` (what ``examples/mb2po.py`` loads: the AWAC state
with its constructor arguments) and ``result.json`` (the learning benchmark's cell contract,
``benchmarks/learning.py``).
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
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.record.loggers import get_logger

from cmbrl import load_dataset
from cmbrl.agents import AWAC
from cmbrl.components import save_atomic
from cmbrl.components.training import (critic_values, dataset_env_id, device_record, evaluate_policy, file_lock,
                                       learner_kwargs, load_checkpoint, make_eval_env, make_q_probe,
                                       final_score_line, parse_dataclass_args, plot_learning_curve,
                                       reference_lines, reference_scores, resolve_run_device, restore_rng_state,
                                       rng_state)

RESUMABLE = {"num_steps", "eval_every", "eval_episodes", "threads", "out", "logger", "progress", "device", "compile",
             "compile_backend", "cudagraphs"}  # may change on resume
KEYS = ["observation", "action", ("next", "observation"), ("next", "reward"), ("next", "terminated"),
        ("next", "done")]
AGENT_KEYS = ("actor", "num_components", "temperature", "weight", "max_weight", "actor_lr", "critic_lr")
"""Args that are AWAC constructor arguments (saved in ``agent.pt`` so that stage two rebuilds the same agent)."""


@dataclasses.dataclass
class Args:
    dataset: str = "cmbrl/hopper/medium-replay-v0"
    """Minari id or short name (hopper-medium-replay); cmbrl recipes are generated locally when absent."""
    max_transitions: int = 0
    """Use the first N transitions of the dataset (0: all)."""
    env_id: str = ""
    """Real environment for evaluation ("" = the dataset's environment)."""
    actor: str = "mixture"
    """mixture (MB2PO: tanh-squashed Gaussian mixture) or tanh_normal (one tanh-Gaussian, as SAC's actor)."""
    num_components: int = 5
    """Mixture components (MB2PO: 5)."""
    temperature: float = 1 / 3
    """AWAC's λ in exp(A/λ) (CORL gym-mujoco configs 1/3; MB2PO fixes λ, value not published)."""
    weight: str = "exp_clamp"
    """exp_clamp (MB2PO, CORL: exp(A/λ) clamped at max_weight) or batch_softmax (d3rlpy, rlkit)."""
    max_weight: float = 20.0
    """Clamp of exp(A/λ) (MB2PO, following CRR: 20)."""
    num_steps: int = 30_000
    """Gradient steps (MB2PO: 500k; CORL: 1M). The default is the learning benchmark's short budget on 2 CPU cores."""
    batch_size: int = 256
    """Minibatch size (CORL AWAC 256; rlkit/d3rlpy 1024)."""
    actor_lr: float = 3e-4
    """Actor learning rate (CORL, rlkit, d3rlpy)."""
    critic_lr: float = 3e-4
    """Critic learning rate (CORL, rlkit, d3rlpy)."""
    eval_every: int = 5_000
    """Gradient steps between real-environment evaluations."""
    eval_episodes: int = 5
    """Deterministic evaluation episodes (D4RL: 10)."""
    seed: int = 0
    """Seed of the networks, the minibatch sampler and the evaluation env."""
    threads: int = 0
    """torch threads (0: torch's default). Use 1 per process when running several seeds side by side."""
    device: str = "auto"
    """Where the networks, the dataset and the replay buffer live: auto (CUDA when torch sees one, else the CPU),
    cpu, cuda or cuda:N. The real evaluation env stays a CPU MuJoCo env (TorchRL moves its tensors)."""
    compile: int = 0
    """1: torch.compile the learner's whole update (loss, backward, optimiser steps; TorchRL's SOTA pattern); the
    first steps pay the compile."""
    compile_backend: str = "inductor"
    """torch.compile backend with --compile 1: inductor (generates code; up to a minute per compile on 2 CPU cores)
    or aot_eager (no code generation, seconds: what the tests use)."""
    cudagraphs: int = 0
    """1: replay the (compiled) update as a CUDA graph (CUDA only: refused with --device cpu)."""
    out: str = "runs/awac"
    """Output folder."""
    logger: str = "csv"
    """TorchRL logger: csv, tensorboard, wandb or mlflow (the last three need their package)."""
    progress: int = 1
    """Show a progress bar (0: print one JSON line per evaluation instead)."""


def agent_kwargs(args) -> dict:
    """AWAC constructor arguments from an Args (AWAC's or MB2PO's)."""
    return {key: getattr(args, key) for key in AGENT_KEYS}


def check_resume(saved: dict, args, defaults: dict, resumable: set, path: Path) -> None:
    """Refuses to resume a checkpoint made with other settings (those outside ``resumable``)."""
    changed = {k: (saved.get(k, defaults[k]), v) for k, v in dataclasses.asdict(args).items()
               if k not in resumable and saved.get(k, defaults[k]) != v}
    if changed:
        raise SystemExit(f"{path} was made with other settings {changed} (saved, now); use another --out")


def main(args: Args) -> dict:
    device = resolve_run_device(args)  # a bad --device / --cudagraphs fails here, before the data
    dataset_id, env_id = dataset_env_id(args.dataset, args.env_id)
    args = dataclasses.replace(args, dataset=dataset_id, env_id=env_id)
    if args.num_steps < 1 or args.eval_every < 1 or args.eval_episodes < 1 or args.max_transitions < 0:
        raise SystemExit(f"need num_steps, eval_every, eval_episodes >= 1 and max_transitions >= 0; got {args}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".lock"):  # MB2PO may run this stage for a benchmark cell at the same time
        return _train(args, out, device)


def _train(args: Args, out: Path, device: torch.device) -> dict:
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset, progress=bool(args.progress))  # generated locally on first use
    if args.max_transitions:
        data = data[:args.max_transitions]
    data = data.to(device)  # once: the replay buffer and the Q probe read it there
    obs_dim, act_dim = data["observation"].shape[-1], data["action"].shape[-1]
    print(f"AWAC on {args.dataset} ({data.shape[0]:,} transitions), eval on {args.env_id}, actor {args.actor}, "
          f"weight {args.weight}, λ={args.temperature:.4g}, {args.num_steps:,} steps, seed {args.seed}, on {device}",
          flush=True)
    agent = AWAC(obs_dim, act_dim, seed=args.seed, **agent_kwargs(args), **learner_kwargs(args, device))
    eval_env = make_eval_env(args.env_id, device, seed=args.seed)  # CPU MuJoCo, tensors on the device
    probe = make_q_probe(data, gamma=0.99)
    buffer = ReplayBuffer(storage=LazyTensorStorage(data.shape[0], device=device), batch_size=args.batch_size)
    buffer.extend(data.select(*KEYS))

    step, history, wall = 0, [], 0.0
    ckpt_path = out / f"checkpoint_seed{args.seed}.pt"
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, device)  # a checkpoint written on CUDA resumes on the CPU
        check_resume(ckpt["args"], args, dataclasses.asdict(Args()), RESUMABLE, ckpt_path)
        agent.load_state_dict(ckpt["agent"])
        step, history, wall = ckpt["step"], ckpt["history"], ckpt["wall_time_s"]
        restore_rng_state(ckpt, device)
    logger = get_logger(args.logger, logger_name=str(out / "logs"), experiment_name=f"awac_seed{args.seed}")
    dataset_meta = minari.load_dataset(args.dataset)
    bar = tqdm.tqdm(total=args.num_steps, initial=step, desc="AWAC", disable=not args.progress, mininterval=5)
    started = time.time() - wall
    while step < args.num_steps:
        metrics = agent.update(buffer.sample(), sync=False)  # detached tensors: no host sync between evaluations
        step += 1
        bar.update()
        if step % args.eval_every == 0 or step == args.num_steps:
            returns = evaluate_policy(eval_env, agent.policy, args.eval_episodes)
            score = 100 * float(minari.get_normalized_score(dataset_meta, np.asarray(returns)).mean())
            q = critic_values(agent.loss_module, probe["observation"], probe["action"]).min(0).values
            point = {"step": step, "return": float(np.mean(returns)), "return_min": float(np.min(returns)),
                     "return_max": float(np.max(returns)), "normalized_score": score,
                     "q_data": q.mean().item(), "mc_return": probe["mc_return"].mean().item(),
                     "q_minus_mc": (q - probe["mc_return"]).mean().item(),
                     **{key: float(value) for key, value in metrics.items()}}
            history.append(point)
            for key, value in point.items():
                logger.log_scalar(key, value, step=step)
            bar.set_postfix(score=f"{score:.1f}", q=f"{point['q_data']:.0f}", mc=f"{point['mc_return']:.0f}")
            if not args.progress:
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in point.items()}), flush=True)
            save_atomic({"agent": agent.state_dict(), "step": step, "history": history, **rng_state(device),
                         "args": dataclasses.asdict(args), "wall_time_s": time.time() - started}, ckpt_path)
    bar.close()
    save_atomic({"agent": agent.state_dict(), "agent_kwargs": agent_kwargs(args), "observation_dim": obs_dim,
                 "action_dim": act_dim, "args": dataclasses.asdict(args), "history": history}, out / "agent.pt")
    references = reference_scores(args.dataset)  # the dataset's average and BC's score, where they exist
    plot_learning_curve(out / f"learning_curve_seed{args.seed}.png", history,
                        f"AWAC on {args.dataset} ({args.actor}, λ={args.temperature:.3g}, seed {args.seed})",
                        reference_lines(references))
    result = {"normalized_score": history[-1]["normalized_score"], "history": history,
              "args": dataclasses.asdict(args), "wall_time_s": time.time() - started, **device_record(device)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: history[-1][k] for k in ("step", "return", "normalized_score")}))
    print(final_score_line(history[-1]["normalized_score"], references), flush=True)
    return result


def parse_args(argv: list[str] | None = None) -> Args:
    return parse_dataclass_args(Args, argv, __doc__)


if __name__ == "__main__":
    main(parse_args())
