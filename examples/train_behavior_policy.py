"""Train a SAC behaviour policy on a real MuJoCo environment (the source of the cmbrl datasets).

Reads top to bottom: arguments, environment, agent, one collection/update loop. Every ``eval_every`` frames it
evaluates the deterministic policy, saves a policy snapshot (``policies/step_XXXXXXX.pt``, the actor weights and its
evaluation return) and a full resumable checkpoint (``checkpoint.pt`` with agent, optimisers and replay buffer).
Re-running the same command resumes from the checkpoint.

    python examples/train_behavior_policy.py --env-id Hopper-v5 --total-frames 150000 --out runs/behavior/hopper

Reference: SAC, arXiv:1801.01290. The D4RL "medium" policy is a SAC policy stopped at about a third of expert
return (MOPO, arXiv:2005.13239, section 5.1).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
import tqdm
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.record import CSVLogger

from cmbrl import SAC
from cmbrl.components import save_atomic
from cmbrl.components.training import (learner_kwargs, load_checkpoint, make_eval_env, parse_dataclass_args,
                                       resolve_run_device, restore_rng_state, rng_state)


@dataclasses.dataclass
class Args:
    env_id: str = "Hopper-v5"
    """Gymnasium environment id."""
    total_frames: int = 150_000
    """Environment steps to train for."""
    init_random_frames: int = 5_000
    """Uniformly random steps before the policy acts (SAC warm-up)."""
    frames_per_batch: int = 1_000
    """Environment steps per collection; as many gradient steps follow (update-to-data ratio 1)."""
    batch_size: int = 256
    """SAC minibatch size."""
    buffer_size: int = 1_000_000
    """Replay buffer capacity (keep it when resuming with a larger --total-frames)."""
    eval_every: int = 5_000
    """Evaluate, snapshot the policy and checkpoint every this many frames."""
    eval_episodes: int = 5
    """Deterministic evaluation episodes per evaluation."""
    seed: int = 0
    """Seed for torch, the environment and the replay buffer."""
    threads: int = 1
    """torch threads (small networks gain little from more)."""
    out: str = "runs/behavior/hopper"
    """Output folder: checkpoint.pt, policies/, logs."""
    device: str = "auto"
    """Where the networks and the replay buffer live: auto (CUDA when torch sees one, else the CPU), cpu, cuda or
    cuda:N. The MuJoCo envs stay on the CPU; the collector moves frames to the policy's device. Policy snapshots are
    saved on the CPU."""
    compile: int = 0
    """1: torch.compile SAC's whole update (TorchRL's SOTA pattern); the first steps pay the compile."""
    compile_backend: str = "inductor"
    """torch.compile backend with --compile 1: inductor (generates code) or aot_eager (no code generation)."""
    cudagraphs: int = 0
    """1: replay the (compiled) update as a CUDA graph (CUDA only: refused with --device cpu)."""


def make_env(env_id: str, seed: int) -> TransformedEnv:
    env = TransformedEnv(GymEnv(env_id), DoubleToFloat())  # MuJoCo observations are float64
    env.set_seed(seed)
    return env


def evaluate(env, policy, episodes: int) -> float:
    returns = []
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        for _ in range(episodes):
            rollout = env.rollout(1_000, policy, break_when_any_done=True)
            returns.append(rollout["next", "reward"].sum().item())
    return sum(returns) / len(returns)


def main(args: Args) -> None:
    device = resolve_run_device(args)  # a bad --device / --cudagraphs fails here, before anything runs
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    (out / "policies").mkdir(parents=True, exist_ok=True)
    env = make_env(args.env_id, args.seed)  # CPU: the collector moves its frames to the policy's device
    eval_env = make_eval_env(args.env_id, device, seed=args.seed + 10_000)
    obs_dim = env.observation_spec["observation"].shape[-1]
    act_dim = env.action_spec.shape[-1]
    # the shipped behaviour policies were trained with SAC's earlier head (biased softplus scale, α unbounded), which
    # cmbrl.components.datasets.load_policy rebuilds: keep it so new runs export policies the loader reads right
    agent = SAC(obs_dim, act_dim, action_low=env.action_spec.space.low, action_high=env.action_spec.space.high,
                log_std_min=None, log_std_max=None, max_alpha=None, seed=args.seed, **learner_kwargs(args, device))
    buffer = ReplayBuffer(storage=LazyTensorStorage(args.buffer_size, device=device), batch_size=args.batch_size)
    frames, elapsed, history = 0, 0.0, []
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():  # resume
        ckpt = load_checkpoint(ckpt_path, device)  # a checkpoint written on CUDA resumes on the CPU
        agent.load_state_dict(ckpt["agent"])
        buffer.loads(out / "buffer")
        frames, elapsed, history = ckpt["frames"], ckpt["elapsed"], ckpt["history"]
        restore_rng_state(ckpt, device)
        print(f"resumed at {frames} frames")
    if frames >= args.total_frames:
        print("already done")
        return
    collector = Collector(
        env, agent.policy, frames_per_batch=args.frames_per_batch, total_frames=args.total_frames - frames,
        init_random_frames=max(args.init_random_frames - frames, 0), auto_register_policy_transforms=False,
        env_device=torch.device("cpu"), policy_device=device, storing_device=device,
    )
    logger = CSVLogger(exp_name="sac", log_dir=str(out / "logs"))
    start = time.time() - elapsed
    bar = tqdm.tqdm(total=args.total_frames, initial=frames, desc=f"SAC {args.env_id}")
    for data in collector:
        buffer.extend(data.reshape(-1))
        frames += data.numel()
        bar.update(data.numel())
        if frames >= args.init_random_frames:
            for _ in range(data.numel()):
                agent.update(buffer.sample(), sync=False)  # no host sync per step
        if frames % args.eval_every == 0 or frames >= args.total_frames:
            ret = evaluate(eval_env, agent.policy, args.eval_episodes)
            history.append({"frames": frames, "eval_return": ret, "wall_time_s": time.time() - start})
            logger.log_scalar("eval_return", ret, step=frames)
            bar.set_postfix(eval_return=f"{ret:.0f}")
            actor = {key: value.cpu() for key, value in agent.policy.state_dict().items()}  # loads on any machine
            save_atomic({"actor": actor, "frames": frames, "eval_return": ret,
                         "env_id": args.env_id, "observation_dim": obs_dim, "action_dim": act_dim,
                         "hidden_sizes": [256, 256]},
                        out / "policies" / f"step_{frames:07d}.pt")
            buffer.dumps(out / "buffer")
            save_atomic({"agent": agent.state_dict(), "frames": frames, "elapsed": time.time() - start,
                         "history": history, **rng_state(device), "args": dataclasses.asdict(args)},
                        ckpt_path)
            (out / "history.json").write_text(json.dumps(history, indent=1))
    collector.shutdown()
    bar.close()


if __name__ == "__main__":
    main(parse_dataclass_args(Args, None, __doc__))
