"""MOPO (Yu et al., arXiv:2005.13239, Algorithm 2): SAC in the uncertainty-penalised model MDP.

    python examples/mopo.py                      # cmbrl/hopper/medium-v0, generated locally on first use
    python examples/mopo.py --penalty combined --penalty-coef 2.5 --num-steps 200000 --seed 1

Fits (or loads the cached) dynamics ensemble, wraps it as ``ConservativeModelEnv``, and loops: every
``rollout_every`` gradient steps, ``rollout_batch_size`` model rollouts of ``horizon`` steps from dataset states go
into a model buffer that keeps the last ``retain_rollouts`` rollouts; SAC trains on batches with ``real_ratio``
dataset transitions and the rest model transitions; the policy is evaluated in the real environment. Writes CSV logs,
``learning_curve.png`` and ``checkpoint.pt`` (re-running the same command resumes from it) under ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import matplotlib
import minari
import torch
import tqdm
from torchrl.data import LazyTensorStorage, OfflineToOnlineReplayBuffer, ReplayBuffer
from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.record.loggers import get_logger

from cmbrl import SAC, ConservativeModelEnv, DynamicsEnsemble, load_dataset

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESUMABLE = {"num_steps", "eval_every", "eval_episodes", "threads", "out", "logger"}  # may change when resuming
KEYS = ["observation", "action", ("next", "observation"), ("next", "reward"), ("next", "terminated"),
        ("next", "done")]


@dataclasses.dataclass
class Args:
    dataset: str = "cmbrl/hopper/medium-v0"
    """Minari dataset id (cmbrl recipes are generated locally when absent)."""
    max_transitions: int = 100_000
    """Use the first N transitions of the dataset (0: all). The recipe datasets hold 1M (D4RL); 100k keeps the
    default run to ~15 min on 2 CPU cores (ensemble fitting scales with the data). MOPO used the whole dataset."""
    env_id: str = "Hopper-v5"
    """Real environment for evaluation."""
    termination_fn: str = "hopper"
    """Termination function of the model MDP: hopper, walker2d or halfcheetah."""
    penalty: str = "max_aleatoric"
    """Uncertainty estimator (see cmbrl.PENALTIES)."""
    penalty_coef: float = 5.0
    """λ: MOPO's value for hopper-medium (examples/config/d4rl/hopper_medium.py)."""
    horizon: int = 5
    """Model rollout length h (MOPO hopper-medium)."""
    real_ratio: float = 0.05
    """Share of each SAC batch drawn from the dataset (MOPO/MBPO 0.05); the rest is model data."""
    num_steps: int = 30_000
    """SAC gradient steps (MOPO: 1M; this default fits ~15 min on 2 CPU cores)."""
    rollout_every: int = 1_000
    """Gradient steps between model rollouts (MOPO 1000)."""
    rollout_batch_size: int = 10_000
    """Start states per rollout (MOPO 50,000; smaller here to fit the default budget)."""
    retain_rollouts: int = 5
    """The model buffer keeps this many rollouts (MOPO 5)."""
    batch_size: int = 256
    """SAC minibatch."""
    ensemble_max_epochs: int = 50
    """Cap on ensemble training epochs (early stopping usually ends sooner)."""
    eval_every: int = 5_000
    """Gradient steps between real-environment evaluations."""
    eval_episodes: int = 5
    """Deterministic evaluation episodes (MOPO 10)."""
    seed: int = 0
    """Seed for the ensemble, the model env, SAC and evaluation."""
    threads: int = 0
    """torch threads (0: torch's default). Use 1 per process when running several seeds side by side."""
    out: str = "runs/mopo"
    """Output folder."""
    logger: str = "csv"
    """TorchRL logger: csv, tensorboard, wandb or mlflow (the last three need their package)."""


def evaluate(env, policy, episodes: int) -> list[float]:
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        return [env.rollout(1_000, policy).get(("next", "reward")).sum().item() for _ in range(episodes)]


