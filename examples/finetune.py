"""Offline-to-online fine-tuning with swappable explorers (O3F, "Offline-to-Online Fine-tuning with Optimistic Action
Selection", OpenReview 2x8EKbGU51k, Algorithm 1): AWAC or IQL with a 5-critic ensemble, then online with the same
update.

    python examples/finetune.py                                              # hopper-medium, O3F, 50k env steps
    python examples/finetune.py --explorers none,gaussian,o3f --seed 1       # three runs from one offline agent
    python examples/finetune.py --explorers none --switch-explorer-at 10000 --switch-to o3f
    python examples/finetune.py --offline-checkpoint runs/awac/agent.pt      # start from examples/awac.py's agent
    python examples/finetune.py --dataset halfcheetah-medium --critic-utd 20 # O3F's AWAC-style setting (§6)
    python examples/finetune.py --dataset halfcheetah-medium --base iql      # O3F on IQL (§6): 5 critics, UTD 1
    python examples/finetune.py --base iql --normalize-observations 1        # states standardised (CORL's AWAC, IQL)

Which paper setting each combination reproduces:

- ``--base awac`` (default), ``--utd 1``: CORL's AWAC fine-tuning (one update of actor and critics per env step)
  with O3F's 5 critics and REDQ targets; the cheapest, and what the explorer tables ran first.
- ``--base awac --critic-utd 20``: O3F's own critic training (§6: "we train an ensemble of 5 Q-functions, and use a
  random subset of the Q-functions to generate the training target ... update the critic 20 times per environment
  step"), REDQ's G = 20 (arXiv:2101.05982) with one actor update per env step. O3F does this on LAPO; AWAC is our
  stand-in for LAPO's advantage-weighted actor (LAPO itself is not implemented here).
- ``--base iql``: O3F's IQL variant (§6: IQL's own critic training, one update per env step, with 5 Q-functions
  instead of 2), IQL's locomotion settings (expectile 0.7, β 3, rewards scaled by 1000 / (max - min) dataset
  episode return; arXiv:2110.06169 Appendix B). ``--critic-utd G`` works with IQL too; O3F found it unstable there.

Offline phase (``<out>/offline``, skipped with ``--offline-checkpoint``): ``offline-steps`` updates on uniform
dataset minibatches with ``num-critics`` critics. AWAC: the TD target is the min over a fresh random subset of
``target-critics`` target critics per update (REDQ, arXiv:2101.05982, M = 2; O3F §5.3 uses 5 critics and a random
subset of unstated size); writes ``agent.pt`` in ``examples/awac.py``'s format. An ``examples/awac.py`` checkpoint
has that script's 2 critics; O3F then scores with those 2. IQL: TorchRL's ``IQLLoss`` with ``num-critics``
critics (``cmbrl.agents.IQL``), on rewards scaled by ``--reward-scale`` (online rewards too; evaluations and
episode returns are always the environment's). ``--normalize-observations 1`` standardises observations with the
dataset's mean and std (CORL's ``normalize``; the papers' setting is 0): the statistics are saved in ``agent.pt``
and the online phase applies them to the replay buffer and, as TorchRL ``ObservationNorm`` transforms, to the
collector's and the evaluation's envs.

Online phase, per explorer: the replay buffer holds the dataset and every online transition (sampled uniformly
together, Algorithm 1 line 6); a TorchRL ``Collector`` steps the real Gymnasium v5 env one frame at a time with a
``SwitchableExplorer`` as its policy, and after each env step the agent takes ``critic-utd - utd`` critic-only updates then
``utd`` whole updates, the same rule as offline (O3F §4: no change of objective). ``--switch-explorer-at K --switch-to NAME`` swaps the explorer after K
online steps with one call, ``collector.policy.use(NAME)``, which changes no learner parameter. Every
``eval-every`` env steps (and at step 0: the offline policy) the policy is evaluated deterministically, without
explorer. Each finished online episode's return is logged (``episodes`` in result.json).

Outputs: a single explorer runs in ``<out>``; several (``--explorers a,b,c``) run one after the other from the same
offline agent and seed into ``<out>/<name>``, and ``<out>/result.json`` then carries every run under ``runs`` (its
``normalized_score`` and ``history`` are the first explorer's). Each run writes ``checkpoint_seed<S>.pt`` at every
evaluation and every ``checkpoint-every`` env steps (rerunning the command resumes; the env starts a fresh episode, the unfinished one is not counted) and
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
from cmbrl.agents import AWAC, EXPLORERS, IQL, ensemble_qvalues, iql_reward_scale, make_explorers
from cmbrl.components import save_atomic
from cmbrl.components.training import (accumulate_metrics, dataset_env_id, device_record, evaluate_policy,
                                       file_lock, learner_kwargs, load_checkpoint, make_eval_env, mean_metrics,
                                       observation_norm, observation_stats, parse_dataclass_args,
                                       resolve_run_device, restore_rng_state, rng_state, standardized)

KEYS = offline_example.KEYS
RESUMABLE = {"num_steps", "eval_every", "eval_episodes", "threads", "out", "logger", "progress", "explorers", "device",
             "compile", "compile_backend", "cudagraphs", "checkpoint_every"}
OFFLINE_KEYS = ("dataset", "max_transitions", "num_critics", "target_critics", "batch_size", "seed",
                *offline_example.AGENT_KEYS)
IQL_OFFLINE_KEYS = ("dataset", "max_transitions", "num_critics", "batch_size", "seed", "base", "expectile", "beta",
                    "actor_lr", "critic_lr", "reward_scale")
BASES = {"awac": AWAC, "iql": IQL}


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
    offline_dir: str = ""
    """Where the offline phase trains and resumes ("" = <out>/offline). {seed} and {dataset} (the dataset's folder
    name, cmbrl_hopper_medium-v0) are filled in, so the cells of a `--sweep finetune:explorers=o3f,gaussian,none`
    share one offline agent per dataset and seed (a lock makes a second process wait for the first)."""
    base: str = "awac"
    """Offline learner, kept online: awac (AWAC, O3F's stand-in for LAPO) or iql (TorchRL's IQLLoss; O3F §6)."""
    offline_steps: int = 30_000
    """Offline updates of the base learner (the learning benchmark's short budget; CORL's AWAC and IQL: 1M)."""
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
    expectile: float = 0.7
    """IQL's τ (IQL Appendix B, locomotion; --base iql)."""
    beta: float = 3.0
    """IQL's inverse temperature β (IQL Appendix B, locomotion; --base iql)."""
    reward_scale: float = 0.0
    """Multiplies every reward the learner sees, dataset and online (0: IQL's 1000 / (max - min) dataset episode
    return with --base iql, 1 with awac)."""
    normalize_observations: int = 0
    """1: standardise observations with the dataset's mean and std (+ 1e-3): the replay buffer's and those of every
    env the policy acts in (CORL's AWAC and IQL do; IQL's, AWAC's and O3F's papers do not: 0). The statistics are
    saved with the offline agent, and an agent trained with them always gets them online."""
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
    """Whole updates (critics and actor together) per online env step."""
    critic_utd: int = 0
    """Critic updates per online env step (0: --utd). G > --utd adds G - utd critic-only updates (each on its own
    minibatch, a fresh random target subset each) before the --utd whole updates: REDQ's G critic updates per actor
    update (arXiv:2101.05982, Algorithm 1). --critic-utd 20 --utd 1 is O3F's own setting (O3F §6: 5 critics,
    "update the critic 20 times per environment step"); --utd 1 alone is CORL's AWAC fine-tuning."""
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
    checkpoint_every: int = 1_000
    """Online env steps between checkpoints (also written at every evaluation): an interrupted run loses at most
    this many steps when rerun."""
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
    if args.base == "iql":
        return {"num_qvalue_nets": args.num_critics, "expectile": args.expectile, "temperature": args.beta,
                "actor_lr": args.actor_lr, "critic_lr": args.critic_lr, "value_lr": args.critic_lr}
    return {**offline_example.agent_kwargs(args), "num_qvalue_nets": args.num_critics,
            "target_subset_size": min(args.target_critics, args.num_critics)}


