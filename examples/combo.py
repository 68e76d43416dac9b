"""COMBO (Yu et al., arXiv:2102.08363, Algorithm 1): a conservative critic on dataset and model-rollout transitions.

    python examples/combo.py                                     # the default dataset (see Args)
    python examples/combo.py --dataset cmbrl/hopper/medium-v0    # β and h from OfflineRL-Kit's table for that dataset
    python examples/combo.py --prior previous_policy --learn-beta 1 --seed 1    # the report's variants

The same loop as ``examples/mopo.py`` (``cmbrl.components.training.train_in_model``) with the learner swapped: the
model MDP has no reward penalty (``ConservativeModelEnv(ensemble, penalty="none")``), batches are half dataset,
half model transitions (``real_ratio`` 0.5, COMBO), and ``cmbrl.COMBO`` (``COMBOLoss``: SAC plus the CQL(H)
push-down at model states / push-up on dataset pairs) trains on them. Every stored transition carries
``"is_real" (1,)``: ``True`` for the dataset's, ``False`` for the model's, so each batch says which rows are real.

Diagnostics (CSV logs under ``<out>/logs``, and ``result.json``'s history at every evaluation): Q on a fixed probe
of dataset (s, a) pairs against their Monte Carlo return (``q_data``, ``mc_return``, ``q_minus_mc``), the model
MDP's reward and termination rate, α, entropy, β, the regulariser's gap (``cql_gap``, ``policy_gap``: COMBO's
quantity for tuning β), the push-down mean ``q_pushdown`` and the losses. Writes ``learning_curve_seed<S>.png``,
``checkpoint_seed<S>.pt`` (re-running the same command resumes) and ``result.json`` (the learning benchmark's cell
contract, see ``benchmarks/learning.py``) under ``--out``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cmbrl import COMBO, ConservativeModelEnv, load_dataset
from cmbrl.components.training import (combo_hyperparameters, compile_setting, dataset_env_id,
                                       default_max_transitions, fit_or_load_ensemble, learner_kwargs, make_eval_env,
                                       parse_dataclass_args, resolve_run_device, train_in_model)

RESUMABLE = {"num_steps", "eval_every", "eval_episodes", "threads", "out", "logger", "progress", "device", "compile",
             "compile_backend", "cudagraphs"}  # may change on resume
KEYS = ["observation", "action", ("next", "observation"), ("next", "reward"), ("next", "terminated"),
        ("next", "done")]
METRICS = ("alpha", "entropy", "beta", "cql_gap", "policy_gap", "q_pushdown", "loss_qvalue", "loss_cql",
           "loss_actor")


@dataclasses.dataclass
class Args:
    dataset: str = "cmbrl/hopper/medium-replay-v0"
    """Minari id or short name (hopper-medium-replay); cmbrl recipes are generated locally when absent."""
    max_transitions: int = -1
    """Use the first N transitions (0: all; -1: all of a dataset of up to 200k transitions, else the first 100k)."""
    env_id: str = ""
    """Real environment for evaluation ("" = the dataset's environment)."""
    termination_fn: str = ""
    """Termination function of the model MDP: hopper, walker2d or halfcheetah ("" = from the environment)."""
    beta: float = -1.0
    """β, the conservatism weight; negative: OfflineRL-Kit's value for this dataset (COMBO_HYPERPARAMETERS)."""
    horizon: int = 0
    """Model rollout length h; 0: OfflineRL-Kit's value for this dataset (COMBO_HYPERPARAMETERS)."""
    real_ratio: float = 0.5
    """Share of each batch drawn from the dataset (COMBO and OfflineRL-Kit 0.5; the report: 0.05 fails)."""
    rho: str = "model"
    """States of the push-down term: model (the batch's model rows, COMBO eq. 2) or mixed (all rows, Kit's default)."""
    prior: str = "uniform"
    """Third source of push-down actions: uniform (COMBO) or previous_policy (the report's variant)."""
    prior_update_interval: int = 1_000
    """Gradient steps between refreshes of the previous-policy prior (one rollout epoch at --rollout-every 1000)."""
    learn_beta: int = 0
    """1: learn β by CQL-Lagrange on the gap (the report's variant; threshold --beta-threshold)."""
    beta_threshold: float = 10.0
    """Lagrange threshold τ on the gap (OfflineRL-Kit 10)."""
    num_action_samples: int = 10
    """Actions per source and state in the log-sum-exp (CQL and OfflineRL-Kit 10)."""
    deterministic_backup: int = 1
    """1: no entropy term in the critic's target (OfflineRL-Kit's COMBO); 0: SAC's soft backup."""
    num_steps: int = 30_000
    """Gradient steps (COMBO/Kit: 1M). The default fits a ~1 h budget on 2 busy CPU cores."""
    rollout_every: int = 1_000
    """Gradient steps between model rollouts (Kit 1000)."""
    rollout_batch_size: int = 10_000
    """Start states per rollout (Kit 50,000; smaller here to fit CPU budgets)."""
    retain_rollouts: int = 5
    """The model buffer keeps this many rollouts (Kit 5)."""
    batch_size: int = 256
    """Minibatch (Kit 256: 128 real + 128 model)."""
    hidden_sizes: str = "256,256,256"
    """Hidden widths of actor and critics (Kit's COMBO: 3 x 256)."""
    actor_lr: float = 1e-4
    """Actor learning rate (Kit 1e-4, cosine-annealed)."""
    critic_lr: float = 3e-4
    """Critic learning rate (Kit 3e-4)."""
    alpha_lr: float = 1e-4
    """Entropy-temperature learning rate (Kit 1e-4)."""
    actor_lr_schedule: str = "cosine"
    """cosine (Kit: CosineAnnealingLR over the epochs of rollout_every steps) or constant."""
    ensemble_max_epochs: int = 50
    """Cap on ensemble training epochs (as examples/mopo.py's; a cached fit made under another cap is refused)."""
    ensemble_seed: int = -1
    """Seed of the dynamics ensemble (-1: --seed). Runs sharing it and --ensemble-dir share one fit (MOPO's too)."""
    ensemble_dir: str = ""
    """Where fitted ensembles are cached ("" = --out)."""
    eval_every: int = 5_000
    """Gradient steps between real-environment evaluations."""
    eval_episodes: int = 5
    """Deterministic evaluation episodes (Kit 10)."""
    seed: int = 0
    """Seed for the model env, COMBO and evaluation (and the ensemble unless --ensemble-seed)."""
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
    out: str = "runs/combo"
    """Output folder."""
    logger: str = "csv"
    """TorchRL logger: csv, tensorboard, wandb or mlflow (the last three need their package)."""
    progress: int = 1
    """Show progress bars (0: off)."""


def resolve_settings(args: Args) -> Args:
    """Fills the dataset-dependent defaults (environment, termination function, β, h); returns a new Args."""
    dataset, env_id = dataset_env_id(args.dataset, args.env_id)
    horizon, beta = combo_hyperparameters(dataset)
    return dataclasses.replace(
        args, dataset=dataset, env_id=env_id, termination_fn=args.termination_fn or env_id.split("-")[0].lower(),
        horizon=args.horizon or horizon, beta=beta if args.beta < 0 else args.beta,
        ensemble_seed=args.seed if args.ensemble_seed < 0 else args.ensemble_seed)


def main(args: Args) -> dict:
    device = resolve_run_device(args)  # a bad --device / --cudagraphs fails here, before the data and the fit
    args = resolve_settings(args)
    if args.actor_lr_schedule not in ("cosine", "constant"):  # before the ensemble fit, not after it
        raise SystemExit(f"--actor-lr-schedule must be cosine or constant, got {args.actor_lr_schedule!r}")
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
    print(f"COMBO on {args.dataset} ({data.shape[0]:,} transitions), eval on {args.env_id}, termination "
          f"{args.termination_fn}, β={args.beta}, h={args.horizon}, real_ratio {args.real_ratio}, ρ {args.rho}, "
          f"prior {args.prior}, learn_beta {bool(args.learn_beta)}, {args.num_steps:,} steps, seed {args.seed}, on "
          f"{device}{' (compiled)' if args.compile else ''}", flush=True)

    ensemble, fit = fit_or_load_ensemble(args.ensemble_dir or out, args.dataset, data, seed=args.ensemble_seed,
                                         max_epochs=args.ensemble_max_epochs, progress=bool(args.progress),
                                         device=device)
    env = ConservativeModelEnv(ensemble, penalty="none", penalty_coef=0.0, horizon=args.horizon, start_states=data,
                               batch_size=args.rollout_batch_size, termination_fn=args.termination_fn, seed=args.seed,
                               compile=compile_setting(args))
    eval_env = make_eval_env(args.env_id, device, seed=args.seed)  # CPU MuJoCo, tensors on the device
    agent = make_agent(args, obs_dim, act_dim, device)
    return train_in_model(
        args, name="COMBO", agent=agent, env=env, eval_env=eval_env, data=data, fit=fit, resumable=RESUMABLE,
        keys=KEYS, metric_keys=METRICS, mark_real=True, device=device,
        title=f"COMBO on {args.dataset} (β={args.beta}, h={args.horizon}, prior {args.prior}, seed {args.seed})")


def make_agent(args: Args, observation_dim: int, action_dim: int, device: torch.device | str = "cpu") -> COMBO:
    """The :class:`cmbrl.COMBO` of ``args`` on ``device`` (also rebuilds a checkpoint's agent from its saved
    ``args``; ``--compile``/``--cudagraphs`` as ``args`` has them, off when it predates them)."""
    try:
        return COMBO(observation_dim, action_dim, hidden_sizes=[int(w) for w in args.hidden_sizes.split(",")],
                     actor_lr=args.actor_lr, critic_lr=args.critic_lr, alpha_lr=args.alpha_lr, beta=args.beta,
                     num_action_samples=args.num_action_samples, prior=args.prior,
                     prior_update_interval=args.prior_update_interval, rho=args.rho,
                     deterministic_backup=bool(args.deterministic_backup), learn_beta=bool(args.learn_beta),
                     beta_threshold=args.beta_threshold, seed=args.seed,
                     **learner_kwargs(args, torch.device(device)))
    except ValueError as error:
        raise SystemExit(f"bad COMBO setting: {error}") from error


def parse_args(argv: list[str] | None = None) -> Args:
    return parse_dataclass_args(Args, argv, __doc__)


if __name__ == "__main__":
    main(parse_args())