def main(args: Args) -> None:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.dataset, progress=True)  # generated locally on first use
    if args.max_transitions:
        data = data[:args.max_transitions]
    obs_dim, act_dim = data["observation"].shape[-1], data["action"].shape[-1]

    ensemble_path = out / f"ensemble_{args.dataset.replace('/', '_')}_seed{args.seed}.pt"
    if ensemble_path.exists():
        ensemble = DynamicsEnsemble.load(ensemble_path)
    else:
        ensemble = DynamicsEnsemble(obs_dim, act_dim, seed=args.seed)
        fit = ensemble.fit(data, max_epochs=args.ensemble_max_epochs, seed=args.seed, progress=True)
        ensemble.save(ensemble_path)
        ensemble_path.with_suffix(".json").write_text(json.dumps(fit, indent=1))
    env = ConservativeModelEnv(ensemble, penalty=args.penalty, penalty_coef=args.penalty_coef, horizon=args.horizon,
                               start_states=data, batch_size=args.rollout_batch_size,
                               termination_fn=args.termination_fn, seed=args.seed)
    eval_env = TransformedEnv(GymEnv(args.env_id), DoubleToFloat())  # MuJoCo observations are float64
    eval_env.set_seed(args.seed)
    agent = SAC(obs_dim, act_dim, seed=args.seed)

    real = ReplayBuffer(storage=LazyTensorStorage(data.shape[0]))
    real.extend(data.select(*KEYS))
    buffer = OfflineToOnlineReplayBuffer(
        real, online_capacity=args.rollout_batch_size * args.horizon * args.retain_rollouts,
        offline_fraction=args.real_ratio, batch_size=args.batch_size)

    step, history = 0, []
    ckpt_path = out / f"checkpoint_seed{args.seed}.pt"
    if ckpt_path.exists():  # resume; the model buffer is refilled by a fresh rollout
        ckpt = torch.load(ckpt_path, weights_only=False)
        saved = ckpt["args"]
        changed = {k: (saved[k], v) for k, v in dataclasses.asdict(args).items() if k not in RESUMABLE and saved[k] != v}
        if changed:
            raise SystemExit(f"{ckpt_path} was made with other settings {changed} (saved, now); use another --out")
        agent.load_state_dict(ckpt["agent"])
        step, history = ckpt["step"], ckpt["history"]
        torch.set_rng_state(ckpt["rng"])
    logger = get_logger(args.logger, logger_name=str(out / "logs"), experiment_name=f"mopo_seed{args.seed}")
    dataset_meta = minari.load_dataset(args.dataset)
    bar = tqdm.tqdm(total=args.num_steps, initial=step, desc="MOPO")
    first_step = step
    while step < args.num_steps:
        if step % args.rollout_every == 0 or step == first_step:  # (re)fill the model buffer
            with torch.no_grad():  # rollouts carry no graph into the buffer
                rollout = env.rollout(args.horizon, agent.policy, break_when_any_done=False)
            buffer.extend(rollout.reshape(-1).select(*KEYS))
            logger.log_scalar("model_reward", rollout["next", "model_reward"].mean().item(), step=step)
            logger.log_scalar("uncertainty", rollout["next", "uncertainty"].mean().item(), step=step)
            logger.log_scalar("model_terminated", rollout["next", "terminated"].float().mean().item(), step=step)
        metrics = agent.update(buffer.sample())
        step += 1
        bar.update()
        if step % args.eval_every == 0 or step == args.num_steps:
            returns = evaluate(eval_env, agent.policy, args.eval_episodes)
            score = 100 * float(minari.get_normalized_score(dataset_meta, torch.tensor(returns).numpy()).mean())
            history.append({"step": step, "return": sum(returns) / len(returns), "normalized_score": score})
            for key, value in {**metrics, **history[-1], "num_nonfinite": env.num_nonfinite}.items():
                logger.log_scalar(key, value, step=step)
            bar.set_postfix(score=f"{score:.1f}")
            torch.save({"agent": agent.state_dict(), "step": step, "history": history,
                        "rng": torch.get_rng_state(), "args": dataclasses.asdict(args)}, ckpt_path)
    bar.close()
    (out / f"history_seed{args.seed}.json").write_text(json.dumps(history, indent=1))
    plt.plot([h["step"] for h in history], [h["normalized_score"] for h in history], marker="o")
    plt.xlabel("gradient steps")
    plt.ylabel("normalised score (D4RL reference returns)")
    plt.title(f"MOPO on {args.dataset} ({args.penalty}, λ={args.penalty_coef}, seed {args.seed})")
    plt.savefig(out / f"learning_curve_seed{args.seed}.png", dpi=100)
    print(json.dumps(history[-1]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(Args):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    main(Args(**vars(parser.parse_args())))
