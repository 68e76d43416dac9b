"""MB2PO (Villaflor et al., "Fine-Tuning Offline Reinforcement Learning with Model-Based Policy Optimization",
OpenReview wiSgdeJ29ee), Algorithm 1: AWAC fine-tuned inside the conservative model MDP.

    python examples/mb2po.py                                      # stage one (AWAC) too if --awac-out has no agent
    python examples/mb2po.py --awac-out runs/awac --iterations 30 --seed 0
    python examples/mb2po.py --dataset cmbrl/halfcheetah/medium-v0 --real-ratio 0.5

Stage one is ``examples/awac.py`` (run here, in this process, when ``<awac-out>/agent.pt`` does not exist yet; it
resumes like that script). Stage two loads that agent, fits (or loads the cached) dynamics ensemble and, per
iteration: ``rollout_batch_size`` rollouts of ``horizon`` steps in ``ConservativeModelEnv`` (MOPO's max-aleatoric
penalty, ``penalty_coef`` λ) from dataset states with the current stochastic policy, all added to a model buffer;
then ``updates_per_iteration`` AWAC steps on batches with a ``real_ratio`` (the paper's ω) share of dataset
transitions and the rest drawn uniformly from the model buffer. The model buffer is TorchRL's ring storage of
capacity ``num_retained_iterations × rollout_batch_size × horizon``: every iteration adds exactly that many rows, so
it holds exactly the last ``num_retained_iterations`` (the paper's n = 100) iterations' data.

Why this damps policy change (MB2PO §4.2): AWAC's update is the KL projection of ``π_data · exp(A/λ)``, so training
on data collected by the last n policy iterates keeps the new policy close to their mixture, a soft trust region
like TRPO's. The ω share of dataset rows adds the behaviour-regularisation towards the data's policy.

Budget. The paper collects 1,000,000 model transitions per iteration (a GPU's few seconds) for 500 iterations of
1000 updates. On one CPU thread an AWAC update costs ~20 ms (``benchmarks/awac_step.py``), so 1000 updates take
~20 s and dominate an iteration (one seed on hopper-medium-replay, sharing 2 loaded cores: 40–55 s per iteration);
the default is 10,000 rollout starts per iteration (50,000 transitions at h = 5, 5 % of the paper's) and 30
iterations (30k updates), with n = 100 kept: within this budget the buffer never drops an iteration, exactly as in
the paper's first 100 iterations.

Settings without a published value (the paper's appendix is not retrievable, ``../shared/HYPERPARAMETERS.md``
§4): λ and h default to MOPO's per-dataset values (OfflineRL-Kit's table, same penalty); ω defaults to 0.5, an
even weight of the two KL terms of the paper's §4.2 objective; the ensemble is cmbrl's 7 members / 5 elites (the
paper: 5), shared with MOPO through the ensemble cache.

Writes, like ``examples/mopo.py``: CSV logs, ``checkpoint_seed<S>.pt`` (resume by re-running), the learning curve,
and ``result.json`` whose history starts with the AWAC policy's own score at step 0.
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path

import minari
import numpy as np
import torch
import tqdm
from torchrl.data import LazyTensorStorage, OfflineToOnlineReplayBuffer, ReplayBuffer
from torchrl.record.loggers import get_logger

import awac as stage_one
from cmbrl import ConservativeModelEnv, load_dataset
from cmbrl.agents import AWAC
from cmbrl.components import save_atomic
from cmbrl.components.training import (accumulate_metrics, compile_setting, critic_values, default_max_transitions,
                                       device_record, evaluate_policy, final_score_line, fit_or_load_ensemble,
                                       learner_kwargs, load_checkpoint, make_eval_env, make_q_probe, mean_metrics,
                                       negative_reward_warning, parse_dataclass_args, plot_learning_curve,
                                       reference_lines, reference_scores, resolve_model_settings, resolve_run_device,
                                       restore_rng_state, rng_state, rollout_stats)

RESUMABLE = {"iterations", "eval_every", "eval_episodes", "threads", "out", "logger", "progress", "awac_out", "device",
             "compile", "compile_backend", "cudagraphs"}
KEYS = stage_one.KEYS


@dataclasses.dataclass
class Args:
    dataset: str = "cmbrl/hopper/medium-replay-v0"
    """Minari id or short name; cmbrl recipes are generated locally when absent."""
    max_transitions: int = -1
    """First N transitions for the model and the ω share (0: all; -1: all up to 200k, else the first 100k, as MOPO)."""
    env_id: str = ""
    """Real environment for evaluation ("" = the dataset's environment)."""
    termination_fn: str = ""
    """Termination function of the model MDP ("" = from the environment)."""
    awac_out: str = ""
    """Stage one's folder (examples/awac.py --out); "" = <out>/awac. Trained here first when it has no agent.pt."""
    awac_steps: int = 30_000
    """Stage one's gradient steps when it is trained here (MB2PO: 500k)."""
    actor: str = "mixture"
    """Stage one's actor when trained here (see examples/awac.py)."""
    num_components: int = 5
    """Stage one's mixture components when trained here (MB2PO: 5)."""
    temperature: float = 1 / 3
    """AWAC's λ for stage one when trained here (stage two keeps the loaded agent's)."""
    weight: str = "exp_clamp"
    """AWAC weights for stage one when trained here (stage two keeps the loaded agent's)."""
    max_weight: float = 20.0
    """Clamp of exp(A/λ) for stage one when trained here (MB2PO: 20)."""
    actor_lr: float = 3e-4
    """AWAC's actor learning rate for stage one when trained here."""
    critic_lr: float = 3e-4
    """AWAC's critic learning rate for stage one when trained here."""
    penalty: str = "max_aleatoric"
    """Uncertainty estimator (MB2PO: the largest predicted std over members, MOPO's max_aleatoric)."""
    penalty_coef: float = -1.0
    """λ of the reward penalty; negative: MOPO's per-dataset value (cmbrl.components.training)."""
    horizon: int = 0
    """Model rollout length h; 0: MOPO's per-dataset value."""
    real_ratio: float = 0.5
    """MB2PO's ω: share of each batch drawn from the dataset (no published value; see the module docstring)."""
    iterations: int = 30
    """MB2PO iterations (paper: 500)."""
    updates_per_iteration: int = 1_000
    """AWAC updates per iteration (paper: 1000)."""
    rollout_batch_size: int = 10_000
    """Rollout start states per iteration (paper: 1M transitions per iteration; see the module docstring)."""
    num_retained_iterations: int = 100
    """The model buffer holds the last n iterations' data (paper: n = 100)."""
    batch_size: int = 256
    """AWAC minibatch."""
    ensemble_max_epochs: int = 50
    """Cap on ensemble training epochs (as examples/mopo.py's; a cached fit made under another cap is refused)."""
    ensemble_seed: int = -1
    """Seed of the dynamics ensemble (-1: --seed); shared with MOPO runs through --ensemble-dir."""
    ensemble_dir: str = ""
    """Where fitted ensembles are cached ("" = --out)."""
    eval_every: int = 5
    """Iterations between real-environment evaluations."""
    eval_episodes: int = 5
    """Deterministic evaluation episodes."""
    seed: int = 0
    """Seed of the model env, stage one and the evaluation env."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    device: str = "auto"
    """Where the networks, the dataset, the ensemble and the replay buffers live (stage one too, when trained here):
    auto (CUDA when torch sees one, else the CPU), cpu, cuda or cuda:N. The real evaluation env stays a CPU MuJoCo
    env (TorchRL moves its tensors)."""
    compile: int = 0
    """1: torch.compile the learner's whole update (loss, backward, optimiser steps; TorchRL's SOTA pattern) and the
    model env's step (stage one too, when trained here); the first steps pay the compile."""
    compile_backend: str = "inductor"
    """torch.compile backend with --compile 1: inductor (generates code; up to a minute per compile on 2 CPU cores)
    or aot_eager (no code generation, seconds: what the tests use)."""
    cudagraphs: int = 0
    """1: replay the (compiled) update as a CUDA graph (CUDA only: refused with --device cpu)."""
    out: str = "runs/mb2po"
    """Output folder."""
    logger: str = "csv"
    """TorchRL logger."""
    progress: int = 1
    """Show progress bars (0: one JSON line per evaluation)."""


