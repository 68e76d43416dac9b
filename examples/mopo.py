"""MOPO (Yu et al., arXiv:2005.13239, Algorithm 2): SAC in the uncertainty-penalised model MDP.

    python examples/mopo.py                                     # the README's main job (see Args for the default)
    python examples/mopo.py --dataset cmbrl/hopper/medium-v0    # λ and h from OfflineRL-Kit's table for that dataset
    python examples/mopo.py --penalty combined --penalty-coef 2.5 --num-steps 200000 --seed 1

Fits (or loads the cached) dynamics ensemble, wraps it as ``ConservativeModelEnv``, and loops: every
``rollout_every`` gradient steps, ``rollout_batch_size`` model rollouts of ``horizon`` steps from dataset states go
into a model buffer that keeps the last ``retain_rollouts`` rollouts; SAC trains on batches with ``real_ratio``
dataset transitions and the rest model transitions; the policy is evaluated in the real environment.

Diagnostics (CSV logs under ``<out>/logs``, and in ``result.json``'s history at every evaluation): the critic's Q on
a fixed probe of dataset (s, a) pairs against the data's discounted Monte Carlo returns (over-estimation shows as
``q_data - mc_return`` growing), the model MDP's termination rate, mean model reward, uncertainty and penalty
``λ·u``, the share of saturated actions in the rollouts, α and the policy entropy.

Writes ``learning_curve_seed<S>.png``, ``checkpoint_seed<S>.pt`` (re-running the same command resumes from it) and,
when finished, ``result.json`` (``normalized_score``, ``history``, ``args``, ``wall_time_s``: the learning
benchmark's cell contract, see ``benchmarks/learning.py``) under ``--out``.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from cmbrl import SAC, ConservativeModelEnv, load_dataset
from cmbrl.components.training import (compile_setting, default_max_transitions, fit_or_load_ensemble,
                                       learner_kwargs, make_eval_env, parse_dataclass_args, resolve_model_settings,
                                       resolve_run_device, train_in_model)

RESUMABLE = {"num_steps", "eval_every", "eval_episodes", "threads", "out", "logger", "progress", "device", "compile",
             "compile_backend", "cudagraphs"}  # may change on resume
KEYS = ["observation", "action", ("next", "observation"), ("next", "reward"), ("next", "terminated"),
        ("next", "done")]

@dataclasses.dataclass
class Args:
    dataset: str = "cmbrl/hopper/medium-replay-v0"
    """Minari id or short name (hopper-medium-replay); cmbrl recipes are generated locally when absent."""
    max_transitions: int = -1
    """Use the first N transitions of the dataset (0: all; -1: all of a dataset of up to 200k transitions, else the
    first 100k). MOPO fits its model on the whole dataset (1M for the medium sets); fitting on 1M transitions takes
    over an hour on 2 CPU cores, hence the -1 rule."""
    env_id: str = ""
    """Real environment for evaluation ("" = the dataset's environment, e.g. HalfCheetah-v5)."""
    termination_fn: str = ""
    """Termination function of the model MDP: hopper, walker2d or halfcheetah ("" = from the environment)."""
    penalty: str = "max_aleatoric"
    """Uncertainty estimator (see cmbrl.PENALTIES). MOPO: max_aleatoric."""
    penalty_members: str = "all"
    """Members the penalty reads: all (MOPO's and OfflineRL-Kit's code, non-elites included) or elites."""
    clip_observations: int = 0
    """1: clip predicted observations to the data's range (after termination is judged); MOPO and Kit: 0."""
    penalty_coef: float = -1.0
    """λ; negative: OfflineRL-Kit's value for this dataset (components.training.MOPO_HYPERPARAMETERS)."""
    horizon: int = 0
    """Model rollout length h; 0: OfflineRL-Kit's value for this dataset (components.training.MOPO_HYPERPARAMETERS)."""
    real_ratio: float = 0.05
    """Share of each SAC batch drawn from the dataset (MOPO/MBPO 0.05); the rest is model data."""
    num_steps: int = 30_000
    """SAC gradient steps (MOPO: 1M; OfflineRL-Kit: 3M). The default fits the README's ~20 min on 2 CPU cores."""
    rollout_every: int = 1_000
    """Gradient steps between model rollouts (MOPO 1000)."""
    rollout_batch_size: int = 10_000
    """Start states per rollout (MOPO 50,000; smaller here to fit CPU budgets)."""
    retain_rollouts: int = 5
    """The model buffer keeps this many rollouts (MOPO 5)."""
    batch_size: int = 256
    """SAC minibatch (MOPO 256)."""
    actor_lr: float = 1e-4
    """Actor learning rate (OfflineRL-Kit MOPO 1e-4, cosine-annealed over training; MOPO's code 3e-4)."""
    critic_lr: float = 3e-4
    """Critic learning rate (MOPO, OfflineRL-Kit)."""
    alpha_lr: float = 1e-4
    """Entropy-temperature learning rate (OfflineRL-Kit 1e-4; MOPO's code 3e-4)."""
    actor_lr_schedule: str = "cosine"
    """cosine (OfflineRL-Kit: CosineAnnealingLR over the training epochs of 1000 steps) or constant (MOPO)."""
    target_entropy: str = "auto"
    """SAC's entropy target in nats: auto (-dim(A): OfflineRL-Kit, the SAC paper) or a number (MOPO's code: -3 for
    every environment, softlearning's base.py)."""
    ensemble_max_epochs: int = 50
    """Cap on ensemble training epochs (MOPO and OfflineRL-Kit have none: early stopping only). 50 fits the README's
    CPU budgets; it under-fits some datasets (walker2d-medium-replay: held-out MSE 0.59 at 50 epochs, 0.32 when
    early stopping ended it at 289; halfcheetah-medium-replay: 0.64 at 40, 0.64 at 50). A cached fit made with
    another cap that would differ is refused (see ``fit_or_load_ensemble``)."""
    ensemble_seed: int = -1
    """Seed of the dynamics ensemble (-1: --seed). Seeds sharing an ensemble seed and --ensemble-dir share one fit."""
    ensemble_dir: str = ""
    """Where fitted ensembles are cached ("" = --out); the file name holds dataset, size and ensemble seed."""
    eval_every: int = 5_000
    """Gradient steps between real-environment evaluations."""
    eval_episodes: int = 5
    """Deterministic evaluation episodes (MOPO 10)."""
    seed: int = 0
    """Seed for the model env, SAC and evaluation (and the ensemble unless --ensemble-seed)."""
    threads: int = 0
    """torch threads (0: torch's default). Use 1 per process when running several seeds side by side."""
    device: str = "auto"
    """Where the networks, the dataset, the ensemble and the replay buffers live: auto (CUDA when torch sees one,
    else the CPU), cpu, cuda or cuda:N. The real evaluation env stays a CPU MuJoCo env (TorchRL moves its tensors)."""
    compile: int = 0
    """1: torch.compile the learner's whole update (loss, backward, optimiser steps; TorchRL's SOTA pattern) and the
    model env's step; the first steps pay the compile."""
    compile_backend: str = "inductor"
    """torch.compile backend with --compile 1: inductor (generates code; up to a minute per compile on 2 CPU cores)
    or aot_eager (no code generation, seconds: what the tests use)."""
    cudagraphs: int = 0
    """1: replay the (compiled) update as a CUDA graph (CUDA only: refused with --device cpu)."""
    out: str = "runs/mopo"
    """Output folder."""
    logger: str = "csv"
    """TorchRL logger: csv, tensorboard, wandb or mlflow (the last three need their package)."""
    progress: int = 1
    """Show progress bars (0: off)."""


def resolve_settings(args: Args) -> Args:
    """Fills the dataset-dependent defaults (environment, termination function, λ, h); returns a new Args."""
    return resolve_model_settings(args)


def parse_target_entropy(value: str) -> str | float:
    """``"auto"`` or the number in ``value``; SystemExit naming what was received otherwise."""
    if value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number):
        raise SystemExit(f"--target-entropy must be auto or a finite number of nats (e.g. -3), got {value!r}")
    return number