def offline_settings(args: Args) -> dict:
    """What an offline checkpoint must have been made with to be resumed (AWAC's keys as before ``--base``)."""
    keys = IQL_OFFLINE_KEYS if args.base == "iql" else OFFLINE_KEYS + (("reward_scale",) if args.reward_scale
                                                                        not in (0, 1) else ())
    keys += ("normalize_observations",) if args.normalize_observations else ()  # older checkpoints lack the key
    return {key: getattr(args, key) for key in keys}


def make_agent(stage_or_args, observation_dim: int, action_dim: int, seed: int, device_kwargs: dict):
    """The base learner (``"base"`` of a stage dict, or of ``Args``), built from its keyword arguments."""
    if isinstance(stage_or_args, Args):
        base, kwargs = stage_or_args.base, agent_kwargs(stage_or_args)
    else:
        base, kwargs = stage_or_args.get("base", "awac"), stage_or_args["agent_kwargs"]
    return BASES[base](observation_dim, action_dim, seed=seed, **kwargs, **device_kwargs)


def reward_scale(args: Args, data) -> float:
    """``--reward-scale``, or its default for the base (IQL's ``1000 / (max - min)`` episode return of ``data``)."""
    if args.reward_scale:
        return args.reward_scale
    if args.base == "iql":
        return iql_reward_scale(data["next", "reward"], data["next", "done"])
    return 1.0


