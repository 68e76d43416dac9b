"""Pick the behaviour-policy snapshot closest to a target return and export it as package data.

The D4RL "medium" policy is a SAC policy stopped at about a third of expert return (MOPO, arXiv:2005.13239,
section 5.1). This script evaluates the snapshots written by ``train_behavior_policy.py`` with the *stochastic*
policy (the one that records the dataset), picks the one whose mean return is closest to
``target_fraction * ref_max_score``, and writes it (actor weights only, ~300 KB) to ``--dest``.

    python examples/export_behavior_policy.py --run runs/behavior/hopper --dest components/data/hopper_medium_sac.pt
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tqdm

from cmbrl.components import load_policy


@dataclasses.dataclass
class Args:
    run: str = "runs/behavior/hopper"
    """Folder of a train_behavior_policy.py run (its policies/ subfolder is read)."""
    dest: str = "components/data/hopper_medium_sac.pt"
    """Where to write the chosen snapshot."""
    ref_max_score: float = 3234.3
    """Expert return (D4RL hopper)."""
    target_fraction: float = 1 / 3
    """Target return as a fraction of ref_max_score."""
    min_frames: int = 0
    """Ignore snapshots before this many frames."""
    episodes: int = 10
    """Stochastic evaluation episodes per snapshot."""
    seed: int = 0
    """Evaluation seed."""


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


def main(args: Args) -> None:
    snapshots = sorted(Path(args.run, "policies").glob("step_*.pt"))
    target = args.target_fraction * args.ref_max_score
    results = []
    for path in tqdm.tqdm(snapshots, desc="evaluating snapshots"):
        meta = torch.load(path, weights_only=True)
        if meta["frames"] >= args.min_frames:
            results.append((path, meta, stochastic_return(path, meta["env_id"], args.episodes, args.seed)))
    for path, meta, ret in results:
        print(f"{path.name}: frames={meta['frames']} deterministic={meta['eval_return']:.0f} stochastic={ret:.0f}")
    path, meta, ret = min(results, key=lambda r: abs(r[2] - target))
    torch.save({**meta, "stochastic_return": ret, "source": path.name}, args.dest)
    print(f"chose {path.name} (stochastic return {ret:.0f}, target {target:.0f}) -> {args.dest} "
          f"({Path(args.dest).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(Args):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    main(Args(**vars(parser.parse_args())))