def main(args: Args) -> dict:
    device = resolve_run_device(args)  # a bad --device / --cudagraphs fails here, before the data and the fit
    args = resolve_settings(args)
    if args.actor_lr_schedule not in ("cosine", "constant"):
        raise SystemExit(f"--actor-lr-schedule must be cosine or constant, got {args.actor_lr_schedule!r}")
    target_entropy = parse_target_entropy(args.target_entropy)  # refuse a bad value before the data and the fit
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.dataset, progress=bool(args.progress))  # generated locally on first use
    if args.max_transitions < 0:
        args = dataclasses.replace(args, max_transitions=default_max_transitions(data.shape[0]))
    if args.max_transitions:
        data = data[:args.max_transitions]
    data = data.to(device)  # once: the fit, the start states and the replay buffer read it there
    obs_dim, act_dim = data["observation"].shape[-1], data["action"].shape[-1]
    print(f"MOPO on {args.dataset} ({data.shape[0]:,} transitions), eval on {args.env_id}, termination "
          f"{args.termination_fn}, penalty {args.penalty} over {args.penalty_members} members, λ={args.penalty_coef}, "
          f"h={args.horizon}, {args.num_steps:,} steps, seed {args.seed}, on {device}"
          f"{' (compiled)' if args.compile else ''}", flush=True)

    ensemble, fit = fit_or_load_ensemble(args.ensemble_dir or out, args.dataset, data, seed=args.ensemble_seed,
                                         max_epochs=args.ensemble_max_epochs, progress=bool(args.progress),
                                         device=device)
    env = ConservativeModelEnv(ensemble, penalty=args.penalty, penalty_coef=args.penalty_coef, horizon=args.horizon,
                               start_states=data, batch_size=args.rollout_batch_size,
                               termination_fn=args.termination_fn, penalty_members=args.penalty_members,
                               clip_observations=bool(args.clip_observations), seed=args.seed,
                               compile=compile_setting(args))
    eval_env = make_eval_env(args.env_id, device, seed=args.seed)  # CPU MuJoCo, tensors on the device
    agent = SAC(obs_dim, act_dim, actor_lr=args.actor_lr, critic_lr=args.critic_lr, alpha_lr=args.alpha_lr,
                target_entropy=target_entropy, seed=args.seed, **learner_kwargs(args, device))
    return train_in_model(
        args, name="MOPO", agent=agent, env=env, eval_env=eval_env, data=data, fit=fit, resumable=RESUMABLE,
        keys=KEYS, metric_keys=("alpha", "entropy", "loss_qvalue", "loss_actor"), penalty_coef=args.penalty_coef,
        device=device,
        title=f"MOPO on {args.dataset} ({args.penalty}, λ={args.penalty_coef}, h={args.horizon}, seed {args.seed})")


def parse_args(argv: list[str] | None = None) -> Args:
    return parse_dataclass_args(Args, argv, __doc__)


if __name__ == "__main__":
    main(parse_args())