def resolve_settings(args: Args) -> Args:
    """Fills the dataset-dependent defaults (environment, termination, λ, h, stage one's folder)."""
    args = resolve_model_settings(args)
    return dataclasses.replace(args, awac_out=args.awac_out or str(Path(args.out) / "awac"))


def make_model_buffer(transitions_per_iteration: int, num_retained_iterations: int,
                      device: torch.device | str = "cpu") -> ReplayBuffer:
    """TorchRL ring buffer that holds exactly the last ``num_retained_iterations`` iterations' transitions.

    Holds when every iteration extends it by exactly ``transitions_per_iteration`` rows (the rollouts here are
    ``rollout_batch_size × horizon`` rows, done rows included), since ``LazyTensorStorage`` overwrites the oldest
    rows first. The storage lives on ``device`` (the learner's), so sampled batches never cross PCIe.
    """
    if transitions_per_iteration < 1 or num_retained_iterations < 1:
        raise ValueError(f"need transitions_per_iteration and num_retained_iterations >= 1, got "
                         f"{transitions_per_iteration}, {num_retained_iterations}")
    return ReplayBuffer(storage=LazyTensorStorage(transitions_per_iteration * num_retained_iterations, device=device))


def load_stage_one(args: Args, device: torch.device | str = "cpu") -> tuple[dict, Path]:
    """Loads ``<awac_out>/agent.pt`` to ``device`` (``map_location``), training stage one with examples/awac.py
    there first (on the same device, compiled alike) if it is missing."""
    awac_out = Path(args.awac_out)
    if not (awac_out / "agent.pt").exists():
        print(f"stage one: no {awac_out / 'agent.pt'}; training AWAC there", flush=True)
        stage_one.main(stage_one.Args(
            dataset=args.dataset, env_id=args.env_id, num_steps=args.awac_steps, seed=args.seed,
            threads=args.threads, out=str(awac_out), logger=args.logger, progress=args.progress,
            eval_episodes=args.eval_episodes, device=args.device, compile=args.compile,
            compile_backend=args.compile_backend, cudagraphs=args.cudagraphs, **stage_one.agent_kwargs(args)))
    return load_checkpoint(awac_out / "agent.pt", device), awac_out


