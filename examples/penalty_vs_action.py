"""How each uncertainty penalty responds to the action, on a fitted ensemble of a real dataset.

    python examples/penalty_vs_action.py --ensemble runs/mopo/ensemble_cmbrl_hopper_medium-v0_n100000_seed0.pt \
        --dataset hopper-medium --max-transitions 100000

For a sample of dataset states ``s`` it compares ``u(s, a)`` and the model's predicted reward ``r̂(s, a)`` at the
data's own action, at uniformly random actions, at the action bounds (all +1, all −1) and at the data action pushed
to the nearest bound per dimension (``sign(a)``), and prints which output dimension dominates ``max_aleatoric``.
A penalty that hardly moves while ``r̂`` grows towards the bounds invites a policy to exploit the model there
(issue 7, item 2). Prints a markdown table; ``--json`` writes the numbers.
"""
from __future__ import annotations

import argparse
import json

import torch

from cmbrl import DynamicsEnsemble, load_dataset
from cmbrl.components.datasets import resolve_dataset_id
from cmbrl.components.cli import HelpFormatter
from cmbrl.components.devices import DEVICE_CHOICES
from cmbrl.components.penalties import PENALTIES
from cmbrl.components.training import resolve_run_device


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--ensemble", required=True, help="a DynamicsEnsemble.save file")
    parser.add_argument("--dataset", required=True, help="Minari id or short name of the states")
    parser.add_argument("--max-transitions", type=int, default=0,
                        help="the first N transitions of the dataset (0: all)")
    parser.add_argument("--num-states", type=int, default=5000, help="dataset states to probe")
    parser.add_argument("--penalty-coef", type=float, default=1.0, help="λ, to express λ·u next to the reward")
    parser.add_argument("--seed", type=int, default=0, help="seed of the state draw")
    parser.add_argument("--json", default="", help="also write the numbers to this JSON file")
    parser.add_argument("--device", default="auto", help=f"where the ensemble runs: {DEVICE_CHOICES} (auto: CUDA "
                        "when torch sees one, else the CPU)")
    args = parser.parse_args(argv)
    device = resolve_run_device(args)  # before loading anything

    data = load_dataset(resolve_dataset_id(args.dataset))
    if args.max_transitions:
        data = data[:args.max_transitions]
    ensemble = DynamicsEnsemble.load(args.ensemble, map_location=device).eval()
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(data.shape[0], (args.num_states,), generator=gen)
    obs, act = data["observation"][idx], data["action"][idx]  # the same draws on every device
    actions = {
        "data action": act,
        "uniform random": torch.rand(act.shape, generator=gen) * 2 - 1,
        "sign(data action)": torch.sign(act),
        "all +1": torch.ones_like(act),
        "all -1": -torch.ones_like(act),
    }
    obs, actions = obs.to(device), {label: a.to(device) for label, a in actions.items()}  # once, to the ensemble
    members = ensemble.elite_indices[torch.randint(ensemble.num_elites, (obs.shape[0],), generator=gen)]
    rows, results = [], {}
    names = ["max_aleatoric", "max_pairwise_diff", "max_center_distance", "ensemble_std", "individual_std", "combined"]
    with torch.no_grad():
        for label, a in actions.items():
            mean, std = ensemble(obs, a, members="all")
            reward = mean[members, torch.arange(obs.shape[0], device=device), -1]
            entry = {"model_reward": reward.mean().item()}
            for name in names:
                entry[name] = PENALTIES[name](mean, std, members).mean().item()
            # share of max_aleatoric's squared norm coming from each output dimension (of the max member)
            norms = std.norm(dim=-1)
            top = std[norms.argmax(0), torch.arange(obs.shape[0], device=device)].pow(2)
            share = (top / top.sum(-1, keepdim=True)).mean(0)
            entry["dominant_dims"] = {int(d): round(share[d].item(), 3) for d in share.argsort(descending=True)[:3]}
            results[label] = entry
            rows.append(f"| {label} | {entry['model_reward']:.3f} | "
                        + " | ".join(f"{entry[n]:.3f}" for n in names)
                        + f" | {args.penalty_coef * entry['max_aleatoric']:.3f} | {entry['dominant_dims']} |")
    header = ("| action | r̂ | " + " | ".join(names) + f" | λ·max_aleatoric (λ={args.penalty_coef}) | "
              "max_aleatoric's largest dims (share of ‖σ‖²; last = reward) |")
    print("\n".join([header, "|" + "---|" * (len(names) + 4)] + rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
