"""Offline-to-online fine-tuning with swappable explorers (O3F, "Offline-to-Online Fine-tuning with Optimistic Action
Selection", OpenReview 2x8EKbGU51k, Algorithm 1): AWAC with a 5-critic ensemble, then online with the same update.

    python examples/finetune.py                                              # hopper-medium, O3F, 50k env steps
    python examples/finetune.py --explorers none,gaussian,o3f --seed 1       # three runs from one offline agent
    python examples/finetune.py --explorers none --switch-explorer-at 10000 --switch-to o3f
    python examples/finetune.py --offline-checkpoint runs/awac/agent.pt      # start from examples/awac.py's agent

Offline phase (``<out>/offline``, skipped with ``--offline-checkpoint``): ``offline-steps`` AWAC updates on uniform
dataset minibatches with ``num-critics`` critics whose TD target is the min over a fresh random subset of
``target-critics`` target critics per update (REDQ, arXiv:2101.05982, M = 2; O3F §5.3 uses 5 critics and a random
subset of unstated size). Writes ``agent.pt`` in ``examples/awac.py``'s format. An ``examples/awac.py`` checkpoint
has that script's 2 critics; O3F then scores with those 2.

Online phase, per explorer: the replay buffer holds the dataset and every online transition (sampled uniformly
together, Algorithm 1 line 6); a TorchRL ``Collector`` steps the real Gymnasium v5 env one frame at a time with a
``SwitchableExplorer`` as its policy, and after each env step the agent takes ``utd`` AWAC updates, the same rule as
offline (O3F §4: no change of objective). ``--switch-explorer-at K --switch-to NAME`` swaps the explorer after K
online steps with one call, ``collector.policy.use(NAME)``, which changes no learner parameter. Every
``eval-every`` env steps (and at step 0: the offline policy) the policy is evaluated deterministically, without
explorer. Each finished online episode's return is logged (``episodes`` in result.json).

Outputs: a single explorer runs in ``<out>``; several (``--explorers a,b,c``) run one after the other from the same
offline agent and seed into ``<out>/<name>``, and ``<out>/result.json`` then carries every run under ``runs`` (its
``normalized_score`` and ``history`` are the first explorer's). Each run writes ``checkpoint_seed<S>.pt`` at every
evaluation (rerunning the command resumes; the env starts a fresh episode, the unfinished one is not counted) and
``result.json`` (``benchmarks/learning.py``'s cell contract; ``step`` counts online env steps).
``<out>/online_curves_seed<S>.png`` has every explorer's evaluation and online-episode curves on one figure.
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
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv
from torchrl.record.loggers import get_logger

import awac as offline_example
from cmbrl import load_dataset
from cmbrl.agents import AWAC, EXPLORERS, make_explorers
from cmbrl.components import save_atomic
from cmbrl.components.training import (accumulate_metrics, dataset_env_id, device_record, evaluate_policy,
                                       learner_kwargs, load_checkpoint, make_eval_env, mean_metrics,
                                       parse_dataclass_args, resolve_run_device, restore_rng_state, rng_state)

KEYS = offline_example.KEYS
RESUMABLE = {"num_steps", "eval_every", "eval_episodes", "threads", "out", "logger", "progress", "explorers", "device",
             "compile", "compile_backend", "cudagraphs"}
OFFLINE_KEYS = ("dataset", "max_transitions", "num_critics", "target_critics", "batch_size", "seed",
                *offline_example.AGENT_KEYS)


@dataclasses.dataclass
class Args:
    dataset: str = "cmbrl/hopper/medium-v0"
    """Minari id or short name; cmbrl recipes are generated locally when absent."""
    max_transitions: int = 0
    """Use the first N transitions of the dataset (0: all)."""
    env_id: str = ""
    """Real environment ("" = the dataset's)."""
    offline_checkpoint: str = ""
    """An agent.pt (examples/awac.py's or <out>/offline's) to start from instead of the offline phase."""
    offline_steps: int = 30_000
    """Offline AWAC updates (the learning benchmark's short budget; CORL: 1M)."""
    num_critics: int = 5
    """Critic ensemble size (O3F §5.3: 5)."""
    target_critics: int = 2
    """Random target subset size per update (REDQ M = 2; O3F does not state it)."""
    actor: str = "mixture"
    """AWAC actor: mixture (MB2PO) or tanh_normal."""
    num_components: int = 5
    """Mixture components."""
    temperature: float = 1 / 3
    """AWAC λ (CORL gym-mujoco)."""
    weight: str = "exp_clamp"
    """exp_clamp or batch_softmax."""
    max_weight: float = 20.0
    """Clamp of exp(A/λ)."""
    actor_lr: float = 3e-4
    """Actor learning rate."""
    critic_lr: float = 3e-4
    """Critic learning rate."""
    batch_size: int = 256
    """Minibatch size, offline and online."""
    num_steps: int = 50_000
    """Online env steps per explorer (O3F's budget is not stated; CORL's AWAC fine-tuning: 1M)."""
    utd: int = 1
    """AWAC updates per online env step (O3F-LAPO: 20 with the REDQ ensemble; 1 fits this CPU)."""
    explorers: str = "o3f"
    """Comma-separated explorers to run from the same offline agent: none, gaussian, o3f."""
    sigma: float = 0.2
    """σ of the Gaussian noise and of O3F's candidates (O3F §5.3: 0.2 locomotion, 0.05 otherwise)."""
    num_candidates: int = 100
    """O3F's N."""
    optimism: float = 0.0
    """O3F's ω in f = Q_mean + ω Q_std (paper's main runs: 0)."""
    switch_explorer_at: int = 0
    """Swap to --switch-to after this many online steps (0: never)."""
    switch_to: str = ""
    """Explorer used after --switch-explorer-at."""
    eval_every: int = 5_000
    """Online env steps between deterministic evaluations."""
    eval_episodes: int = 5
    """Evaluation episodes."""
    seed: int = 0
    """Seed of the networks, samplers and envs (the same for every explorer)."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    device: str = "auto"
    """Where the networks, the dataset and the replay buffer live: auto (CUDA when torch sees one, else the CPU),
    cpu, cuda or cuda:N. The real envs stay CPU MuJoCo envs: the collector moves frames to the policy's device
    (``Collector(env_device="cpu", policy_device=device, storing_device=device)``)."""
    compile: int = 0
    """1: torch.compile the learner's whole update (loss, backward, optimiser steps; TorchRL's SOTA pattern); the
    first steps pay the compile."""
    compile_backend: str = "inductor"
    """torch.compile backend with --compile 1: inductor (generates code; up to a minute per compile on 2 CPU cores)
    or aot_eager (no code generation, seconds: what the tests use)."""
    cudagraphs: int = 0
    """1: replay the (compiled) update as a CUDA graph (CUDA only: refused with --device cpu)."""
    out: str = "runs/finetune"
    """Output folder."""
    logger: str = "csv"
    """TorchRL logger: csv, tensorboard, wandb or mlflow."""
    progress: int = 1
    """Show progress bars (0: one JSON line per evaluation)."""


def agent_kwargs(args: Args) -> dict:
    return {**offline_example.agent_kwargs(args), "num_qvalue_nets": args.num_critics,
            "target_subset_size": min(args.target_critics, args.num_critics)}


def normalized(meta, returns) -> float:
    return 100 * float(np.mean(minari.get_normalized_score(meta, np.asarray(returns, dtype=float))))


def offline_phase(args: Args, data, out: Path, device: torch.device) -> dict:
    """Trains (or resumes) AWAC on the dataset (on ``device``) in ``out``; returns an ``agent.pt`` dict
    (examples/awac.py's format)."""
    out.mkdir(parents=True, exist_ok=True)
    obs_dim, act_dim = data["observation"].shape[-1], data["action"].shape[-1]
    agent = AWAC(obs_dim, act_dim, seed=args.seed, **agent_kwargs(args), **learner_kwargs(args, device))
    settings = {key: getattr(args, key) for key in OFFLINE_KEYS}
    step, ckpt_path = 0, out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, device)  # a checkpoint written on CUDA resumes on the CPU
        if ckpt["settings"] != settings or ckpt["step"] > args.offline_steps:
            raise SystemExit(f"{ckpt_path} was made with other settings ({ckpt['settings']}, {ckpt['step']} steps)")
        agent.load_state_dict(ckpt["agent"])
        step = ckpt["step"]
        restore_rng_state(ckpt, device)
    buffer = ReplayBuffer(storage=LazyTensorStorage(data.shape[0], device=device), batch_size=args.batch_size)
    buffer.extend(data.select(*KEYS))
    for step in tqdm.trange(step, args.offline_steps, desc="offline AWAC", disable=not args.progress, mininterval=5):
        agent.update(buffer.sample(), sync=False)  # no host sync per step
        if (step + 1) % 5_000 == 0 and step + 1 < args.offline_steps:
            save_atomic({"agent": agent.state_dict(), "step": step + 1, "settings": settings,
                         **rng_state(device)}, ckpt_path)
    stage = {"agent": agent.state_dict(), "agent_kwargs": agent_kwargs(args), "observation_dim": obs_dim,
             "action_dim": act_dim, "args": dataclasses.asdict(args)}
    save_atomic({**stage, "step": args.offline_steps, "settings": settings, **rng_state(device)}, ckpt_path)
    save_atomic(stage, out / "agent.pt")
    return stage