def main(args: Args) -> dict:
    device = resolve_run_device(args)  # a bad --device / --cudagraphs fails here, before stage one and the data
    args = resolve_settings(args)
    if not 0.0 < args.real_ratio < 1.0:
        raise SystemExit(f"--real-ratio (ω) must be in (0, 1) (TorchRL's OfflineToOnlineReplayBuffer), "
                         f"got {args.real_ratio}")
    if min(args.iterations, args.updates_per_iteration, args.rollout_batch_size, args.eval_every) < 1:
        raise SystemExit("--iterations, --updates-per-iteration, --rollout-batch-size and --eval-every must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stage, awac_out = load_stage_one(args, device)
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset, progress=bool(args.progress))
    if args.max_transitions < 0:
        args = dataclasses.replace(args, max_transitions=default_max_transitions(data.shape[0]))
    if args.max_transitions:
        data = data[:args.max_transitions]
    data = data.to(device)  # once: the fit, the start states, the replay buffer and the Q probe read it there
    print(f"MB2PO on {args.dataset} ({data.shape[0]:,} transitions) from {awac_out / 'agent.pt'}, "
          f"penalty {args.penalty} λ={args.penalty_coef}, h={args.horizon}, ω={args.real_ratio}, "
          f"{args.iterations} iterations × {args.updates_per_iteration} updates, "
          f"{args.rollout_batch_size:,} rollouts per iteration, n={args.num_retained_iterations}, seed {args.seed}, "
          f"on {device}{' (compiled)' if args.compile else ''}",
          flush=True)

    ensemble, fit = fit_or_load_ensemble(args.ensemble_dir or out, args.dataset, data, seed=args.ensemble_seed,
                                         max_epochs=args.ensemble_max_epochs, progress=bool(args.progress),
                                         device=device)
    env = ConservativeModelEnv(ensemble, penalty=args.penalty, penalty_coef=args.penalty_coef, horizon=args.horizon,
                               start_states=data, batch_size=args.rollout_batch_size,
                               termination_fn=args.termination_fn, seed=args.seed, compile=compile_setting(args))
    eval_env = make_eval_env(args.env_id, device, seed=args.seed)  # CPU MuJoCo, tensors on the device
    agent = AWAC(stage["observation_dim"], stage["action_dim"], seed=args.seed, **stage["agent_kwargs"],
                 **learner_kwargs(args, device))
    agent.load_state_dict(stage["agent"])
    probe = make_q_probe(data, gamma=0.99)

    real = ReplayBuffer(storage=LazyTensorStorage(data.shape[0], device=device))
    real.extend(data.select(*KEYS))
    per_iteration = args.rollout_batch_size * args.horizon
    model_buffer = make_model_buffer(per_iteration, args.num_retained_iterations, device)
    buffer = OfflineToOnlineReplayBuffer(real, online_storage=model_buffer.storage,
                                         offline_fraction=args.real_ratio, batch_size=args.batch_size)

    dataset_meta = minari.load_dataset(args.dataset)

    def evaluation(step: int, metrics: dict, model_stats: dict) -> dict:
        returns = evaluate_policy(eval_env, agent.policy, args.eval_episodes)
        q = critic_values(agent.loss_module, probe["observation"], probe["action"]).min(0).values
        return {"step": step, "return": float(np.mean(returns)), "return_min": float(np.min(returns)),
                "return_max": float(np.max(returns)),
                "normalized_score": 100 * float(minari.get_normalized_score(dataset_meta, np.asarray(returns)).mean()),
                "q_data": q.mean().item(), "mc_return": probe["mc_return"].mean().item(),
                "q_minus_mc": (q - probe["mc_return"]).mean().item(), **model_stats, **metrics}

    iteration, history, wall = 0, [], 0.0
    ckpt_path = out / f"checkpoint_seed{args.seed}.pt"
    if ckpt_path.exists():  # resume; the model buffer is refilled by the next iteration's rollout
        ckpt = load_checkpoint(ckpt_path, device)  # a checkpoint written on CUDA resumes on the CPU
        stage_one.check_resume(ckpt["args"], args, dataclasses.asdict(Args()), RESUMABLE, ckpt_path)
        agent.load_state_dict(ckpt["agent"])
        iteration, history, wall = ckpt["iteration"], ckpt["history"], ckpt["wall_time_s"]
        restore_rng_state(ckpt, device)
        env.set_seed(args.seed + iteration)
    else:
        history.append(evaluation(0, {}, {}))  # the AWAC policy MB2PO starts from
        print(json.dumps({"awac_start": round(history[0]["normalized_score"], 2)}), flush=True)
    logger = get_logger(args.logger, logger_name=str(out / "logs"), experiment_name=f"mb2po_seed{args.seed}")
    bar = tqdm.tqdm(total=args.iterations, initial=iteration, desc="MB2PO iterations", disable=not args.progress)
    started, first_iteration = time.time() - wall, iteration
    while iteration < args.iterations:
        with torch.no_grad():  # stochastic policy, as Algorithm 1's a_j ~ π(s_j)
            rollout = env.rollout(args.horizon, agent.policy, break_when_any_done=False)
        buffer.extend(rollout.reshape(-1).select(*KEYS))
        model_stats = rollout_stats(rollout, args.penalty_coef)
        if iteration == first_iteration and (warning := negative_reward_warning(
                model_stats, getattr(env, "termination_fn", None) is not None)) is not None:
            warnings.warn(warning, stacklevel=1)
        sums: dict = {}  # detached tensors: no host sync per update, one per metric at the iteration's end
        for _ in range(args.updates_per_iteration):
            accumulate_metrics(sums, agent.update(buffer.sample(), sync=False))
        metrics = mean_metrics(sums, args.updates_per_iteration)
        iteration += 1
        step = iteration * args.updates_per_iteration
        for key, value in {**model_stats, **metrics}.items():
            logger.log_scalar(key, value, step=step)
        bar.update()
        if iteration % args.eval_every == 0 or iteration == args.iterations:
            point = evaluation(step, metrics, model_stats)
            history.append(point)
            for key in ("return", "normalized_score", "q_data", "q_minus_mc"):
                logger.log_scalar(key, point[key], step=step)
            bar.set_postfix(score=f"{point['normalized_score']:.1f}", q=f"{point['q_data']:.0f}")
            if not args.progress:
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in point.items()}), flush=True)
            save_atomic({"agent": agent.state_dict(), "iteration": iteration, "history": history,
                         **rng_state(device), "args": dataclasses.asdict(args),
                         "wall_time_s": time.time() - started}, ckpt_path)
    bar.close()
    references = reference_scores(args.dataset)  # the dataset's average and BC's score, where they exist
    plot_learning_curve(out / f"learning_curve_seed{args.seed}.png", history,
                        f"MB2PO on {args.dataset} (λ={args.penalty_coef}, h={args.horizon}, ω={args.real_ratio}, "
                        f"seed {args.seed})", references={"AWAC (start)": history[0]["normalized_score"],
                                                          **reference_lines(references)})
    result = {"normalized_score": history[-1]["normalized_score"], "history": history,
              "awac_normalized_score": history[0]["normalized_score"], "args": dataclasses.asdict(args),
              "wall_time_s": time.time() - started, "ensemble_fit": fit, **device_record(device)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: history[-1][k] for k in ("step", "return", "normalized_score")}))
    print(final_score_line(history[-1]["normalized_score"], references), flush=True)
    return result


def parse_args(argv: list[str] | None = None) -> Args:
    return parse_dataclass_args(Args, argv, __doc__)


if __name__ == "__main__":
    main(parse_args())
