"""Where O3F's optimistic action selection acts: its chosen actions against the policy's own samples, on data states.

    python examples/explorer_choices.py runs/ft_hm/finetune/cmbrl_hopper_medium-v0/seed0/offline/agent.pt
    python examples/explorer_choices.py AGENT.pt --dataset cmbrl/hopper/medium-v0 --num-states 1000 --optimism 1
    python examples/explorer_choices.py OFFLINE/agent.pt --weights RUN/o3f/checkpoint_seed0.pt   # after fine-tuning

For an ``examples/awac.py`` / ``examples/finetune.py`` agent (``agent.pt``; AWAC or, with ``--base iql``, IQL;
``--weights`` swaps in the learner of a fine-tuning checkpoint) and ``--num-states`` states drawn from
the dataset, one ``OptimisticExplorer`` call (O3F, OpenReview 2x8EKbGU51k, Algorithm 1 lines 2–4, Eq. 2: ``a ~ π(s)``,
``N`` candidates ``clip(a + σε)``, execute ``argmax Q_mean + ω·Q_std``) and the policy's sample ``a`` from the same
random state. Prints, per state averaged:

- ``saturated``: share of action dimensions with ``|a| > 0.99`` (the action box is [−1, 1]), for ``a`` and for the
  executed choice: a search that prefers the box's edge is following the critics where the data has few actions;
- ``distance``: ``‖choice − a‖₂``, against the expected distance of one unclipped candidate, ``σ·√A`` (roughly);
- ``gain``: ``f(choice) − f(a)``, what the search gained by the critics' own estimate, and ``f(a)`` for scale
  (reward units, a discounted return);
- ``spread``: the population std of the critics at the choice and at ``a`` (``Q_std`` of Eq. 2).

``main`` returns the statistics it prints (without the agent's path, dataset and state count).
"""
from __future__ import annotations

import argparse
import json

import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from cmbrl import load_dataset
from cmbrl.agents import AWAC, IQL, OptimisticExplorer, ensemble_qvalues
from cmbrl.components.cli import HelpFormatter
from cmbrl.components.devices import DEVICE_CHOICES
from cmbrl.components.training import dataset_env_id, load_checkpoint, resolve_run_device


def choice_stats(agent: AWAC | IQL, observations: torch.Tensor, num_candidates: int = 100, sigma: float = 0.2,
                 optimism: float = 0.0, seed: int = 0) -> dict[str, float]:
    """The statistics above for ``observations`` of shape ``(B, O)``; ``agent``'s actions lie in [−1, 1]."""
    explorer = OptimisticExplorer(agent.policy, agent, num_candidates=num_candidates, sigma=sigma, optimism=optimism)
    qvalues = ensemble_qvalues(agent)
    batch = observations.shape[0]
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        torch.manual_seed(seed)
        own = agent.policy(TensorDict({"observation": observations}, batch_size=[batch]))["action"]
        torch.manual_seed(seed)  # the explorer's actor call draws the same a
        td = explorer(TensorDict({"observation": observations}, batch_size=[batch]))
        chosen = td["action"]
        spread = qvalues(td.select("observation"), torch.stack([own, chosen])).std(0, unbiased=False)  # (2, B)
    return {"saturated_policy": (own.abs() > 0.99).float().mean().item(),
            "saturated_choice": (chosen.abs() > 0.99).float().mean().item(),
            "distance": (chosen - own).norm(dim=-1).mean().item(), "candidate_distance": sigma * own.shape[-1] ** 0.5,
            "gain": (td["explorer_score"] - td["policy_score"]).mean().item(),
            "policy_score": td["policy_score"].mean().item(),
            "spread_policy": spread[0].mean().item(), "spread_choice": spread[1].mean().item()}


def main(argv=None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("agent", help="agent.pt of examples/awac.py or examples/finetune.py (offline/agent.pt)")
    p.add_argument("--weights", default=None, help="a fine-tuning checkpoint (examples/finetune.py's "
                   "checkpoint_seed<S>.pt) whose learner replaces agent.pt's weights (agent.pt gives the architecture)")
    p.add_argument("--dataset", default=None, help="states from this dataset (default: the agent's)")
    p.add_argument("--num-states", type=int, default=1000, help="dataset states to choose actions in")
    p.add_argument("--num-candidates", type=int, default=100, help="N (O3F §5.3: 100)")
    p.add_argument("--sigma", type=float, default=0.2, help="σ (O3F §5.3: 0.2 for locomotion)")
    p.add_argument("--optimism", type=float, default=0.0, help="ω (O3F: 0; 1 in §6.3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the state draw and the candidates")
    p.add_argument("--device", default="auto", help=f"where the agent and the states live: {DEVICE_CHOICES} "
                   "(auto: CUDA when torch sees one, else the CPU)")
    args = p.parse_args(argv)
    device = resolve_run_device(args)  # before loading anything
    torch.set_num_threads(1)
    stage = load_checkpoint(args.agent, device)
    if not {"agent", "agent_kwargs", "observation_dim", "action_dim"} <= set(stage):
        raise SystemExit(f"{args.agent}: not an examples/awac.py or examples/finetune.py agent.pt (keys "
                         f"{sorted(stage)})")
    learner = {"awac": AWAC, "iql": IQL}[stage.get("base", "awac")]
    agent = learner(stage["observation_dim"], stage["action_dim"], seed=args.seed, **stage["agent_kwargs"],
                    device=device)
    agent.load_state_dict(load_checkpoint(args.weights, device)["agent"] if args.weights else stage["agent"])
    dataset_id, _ = dataset_env_id(args.dataset or stage["args"]["dataset"])
    data = load_dataset(dataset_id)
    if data["observation"].shape[-1] != stage["observation_dim"]:
        raise SystemExit(f"{dataset_id} has {data['observation'].shape[-1]}-dim observations; the agent takes "
                         f"{stage['observation_dim']}")
    rows = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(args.seed))[:args.num_states]
    states = data["observation"][rows].to(device)
    if stage.get("observation_loc") is not None:  # an agent trained on standardised observations (finetune.py)
        states = (states - stage["observation_loc"].to(device)) / stage["observation_scale"].to(device)
    stats = choice_stats(agent, states, args.num_candidates, args.sigma, args.optimism, args.seed)
    print(json.dumps({"agent": args.agent, "dataset": dataset_id, "states": len(rows),
                      **{k: round(v, 4) for k, v in stats.items()}}, indent=1))
    return stats


if __name__ == "__main__":
    main()
