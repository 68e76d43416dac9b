"""Where a trained policy goes in the real environment, and what the dynamics model says about those states.

    python examples/policy_in_real_env.py \
        --policy runs/mopo/checkpoint_seed0.pt --ensemble runs/mopo/ensemble_cmbrl_hopper_medium-replay-v0_n125000_seed0.pt \
        --dataset hopper-medium-replay --penalty-coef 2.5

A model-based policy that scores badly either exploits the model (the model promises reward where the real env pays
none, and the penalty misses it) or fails in ways the model gets right. This tells the two apart. It runs
``--episodes`` deterministic episodes of a checkpoint of ``examples/mopo.py`` (SAC) or ``examples/combo.py`` (COMBO)
in the real env and, at every visited (s, a), evaluates the ensemble: the elites' mean predicted reward against the
real reward, the elites' mean next observation against the real one (L2 error), and the MOPO penalty ``u``
(``--penalty``); the same on a sample of the dataset's own pairs, and at the dataset's states with the policy's
actions. Per episode it also prints the forward velocity per tenth of the episode (observation index
``--velocity-index``, HalfCheetah/Hopper/Walker2d's x-velocity, qvel[0]; -1: off), the share of saturated action
components (``|a| > 0.99``) and the last observation's first two entries (height and torso angle for these three
envs), so a policy that stalls in a pose shows as such. And the critics against the episode: at every visited (s, a),
Q (the minimum over the critics, the value the backup uses) against the discounted return ``G = Σ_k γ^k r_{t+k}`` the
policy actually collected from there, at the start state and averaged over the steps whose ``G`` is exact (all of them
if the episode terminated, else those ≥ 300 steps before the time limit;
``cmbrl.components.training.discounted_returns_to_go``). Q above G means the critic overestimates the policy's own
real value: at a large enough β COMBO's value at the start states is a lower bound (COMBO, arXiv:2102.08363, Theorem
1); a soft backup (SAC, MOPO) also counts the entropy bonus, so its Q sits above G by that much.

Reading it: model reward ≈ real reward and ``u`` at the data's level on the visited states means no exploitation
there; a model reward well above the real one with a small ``u`` is exploitation the penalty does not see.
``--json`` writes the numbers.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict

from cmbrl import SAC, DynamicsEnsemble, load_dataset
from cmbrl.components.calibration import CALIBRATION_ENVS
from cmbrl.components.penalties import get_penalty
from cmbrl.components.training import (critic_values, dataset_env_id, discounted_returns_to_go, load_checkpoint,
                                       parse_dataclass_args, resolve_run_device)

sys.path.insert(0, str(Path(__file__).parent))  # the other examples (combo.py), as bc_table.py does


@dataclasses.dataclass
class Args:
    policy: str = ""
    """A checkpoint of examples/mopo.py or examples/combo.py (checkpoint_seed<S>.pt). Required."""
    ensemble: str = ""
    """A DynamicsEnsemble.save file (the run's cached ensemble). Required."""
    dataset: str = "hopper-medium-replay"
    """The dataset the ensemble was fitted on (its short name or Minari id): the data reference rows, and the env."""
    env_id: str = ""
    """Gymnasium env id ("": the dataset's)."""
    penalty: str = "max_aleatoric"
    """The uncertainty penalty u (cmbrl.PENALTIES name)."""
    penalty_coef: float = 1.0
    """λ, to print r̂ − λ·u."""
    episodes: int = 3
    """Deterministic real-env episodes."""
    max_steps: int = 1_000
    """Steps per episode at most."""
    num_pairs: int = 5_000
    """Dataset pairs for the reference rows."""
    velocity_index: int = -2
    """Observation index of the forward velocity (-2: the x-velocity, qvel[0], for the envs whose observation is
    qpos[1:] then qvel, ``cmbrl.components.calibration.CALIBRATION_ENVS``; -1: off)."""
    gamma: float = 0.99
    """Discount of the return G the critics are compared with (the learners' γ: 0.99)."""
    seed: int = 0
    """Seeds the episodes (reset seeds seed, seed+1, ...) and the dataset sample."""
    json: str = ""
    """Write the numbers here too."""
    device: str = "auto"
    """Where the policy, its critics and the ensemble run: auto (CUDA when torch sees one, else the CPU), cpu, cuda
    or cuda:N. The episodes are MuJoCo's, on the CPU; each episode's states go to the device once."""


def model_view(ensemble: DynamicsEnsemble, penalty, observation: torch.Tensor, action: torch.Tensor,
               generator: torch.Generator) -> dict:
    """Elites' mean reward and next observation, and ``u`` (one random elite per row, as the model env draws it, for
    the penalties that read it), for pairs ``(B, O)``, ``(B, A)``."""
    with torch.no_grad():
        mean, std = ensemble(observation, action, members="all")
        member = ensemble.elite_indices[torch.randint(ensemble.num_elites, (observation.shape[0],),
                                                      generator=generator)]
        elites = mean[ensemble.elite_indices]
        return {"model_reward": elites[..., -1].mean(0), "model_next": elites[..., :-1].mean(0),
                "u": penalty(mean, std, member)}


def table_row(label: str, entry: dict, penalty_coef: float) -> str:
    """One markdown row: steps, real r, model r̂, r̂ − λu, u, next-state error, saturated ("" where not measured)."""
    def cell(key: str) -> str:
        return f"{entry[key]:.2f}" if key in entry else ""
    penalised = f"{entry['model_reward'] - penalty_coef * entry['u']:.2f}"
    return (f"| {label} | {entry['steps']} | {cell('real_reward')} | {cell('model_reward')} | {penalised} | "
            f"{cell('u')} | {cell('next_state_error')} | {cell('saturated')} |")


def load_agent(path: str, observation_dim: int, action_dim: int, seed: int, device: torch.device | str = "cpu"):
    """The agent of a checkpoint on ``device`` (``map_location``): COMBO (``examples/combo.py``, rebuilt from the
    ``args`` it saved, uncompiled) or SAC."""
    checkpoint = load_checkpoint(path, device)
    saved = checkpoint.get("args") or {}
    if "beta" in saved:  # examples/combo.py's Args; its networks may differ from SAC's defaults
        import combo  # examples/combo.py, next to this file
        names = {field.name for field in dataclasses.fields(combo.Args)}
        saved = {**{k: v for k, v in saved.items() if k in names}, "compile": 0, "cudagraphs": 0}  # no training here
        agent = combo.make_agent(combo.Args(**saved), observation_dim, action_dim, device)
    else:
        agent = SAC(observation_dim, action_dim, seed=seed, device=device)
    agent.load_state_dict(checkpoint["agent"])
    return agent


def critic_vs_return(agent, observation: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                     terminated: bool, gamma: float) -> dict:
    """Q (min over the critics) against the discounted return collected from each step of one episode ``(T, ...)``:
    at the start state and as means over the steps whose return is exact."""
    td = TensorDict({("next", "reward"): reward[:, None], ("next", "done"): torch.zeros(len(reward), 1, dtype=bool),
                     ("next", "terminated"): torch.zeros(len(reward), 1, dtype=bool)}, [len(reward)])
    td["next", "terminated"][-1] = terminated
    returns, exact = discounted_returns_to_go(td, gamma)
    q = critic_values(agent.loss_module, observation, action).min(0).values
    return {"q_start": float(q[0]), "return_start": float(returns[0]), "exact_steps": int(exact.sum()),
            "q_exact": float(q[exact].mean()) if exact.any() else float("nan"),
            "return_exact": float(returns[exact].mean()) if exact.any() else float("nan")}


def main(args: Args) -> dict:
    import gymnasium as gym
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    if not args.policy or not args.ensemble:
        raise SystemExit("--policy (a checkpoint of examples/mopo.py or examples/combo.py) and --ensemble "
                         f"(a DynamicsEnsemble file) are required; got policy={args.policy!r}, "
                         f"ensemble={args.ensemble!r}")
    if args.episodes < 1 or args.max_steps < 1:
        raise SystemExit(f"--episodes and --max-steps must be >= 1, got {args.episodes} and {args.max_steps}")
    device = resolve_run_device(args)  # before loading anything
    dataset, env_id = dataset_env_id(args.dataset, args.env_id)
    ensemble = DynamicsEnsemble.load(args.ensemble, map_location=device).eval()
    penalty = get_penalty(args.penalty)
    env = gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if (obs_dim, act_dim) != (ensemble.observation_dim, ensemble.action_dim):
        raise SystemExit(f"the ensemble is for (O, A) = ({ensemble.observation_dim}, {ensemble.action_dim}), "
                         f"{env_id} has ({obs_dim}, {act_dim})")
    agent = load_agent(args.policy, obs_dim, act_dim, args.seed, device)
    velocity_index = args.velocity_index
    if velocity_index == -2:  # qvel[0] follows the nq - 1 entries of qpos[1:]
        velocity_index = env.unwrapped.model.nq - 1 if env_id in CALIBRATION_ENVS else -1

    def act(observation: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            return agent.policy(TensorDict({"observation": observation}, [observation.shape[0]]))["action"]

    gen = torch.Generator().manual_seed(args.seed)
    results: dict = {"episodes": []}
    lines = [f"policy {args.policy} in {env_id}; ensemble {args.ensemble}; penalty {args.penalty}, "
             f"λ={args.penalty_coef}", "", "| pairs | steps | real r | model r̂ | r̂ − λu | u | next-state error | "
             "saturated |", "|---|---|---|---|---|---|---|---|"]
    for episode in range(args.episodes):
        observation, _ = env.reset(seed=args.seed + episode)
        states, actions, rewards, next_states, terminated = [], [], [], [], False
        for _ in range(args.max_steps):
            action = act(torch.as_tensor(observation, dtype=torch.float32, device=device)[None])[0].cpu().numpy()
            states.append(observation)
            actions.append(action)
            observation, reward, terminated, truncated, _ = env.step(action)
            rewards.append(reward)
            next_states.append(observation)
            if terminated or truncated:
                break
        s, a, r, s2 = (torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)
                       for x in (states, actions, rewards, next_states))
        view = model_view(ensemble, penalty, s, a, gen)
        entry = {"steps": len(rewards), "return": float(r.sum()), "real_reward": float(r.mean()),
                 "model_reward": float(view["model_reward"].mean()), "u": float(view["u"].mean()),
                 "next_state_error": float((view["model_next"] - s2).norm(dim=-1).mean()),
                 "saturated": float((a.abs() > 0.99).float().mean()),
                 "last_observation_head": [round(float(v), 3) for v in s2[-1, :2]], "terminated": bool(terminated),
                 **critic_vs_return(agent, s, a, r, bool(terminated), args.gamma)}
        if velocity_index >= 0:
            entry["velocity_per_tenth"] = [round(float(chunk.mean()), 2)
                                           for chunk in torch.tensor_split(s2[:, velocity_index], 10) if len(chunk)]
        results["episodes"].append(entry)
        lines.append(table_row(f"episode {episode} (return {entry['return']:.0f})", entry, args.penalty_coef))

    data = load_dataset(dataset).to(device)
    idx = torch.randperm(data.shape[0], generator=gen)[:args.num_pairs]
    s, a = data["observation"][idx], data["action"][idx]
    view = model_view(ensemble, penalty, s, a, gen)
    results["data"] = {"steps": len(idx), "real_reward": float(data["next", "reward"][idx].mean()),
                       "model_reward": float(view["model_reward"].mean()), "u": float(view["u"].mean()),
                       "next_state_error": float((view["model_next"] - data["next", "observation"][idx])
                                                 .norm(dim=-1).mean()),
                       "saturated": float((a.abs() > 0.99).float().mean())}
    policy_actions = act(s)
    view = model_view(ensemble, penalty, s, policy_actions, gen)
    results["data_states_policy_actions"] = {"steps": len(idx), "model_reward": float(view["model_reward"].mean()),
                                             "u": float(view["u"].mean()),
                                             "saturated": float((policy_actions.abs() > 0.99).float().mean())}
    lines.append(table_row("data pairs", results["data"], args.penalty_coef))
    lines.append(table_row("data states, policy actions", results["data_states_policy_actions"], args.penalty_coef))
    lines.append("")
    for episode, entry in enumerate(results["episodes"]):
        velocity = f"velocity per tenth {entry['velocity_per_tenth']}, " if "velocity_per_tenth" in entry else ""
        lines.append(f"episode {episode}: {velocity}last observation[:2] {entry['last_observation_head']}")
        lines.append(f"episode {episode}: Q(s0, a0) {entry['q_start']:.1f} vs discounted return G0 "
                     f"{entry['return_start']:.1f}; over its {entry['exact_steps']} steps with exact G, mean Q "
                     f"{entry['q_exact']:.1f} vs mean G {entry['return_exact']:.1f} (γ={args.gamma})")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main(parse_dataclass_args(Args, None, __doc__))