def online_phase(args: Args, stage: dict, data, explorer_name: str, out: Path, device: torch.device) -> dict:
    """Fine-tunes a copy of the offline agent online (on ``device``) with one explorer; resumable; returns the result
    dict."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)  # every explorer starts from the same random state
    if device.type == "cuda":
        torch.cuda.manual_seed(args.seed)
    agent = AWAC(stage["observation_dim"], stage["action_dim"], seed=args.seed, **stage["agent_kwargs"],
                 **learner_kwargs(args, device))
    agent.load_state_dict(stage["agent"])
    names = list(dict.fromkeys([explorer_name, args.switch_to or explorer_name]))
    explorer = make_explorers(agent.policy, agent, names, active=explorer_name, sigma=args.sigma,
                              num_candidates=args.num_candidates, optimism=args.optimism)
    buffer = ReplayBuffer(storage=LazyTensorStorage(data.shape[0] + args.num_steps, device=device),
                          batch_size=args.batch_size)
    buffer.extend(data.select(*KEYS))
    step, history, episodes, wall = 0, [], [], 0.0
    ckpt_path = out / f"checkpoint_seed{args.seed}.pt"
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, device)  # a checkpoint written on CUDA resumes on the CPU
        offline_example.check_resume(ckpt["args"], args, dataclasses.asdict(Args()), RESUMABLE, ckpt_path)
        agent.load_state_dict(ckpt["agent"])
        step, history, episodes, wall = ckpt["step"], ckpt["history"], ckpt["episodes"], ckpt["wall_time_s"]
        if ckpt["online"] is not None:
            buffer.extend(ckpt["online"])
        restore_rng_state(ckpt, device)
    meta = minari.load_dataset(args.dataset)
    env = TransformedEnv(GymEnv(args.env_id), DoubleToFloat())  # CPU MuJoCo; the collector moves its frames
    env.set_seed(args.seed + step)  # a resumed run does not replay the first run's episodes
    eval_env = make_eval_env(args.env_id, device, seed=args.seed + 10_000 + step)  # CPU MuJoCo, tensors on device
    logger = get_logger(args.logger, logger_name=str(out / "logs"), experiment_name=f"finetune_seed{args.seed}")
    started, window = time.time() - wall, {"gain": [], "metrics": {}, "updates": 0}

    def evaluate():
        returns = evaluate_policy(eval_env, agent.policy, args.eval_episodes)  # the policy, no explorer
        recent = [e["normalized_score"] for e in episodes if e["step"] > step - args.eval_every]
        gain = [g for g in window["gain"] if not np.isnan(g)]
        point = {"step": step, "return": float(np.mean(returns)), "normalized_score": normalized(meta, returns),
                 "explorer": explorer.active, "online_normalized_score": float(np.mean(recent)) if recent else None,
                 "explorer_gain": float(np.mean(gain)) if gain else None,  # f(chosen) - f(policy's own action)
                 **(mean_metrics({k: window["metrics"][k] for k in AWAC.METRICS}, window["updates"])
                    if window["updates"] else {})}
        history.append(point)
        window["gain"], window["metrics"], window["updates"] = [], {}, 0
        for key, value in point.items():
            if isinstance(value, float):
                logger.log_scalar(key, value, step=step)
        if not args.progress:
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in point.items()}), flush=True)
        online = buffer.storage.get(torch.arange(data.shape[0], len(buffer))) if len(buffer) > data.shape[0] else None
        save_atomic({"agent": agent.state_dict(), "step": step, "history": history, "episodes": episodes,
                     "online": online, **rng_state(device), "args": dataclasses.asdict(args),
                     "wall_time_s": time.time() - started}, ckpt_path)

    if not history:
        evaluate()  # step 0: the offline policy, the reference for an initial dip
    if 0 < args.switch_explorer_at <= step and args.switch_to:
        explorer.use(args.switch_to)
    if step < args.num_steps:
        collector = Collector(env, explorer, frames_per_batch=1, total_frames=args.num_steps - step,
                              env_device=torch.device("cpu"), policy_device=device, storing_device=device,
                              auto_register_policy_transforms=False)  # the actor needs no InitTracker
        bar = tqdm.tqdm(total=args.num_steps, initial=step, desc=f"online {explorer_name}", disable=not args.progress,
                        mininterval=5)
        episode_return = 0.0
        for batch in collector:
            step += 1
            buffer.extend(batch.select(*KEYS))
            if "explorer_score" in batch.keys():  # NaN while a non-O3F explorer acts
                window["gain"].append((batch["explorer_score"] - batch["policy_score"]).item())
            episode_return += batch["next", "reward"].sum().item()
            if batch["next", "done"].any():
                episodes.append({"step": step, "return": episode_return, "explorer": explorer.active,
                                 "normalized_score": normalized(meta, [episode_return])})
                logger.log_scalar("episode_normalized_score", episodes[-1]["normalized_score"], step=step)
                episode_return = 0.0
            for _ in range(args.utd):  # Algorithm 1 line 7: the offline update rule, unchanged; no host sync
                accumulate_metrics(window["metrics"], agent.update(buffer.sample(), sync=False))
                window["updates"] += 1
            if step == args.switch_explorer_at and args.switch_to:
                collector.policy.use(args.switch_to)  # the swap: the next frame is taken by the new explorer
            bar.update()
            if step % args.eval_every == 0 or step == args.num_steps:
                evaluate()
                bar.set_postfix(score=f"{history[-1]['normalized_score']:.1f}")
        collector.shutdown()
        bar.close()
    result = {"normalized_score": history[-1]["normalized_score"], "history": history, "episodes": episodes,
              "explorer": explorer_name, "args": dataclasses.asdict(args), "wall_time_s": time.time() - started,
              **device_record(device)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def plot_runs(path: Path, runs: dict[str, dict], args: Args, num_critics: int) -> None:
    """Every explorer's evaluation curve and online-episode returns (moving mean of 5) on one figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    switch = f" → {args.switch_to} at {args.switch_explorer_at}" if args.switch_explorer_at and args.switch_to else ""
    for name, run in runs.items():
        line, = axes[0].plot([h["step"] for h in run["history"]], [h["normalized_score"] for h in run["history"]],
                             marker="o", label=name + switch)
        scores = np.array([e["normalized_score"] for e in run["episodes"]])
        if len(scores):
            smooth = np.convolve(scores, np.ones(5) / 5, mode="valid") if len(scores) >= 5 else scores
            steps = [e["step"] for e in run["episodes"]][len(scores) - len(smooth):]
            axes[1].plot(steps, smooth, color=line.get_color(), marker=".", label=name + switch)
    for ax, title in zip(axes, ("evaluation (policy, no explorer)", "online episodes (moving mean of 5)")):
        if args.switch_explorer_at and args.switch_to:
            ax.axvline(args.switch_explorer_at, linestyle="--", color="grey")
        ax.set(xlabel="online env steps", title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    axes[0].set_ylabel("normalised score")
    fig.suptitle(f"fine-tuning AWAC ({num_critics} critics) on {args.env_id} from {args.dataset}, "
                 f"UTD {args.utd}, σ={args.sigma}, seed {args.seed}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args: Args) -> dict:
    device = resolve_run_device(args)  # a bad --device / --cudagraphs fails here, before the data
    dataset_id, env_id = dataset_env_id(args.dataset, args.env_id)
    args = dataclasses.replace(args, dataset=dataset_id, env_id=env_id)
    names = [n for n in args.explorers.replace(",", " ").split() if n]
    if not names or any(n not in EXPLORERS for n in names) or args.switch_to not in ("", *EXPLORERS):
        raise SystemExit(f"--explorers and --switch-to take names from {EXPLORERS}; got {args.explorers!r}, "
                         f"{args.switch_to!r}")
    if min(args.num_steps, args.eval_every, args.eval_episodes, args.utd, args.num_critics, args.target_critics) < 1:
        raise SystemExit("--num-steps, --eval-every, --eval-episodes, --utd, --num-critics, --target-critics: >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    started = time.time()
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset, progress=bool(args.progress))
    if args.max_transitions:
        data = data[:args.max_transitions]
    data = data.to(device)  # once: the replay buffers read it there
    stage = (load_checkpoint(args.offline_checkpoint, device) if args.offline_checkpoint
             else offline_phase(args, data, out / "offline", device))
    num_critics = stage["agent_kwargs"].get("num_qvalue_nets", 2)  # the loaded agent's, not --num-critics
    print(f"fine-tuning on {args.env_id} from {args.offline_checkpoint or out / 'offline'} "
          f"({num_critics} critics), explorers {names}, {args.num_steps:,} "
          f"steps at UTD {args.utd}, seed {args.seed}, on {device}", flush=True)
    runs = {name: online_phase(args, stage, data, name, out if len(names) == 1 else out / name, device)
            for name in names}
    plot_runs(out / f"online_curves_seed{args.seed}.png", runs, args, num_critics)
    if len(names) == 1:
        return runs[names[0]]
    first = runs[names[0]]
    result = {"normalized_score": first["normalized_score"], "history": first["history"], "runs": runs,
              "args": dataclasses.asdict(args), "wall_time_s": time.time() - started, **device_record(device)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(parse_dataclass_args(Args, None, __doc__))
