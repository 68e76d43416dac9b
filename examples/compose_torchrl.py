"""cmbrl's model MDP in a plain TorchRL loop, with no cmbrl learner or training helper: a ``DynamicsEnsemble`` as
``ConservativeModelEnv`` (reward r - λ·u); TorchRL's ``Collector``, ``ProbabilisticActor``, ``ReplayBuffer``,
``SACLoss``, ``SoftUpdate`` and Adam; a real-env score. ``python examples/compose_torchrl.py [--device cuda]``."""
import dataclasses
import time
from pathlib import Path

import minari
import numpy as np
import torch
import tyro
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import DoubleToFloat, ExplorationType, GymEnv, TransformedEnv, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate

from cmbrl import ConservativeModelEnv, DynamicsEnsemble, load_dataset
from cmbrl.components.devices import resolve_device


@dataclasses.dataclass
class Args:
    dataset: str = "cmbrl/hopper/medium-replay-v0"  # Minari id (cmbrl recipes are generated when absent)
    env_id: str = "Hopper-v5"  # the real environment of the evaluation (and the model's termination function)
    num_steps: int = 3_000  # SAC gradient steps
    penalty_coef: float = 1.0  # λ of the combined uncertainty penalty
    horizon: int = 5  # model rollout length h
    rollout_starts: int = 2_000  # model rollouts (from dataset states) per collection
    rollout_every: int = 250  # SAC steps between collections
    ensemble_epochs: int = 10  # cap on the ensemble fit's epochs (MOPO's main job: 50); cached in --out
    eval_episodes: int = 5  # deterministic episodes in the real environment
    device: str = "auto"  # auto (CUDA when torch sees one), cpu, cuda or cuda:N
    seed: int = 0  # seeds the fit, the model env, the networks and the evaluation
    out: str = "runs/compose_torchrl"  # where the fitted ensemble is cached


def main(args: Args) -> float:
    device, started = resolve_device(args.device), time.time()
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset).to(device)  # flat transitions (N,)
    obs_dim, act_dim = data["observation"].shape[-1], data["action"].shape[-1]
    path = Path(args.out) / f"ensemble_{args.dataset.replace('/', '_')}_n{len(data)}_e{args.ensemble_epochs}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fitted = DynamicsEnsemble(obs_dim, act_dim, seed=args.seed, device=device)
        fitted.fit(data, max_epochs=args.ensemble_epochs, seed=args.seed)
        fitted.save(path)
    env = ConservativeModelEnv(DynamicsEnsemble.load(path, map_location=device), penalty="combined", seed=args.seed,
                               penalty_coef=args.penalty_coef, horizon=args.horizon, start_states=data,
                               batch_size=args.rollout_starts, termination_fn=args.env_id.split("-")[0].lower())
    net = torch.nn.Sequential(MLP(obs_dim, 2 * act_dim, num_cells=[256, 256], device=device), NormalParamExtractor())
    actor = ProbabilisticActor(TensorDictModule(net, ["observation"], ["loc", "scale"]), ["loc", "scale"],
                               distribution_class=TanhNormal, distribution_kwargs={"low": -1.0, "high": 1.0})
    qvalue = ValueOperator(MLP(obs_dim + act_dim, 1, num_cells=[256, 256], device=device), ["observation", "action"])
    loss = SACLoss(actor, qvalue, num_qvalue_nets=2, target_entropy=-act_dim)  # TD(0) targets, γ 0.99 (defaults)
    target, optim = SoftUpdate(loss, tau=0.005), torch.optim.Adam(loss.parameters(), lr=3e-4)
    frames = args.rollout_starts * args.horizon  # one collection: a rollout of h steps from every start state
    collector = iter(Collector(env, actor, frames_per_batch=frames, auto_register_policy_transforms=False))
    model = ReplayBuffer(storage=LazyTensorStorage(5 * frames, device=device), batch_size=256)  # the last 5 collections
    for step in range(args.num_steps):
        if step % args.rollout_every == 0:
            model.extend(next(collector).reshape(-1))  # (starts, h) -> transitions
        losses = loss(model.sample())
        optim.zero_grad()
        (losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]).backward()
        optim.step()
        target.step()
    eval_env = TransformedEnv(GymEnv(args.env_id, device=device), DoubleToFloat())  # CPU MuJoCo, tensors on device
    eval_env.set_seed(args.seed)
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        returns = [eval_env.rollout(1000, actor)["next", "reward"].sum().item() for _ in range(args.eval_episodes)]
    score = 100 * minari.get_normalized_score(minari.load_dataset(args.dataset), np.array(returns)).mean()
    print(f"{args.num_steps} steps, return {np.mean(returns):.0f}, score {score:.1f} in {time.time() - started:.0f}s")
    return float(score)


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
