"""Export a behaviour-policy training run as the package data of the D4RL-recipe datasets.

Reads the snapshots written by ``train_behavior_policy.py`` (``<run>/policies/step_*.pt``, one every 5k frames, with
the deterministic evaluation return of each) and writes four files to ``--dest`` (``components/data``):

- ``<env>_medium_sac.pt``: the snapshot whose *stochastic* return (the policy that records the data) is closest to a
  third of the D4RL expert return (D4RL "medium"; MOPO arXiv:2005.13239 sec. 5.1);
- ``<env>_expert_sac.pt``: the snapshot with the best stochastic return (the best this run reached);
- ``<env>_replay_sac.pt``: the compact recipe of the run's replay buffer up to the medium snapshot ("medium-replay"):
  uniformly random actions for the first ``--replay-every`` frames (SAC's warm-up), then the snapshot saved at each
  multiple of ``--replay-every`` collects the next ``--replay-every`` steps; actors in float16 (~140 KB each);
- ``<env>_behavior.json``: the training record: frames trained, wall time, every snapshot's deterministic return and
  the stochastic returns measured here.

Only the ``--candidates`` snapshots nearest the medium target and the ``--candidates`` best (by deterministic
return) are evaluated stochastically (``--episodes`` each); results are cached in ``<run>/stochastic_returns.json``.

    python examples/export_behavior_policies.py --env hopper --run runs/behavior/hopper
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tqdm

from cmbrl.components.datasets import ENVS, load_policy
from cmbrl.components.cli import parse_dataclass_args


@dataclasses.dataclass
class Args:
    env: str = "hopper"
    """hopper, halfcheetah or walker2d."""
    run: str = "runs/behavior/hopper"
    """Folder of a train_behavior_policy.py run."""
    dest: str = "components/data"
    """Where to write the four files."""
    target_fraction: float = 1 / 3
    """Medium target return as a fraction of the D4RL expert return."""
    min_frames: int = 0
    """Ignore snapshots before this many frames when choosing the medium policy."""
    max_frames: int = 0
    """Ignore snapshots after this many frames (0: all)."""
    medium_max_frames: int = 0
    """Choose the medium policy among snapshots up to this many frames (0: up to the expert snapshot). Fixing it
    keeps the medium choice stable while the run goes on."""
    replay_every: int = 10_000
    """Frames per replay segment (a multiple of the snapshot interval)."""
    candidates: int = 6
    """Snapshots evaluated stochastically for each of medium and expert."""
    episodes: int = 10
    """Stochastic evaluation episodes per snapshot."""
    seed: int = 0
    """Evaluation seed (episode k is reset with seed + k; the policy noise is seeded with seed)."""


def stochastic_return(path: Path, env_id: str, episodes: int, seed: int) -> float:
    policy, env = load_policy(path, seed=seed), gym.make(env_id)
    returns = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            observation, reward, terminated, truncated, _ = env.step(policy(observation))
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def main(args: Args) -> dict:
    if args.env not in ENVS:
        raise ValueError(f"--env must be one of {sorted(ENVS)}, got {args.env!r}.")
    env_id, _, ref_max = ENVS[args.env]
    run, dest = Path(args.run), Path(args.dest)
    loaded = [(path, torch.load(path, weights_only=True)) for path in sorted(run.glob("policies/step_*.pt"))]
    loaded = [(path, m) for path, m in loaded if not args.max_frames or m["frames"] <= args.max_frames]
    if not loaded:
        raise FileNotFoundError(f"No snapshots in {run / 'policies'}; run train_behavior_policy.py first.")
    snapshots = {int(m["frames"]): path for path, m in loaded}
    meta = {int(m["frames"]): m for _, m in loaded}
    if meta[min(meta)]["env_id"] != env_id:
        raise ValueError(f"The run in {run} trained {meta[min(meta)]['env_id']}, not {env_id}.")
    target = args.target_fraction * ref_max
    cache_file = run / "stochastic_returns.json"
    cache = {int(k): v for k, v in json.loads(cache_file.read_text()).items()} if cache_file.exists() else {}
    key = f"{args.episodes}x{args.seed}"

    def evaluate(candidates: list[int], what: str) -> dict[int, float]:
        for frames in tqdm.tqdm([f for f in candidates if key not in cache.get(f, {})], desc=f"evaluating {what}"):
            cache.setdefault(frames, {})[key] = stochastic_return(snapshots[frames], env_id, args.episodes, args.seed)
            cache_file.write_text(json.dumps(cache, indent=1))
        return {f: cache[f][key] for f in candidates}

    # Expert: the best stochastic return; medium: nearest the target among snapshots up to the expert (a policy
    # "stopped early" on the way, not one that collapsed after the peak), so medium-replay stays below expert level.
    expert_returns = evaluate(sorted(snapshots, key=lambda f: -meta[f]["eval_return"])[:args.candidates], "expert")
    expert = max(expert_returns, key=expert_returns.get)
    eligible = [f for f in snapshots if args.min_frames <= f <= min(expert, args.medium_max_frames or expert)]
    medium_returns = evaluate(sorted(eligible, key=lambda f: abs(meta[f]["eval_return"] - target))[:args.candidates],
                              "medium")
    medium = min(medium_returns, key=lambda f: abs(medium_returns[f] - target))
    stochastic = {f: cache[f][key] for f in cache if key in cache[f] and f in snapshots}

    dest.mkdir(parents=True, exist_ok=True)
    for name, frames in (("medium", medium), ("expert", expert)):
        torch.save({**meta[frames], "stochastic_return": stochastic[frames], "source": snapshots[frames].name},
                   dest / f"{args.env}_{name}_sac.pt")
    if args.replay_every % 5_000 or any(f % args.replay_every == 0 and f not in snapshots
                                        for f in range(args.replay_every, medium, args.replay_every)):
        raise ValueError(f"--replay-every {args.replay_every} does not match the run's snapshots.")
    schedule = [{"frames": 0, "num_steps": min(args.replay_every, medium), "actor": None, "eval_return": None}]
    for frames in range(args.replay_every, medium, args.replay_every):
        schedule.append({"frames": frames, "num_steps": min(args.replay_every, medium - frames),
                         "actor": {k: v.half() for k, v in meta[frames]["actor"].items()},
                         "eval_return": meta[frames]["eval_return"]})
    first = meta[min(meta)]
    torch.save({key: first[key] for key in ("env_id", "observation_dim", "action_dim", "hidden_sizes")}
               | {"schedule": schedule, "medium_frames": medium}, dest / f"{args.env}_replay_sac.pt")

    history = json.loads((run / "history.json").read_text())
    record = {
        "env_id": env_id, "frames_trained": history[-1]["frames"], "wall_time_s": round(history[-1]["wall_time_s"]),
        "medium": {"frames": medium, "stochastic_return": stochastic[medium], "target_return": target},
        "expert": {"frames": expert, "stochastic_return": stochastic[expert],
                   "fraction_of_d4rl_expert": stochastic[expert] / ref_max},
        "replay": {"segments": len(schedule), "steps": medium, "every": args.replay_every},
        "stochastic_returns": {str(f): stochastic[f] for f in sorted(stochastic)},
        "evaluation": f"{args.episodes} episodes, seed {args.seed}",
        "history": history,
    }
    (dest / f"{args.env}_behavior.json").write_text(json.dumps(record, indent=1))
    for name in ("medium", "expert", "replay"):
        path = dest / f"{args.env}_{name}_sac.pt"
        print(f"{path}: {path.stat().st_size / 1024:.0f} KB")
    print(f"medium: {medium} frames, stochastic return {stochastic[medium]:.0f} (target {target:.0f}); "
          f"expert: {expert} frames, stochastic return {stochastic[expert]:.0f} "
          f"({100 * stochastic[expert] / ref_max:.0f}% of D4RL expert); trained {record['frames_trained']} frames in "
          f"{record['wall_time_s']} s")
    return record


if __name__ == "__main__":
    main(parse_dataclass_args(Args, None, __doc__))