def scaled(transitions, scale: float):
    """``transitions`` with ``("next", "reward")`` multiplied by ``scale`` (a new tensordict; unchanged at 1)."""
    if scale == 1.0:
        return transitions
    return transitions.set(("next", "reward"), transitions.get(("next", "reward")) * scale)


def critic_updates(args: Args) -> int:
    """Critic updates per online env step: ``--critic-utd``, or ``--utd`` when it is 0."""
    return args.critic_utd or args.utd


TRUNCATION_MARGIN = 300
"""Steps at the end of a truncated episode left out of the Q-against-return comparison: their return-to-go misses
the steps after the time limit (0.99^300 ≈ 5 % of the discounted weight)."""


def q_against_return(trace: list[tuple[float, float, float]], discount: float,
                     truncated: bool) -> tuple[list[float], list[float]]:
    """Per step of a finished episode, ``(mean Q - discounted return-to-go, critics' std)`` from ``trace`` =
    ``[(mean Q(s_t, a_t), std Q(s_t, a_t), r_t), ...]`` (rewards in the learner's units). A truncated episode leaves out
    its last :data:`TRUNCATION_MARGIN` steps. Positive: the critics overestimated the executed action."""
    returns, g = [], 0.0
    for _, _, reward in reversed(trace):
        g = reward + discount * g
        returns.append(g)
    returns.reverse()
    keep = len(trace) - TRUNCATION_MARGIN if truncated else len(trace)
    return ([q - g for (q, _, _), g in zip(trace[:keep], returns[:keep])],
            [std for _, std, _ in trace[:max(keep, 0)]])


def agent_discount(agent) -> float:
    """The learner's γ (AWAC's loss holds it; IQL's in its value estimator)."""
    gamma = getattr(agent, "gamma", None)
    return float(agent.loss_module.gamma if gamma is None else gamma)


def normalized(meta, returns) -> float:
    return 100 * float(np.mean(minari.get_normalized_score(meta, np.asarray(returns, dtype=float))))


def learner_view(transitions, scale: float, stage_or_stats: dict):
    """``transitions`` as the learner sees them: rewards times ``scale`` and, when the stage (or a dict) holds
    ``observation_loc`` / ``observation_scale``, observations standardised with them."""
    transitions = scaled(transitions, scale)
    loc = stage_or_stats.get("observation_loc")
    return transitions if loc is None else standardized(transitions, loc.to(transitions.device),
                                                        stage_or_stats["observation_scale"].to(transitions.device))


def offline_phase(args: Args, data, out: Path, device: torch.device, scale: float = 1.0) -> dict:
    """Trains (or resumes) the base learner on the dataset (on ``device``, rewards times ``scale``, observations
    standardised with ``--normalize-observations 1``) in ``out``; returns an ``agent.pt`` dict (examples/awac.py's
    format, plus ``base``, ``reward_scale``, ``observation_loc`` and ``observation_scale``: ``(O,)`` or None)."""
    out.mkdir(parents=True, exist_ok=True)
    obs_dim, act_dim = data["observation"].shape[-1], data["action"].shape[-1]
    agent = make_agent(args, obs_dim, act_dim, args.seed, learner_kwargs(args, device))
    settings = offline_settings(args)
    step, ckpt_path = 0, out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, device)  # a checkpoint written on CUDA resumes on the CPU
        if ckpt["settings"] != settings or ckpt["step"] > args.offline_steps:
            raise SystemExit(f"{ckpt_path} was made with other settings ({ckpt['settings']}, {ckpt['step']} steps)")
        agent.load_state_dict(ckpt["agent"])
        step = ckpt["step"]
        restore_rng_state(ckpt, device)
    loc, obs_scale = observation_stats(data["observation"]) if args.normalize_observations else (None, None)
    stats = {"observation_loc": loc, "observation_scale": obs_scale}
    buffer = ReplayBuffer(storage=LazyTensorStorage(data.shape[0], device=device), batch_size=args.batch_size)
    buffer.extend(learner_view(data.select(*KEYS), scale, stats))
    for step in tqdm.trange(step, args.offline_steps, desc=f"offline {args.base.upper()}", disable=not args.progress, mininterval=5):
        agent.update(buffer.sample(), sync=False)  # no host sync per step
        if (step + 1) % 5_000 == 0 and step + 1 < args.offline_steps:
            save_atomic({"agent": agent.state_dict(), "step": step + 1, "settings": settings,
                         **rng_state(device)}, ckpt_path)
    stage = {"agent": agent.state_dict(), "agent_kwargs": agent_kwargs(args), "observation_dim": obs_dim,
             "action_dim": act_dim, "args": dataclasses.asdict(args), "base": args.base,
             "reward_scale": scale, **stats}
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
    agent = make_agent(stage, stage["observation_dim"], stage["action_dim"], args.seed, learner_kwargs(args, device))
    scale = stage.get("reward_scale", 1.0)  # the offline phase's: the learner sees one reward scale throughout
    agent.load_state_dict(stage["agent"])
    names = list(dict.fromkeys([explorer_name, args.switch_to or explorer_name]))
    explorer = make_explorers(agent.policy, agent, names, active=explorer_name, sigma=args.sigma,
                              num_candidates=args.num_candidates, optimism=args.optimism)
    buffer = ReplayBuffer(storage=LazyTensorStorage(data.shape[0] + args.num_steps, device=device),
                          batch_size=args.batch_size)
    buffer.extend(learner_view(data.select(*KEYS), scale, stage))
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
    if stage.get("observation_loc") is not None:  # the policy acts on observations standardised as its data
        loc, obs_scale = stage["observation_loc"], stage["observation_scale"]
        env.append_transform(observation_norm(loc.cpu(), obs_scale.cpu()))
        eval_env.append_transform(observation_norm(loc.to(device), obs_scale.to(device)))
    logger = get_logger(args.logger, logger_name=str(out / "logs"), experiment_name=f"finetune_seed{args.seed}")
    started, window = time.time() - wall, {"gain": [], "metrics": {}, "updates": 0, "q_error": [], "q_std": []}
    qvalues, discount = ensemble_qvalues(agent), agent_discount(agent)

    def evaluate():
        returns = evaluate_policy(eval_env, agent.policy, args.eval_episodes)  # the policy, no explorer
        recent = [e["normalized_score"] for e in episodes if e["step"] > step - args.eval_every]
        gain = [g for g in window["gain"] if not np.isnan(g)]
        q_error, q_std = window["q_error"], window["q_std"]
        point = {"step": step, "return": float(np.mean(returns)), "normalized_score": normalized(meta, returns),
                 "explorer": explorer.active, "online_normalized_score": float(np.mean(recent)) if recent else None,
                 "explorer_gain": float(np.mean(gain)) if gain else None,  # f(chosen) - f(policy's own action)
                 # the critics at the executed actions of the episodes that ended in the window: mean Q minus the
                 # discounted return that followed (learner's reward units), and the critics' std there
                 "q_minus_return": float(np.mean(q_error)) if q_error else None,
                 "q_std": float(np.mean(q_std)) if q_std else None,
                 **(mean_metrics({k: window["metrics"][k] for k in type(agent).METRICS}, window["updates"])
                    if window["updates"] else {})}
        history.append(point)
        window.update(gain=[], metrics={}, updates=0, q_error=[], q_std=[])
        for key, value in point.items():
            if isinstance(value, float):
                logger.log_scalar(key, value, step=step)
        if not args.progress:
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in point.items()}), flush=True)
        save()

    def save():
        online = buffer.storage.get(torch.arange(data.shape[0], len(buffer))) if len(buffer) > data.shape[0] else None
        save_atomic({"agent": agent.state_dict(), "step": step, "history": history, "episodes": episodes,
                     "online": online, **rng_state(device), "args": dataclasses.asdict(args),
                     "wall_time_s": time.time() - started}, ckpt_path)

    if not history:
        evaluate()  # step 0: the offline policy, the reference for an initial dip
    if 0 < args.switch_explorer_at <= step and args.switch_to:
        explorer.use(args.switch_to)
    critic_only = critic_updates(args) - args.utd
    if step < args.num_steps:
        collector = Collector(env, explorer, frames_per_batch=1, total_frames=args.num_steps - step,
                              env_device=torch.device("cpu"), policy_device=device, storing_device=device,
                              auto_register_policy_transforms=False)  # the actor needs no InitTracker
        bar = tqdm.tqdm(total=args.num_steps, initial=step, desc=f"online {explorer_name}", disable=not args.progress,
                        mininterval=5)
        episode_return, trace = 0.0, []
        for batch in collector:
            step += 1
            buffer.extend(scaled(batch.select(*KEYS), scale))  # a copy: the episode return below stays the env's
            if "explorer_score" in batch.keys():  # NaN while a non-O3F explorer acts
                window["gain"].append((batch["explorer_score"] - batch["policy_score"]).item())
            episode_return += batch["next", "reward"].sum().item()
            with torch.no_grad():  # the critics' verdict on the executed action, (M, 1, 1)
                q = qvalues(batch, batch["action"].unsqueeze(0))
            trace.append((q.mean().item(), q.std(0, unbiased=False).item(),
                          scale * batch["next", "reward"].sum().item()))
            if batch["next", "done"].any():
                q_error, q_std = q_against_return(trace, discount, bool(batch["next", "truncated"].any()))
                window["q_error"] += q_error
                window["q_std"] += q_std
                episodes.append({"step": step, "return": episode_return, "explorer": explorer.active,
                                 "normalized_score": normalized(meta, [episode_return]),
                                 "q_minus_return": float(np.mean(q_error)) if q_error else None,
                                 "q_std": float(np.mean(q_std)) if q_std else None})
                logger.log_scalar("episode_normalized_score", episodes[-1]["normalized_score"], step=step)
                episode_return, trace = 0.0, []
            for _ in range(critic_only):  # REDQ: the extra critic updates, each on its own minibatch
                agent.update_critic(buffer.sample(), sync=False)
            for _ in range(args.utd):  # Algorithm 1 line 7: the offline update rule, unchanged; no host sync
                accumulate_metrics(window["metrics"], agent.update(buffer.sample(), sync=False))
                window["updates"] += 1
            if step == args.switch_explorer_at and args.switch_to:
                collector.policy.use(args.switch_to)  # the swap: the next frame is taken by the new explorer
            bar.update()
            if step % args.eval_every == 0 or step == args.num_steps:
                evaluate()
                bar.set_postfix(score=f"{history[-1]['normalized_score']:.1f}")
            elif step % args.checkpoint_every == 0:
                save()
        collector.shutdown()
        bar.close()
    result = {"normalized_score": history[-1]["normalized_score"], "history": history, "episodes": episodes,
              "explorer": explorer_name, "args": dataclasses.asdict(args), "wall_time_s": time.time() - started,
              **device_record(device)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def plot_runs(path: Path, runs: dict[str, dict], args: Args, num_critics: int, base: str = "awac") -> None:
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
    fig.suptitle(f"fine-tuning {base.upper()} ({num_critics} critics) on {args.env_id} from {args.dataset}, "
                 f"UTD {args.utd} (critics {critic_updates(args)}), σ={args.sigma}, seed {args.seed}", fontsize=9)
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
    if min(args.num_steps, args.eval_every, args.eval_episodes, args.utd, args.num_critics, args.target_critics,
           args.checkpoint_every) < 1:
        raise SystemExit("--num-steps, --eval-every, --eval-episodes, --utd, --num-critics, --target-critics, "
                         f"--checkpoint-every: >= 1; got {args.num_steps}, {args.eval_every}, {args.eval_episodes}, "
                         f"{args.utd}, {args.num_critics}, {args.target_critics}, {args.checkpoint_every}")
    if args.base not in BASES:
        raise SystemExit(f"--base takes one of {sorted(BASES)}; got {args.base!r}")
    if args.normalize_observations not in (0, 1):
        raise SystemExit(f"--normalize-observations takes 0 or 1; got {args.normalize_observations}")
    if args.reward_scale < 0 or args.expectile <= 0 or args.expectile >= 1 or args.beta <= 0:
        raise SystemExit(f"--reward-scale must be >= 0 (0: the base's default), --expectile in (0, 1), --beta > 0; "
                         f"got {args.reward_scale}, {args.expectile}, {args.beta}")
    if args.critic_utd and args.critic_utd < args.utd:
        raise SystemExit(f"--critic-utd ({args.critic_utd}) counts every critic update per env step, the --utd "
                         f"({args.utd}) whole updates included: give 0 (= --utd) or a value >= --utd")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    started = time.time()
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset, progress=bool(args.progress))
    if args.max_transitions:
        data = data[:args.max_transitions]
    data = data.to(device)  # once: the replay buffers read it there
    scale = reward_scale(args, data)
    if args.offline_checkpoint:
        stage = load_checkpoint(args.offline_checkpoint, device)
        if stage.get("base", "awac") != args.base:
            raise SystemExit(f"--offline-checkpoint {args.offline_checkpoint} holds a {stage.get('base', 'awac')} "
                             f"agent; --base is {args.base}")
        stage.setdefault("reward_scale", scale)
        if args.normalize_observations and stage.get("observation_loc") is None:
            raise SystemExit(f"--normalize-observations 1: {args.offline_checkpoint} was trained on raw observations "
                             "(no observation_loc / observation_scale); drop the flag or train the offline phase here")
        offline_dir = None
    else:
        offline_dir = Path(args.offline_dir.format(seed=args.seed, dataset=args.dataset.replace("/", "_"))
                           if args.offline_dir else out / "offline")
        offline_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(offline_dir / ".lock"):  # explorer cells sharing --offline-dir train it once
            stage = offline_phase(args, data, offline_dir, device, scale)
    num_critics = stage["agent_kwargs"].get("num_qvalue_nets", 2)  # the loaded agent's, not --num-critics
    print(f"fine-tuning {args.base.upper()} (reward scale {stage['reward_scale']:.4g}, observations "
          f"{'raw' if stage.get('observation_loc') is None else 'standardised'}) on {args.env_id} from "
          f"{args.offline_checkpoint or offline_dir} "
          f"({num_critics} critics), explorers {names}, {args.num_steps:,} "
          f"steps at UTD {args.utd} (critic UTD {critic_updates(args)}), seed {args.seed}, on {device}", flush=True)
    runs = {name: online_phase(args, stage, data, name, out if len(names) == 1 else out / name, device)
            for name in names}
    plot_runs(out / f"online_curves_seed{args.seed}.png", runs, args, num_critics, stage.get("base", "awac"))
    if len(names) == 1:
        return runs[names[0]]
    first = runs[names[0]]
    result = {"normalized_score": first["normalized_score"], "history": first["history"], "runs": runs,
              "args": dataclasses.asdict(args), "wall_time_s": time.time() - started, **device_record(device)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(parse_dataclass_args(Args, None, __doc__))
