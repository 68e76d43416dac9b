"""Uncertainty calibration report: how well each penalty predicts a fitted ensemble's true one-step error.

    python examples/calibration.py --dataset cmbrl/hopper/medium-replay-v0 \
        --policy runs/learning/mopo/cmbrl_hopper_medium-replay-v0/seed0/checkpoint_seed0.pt

Loads the ensemble cached by ``examples/mopo.py`` for the dataset (``--ensemble-dir``, same ``-1`` transition rule)
or fits it when absent, and measures the true error of its one-step predictions against MuJoCo
(``cmbrl.components.calibration``) on three state sets of ``--num-pairs`` (s, a) pairs each:

- ``data``: pairs drawn from the transitions the ensemble was fit on;
- ``model h``: the pairs of ``h``-step model rollouts (MOPO's ``h`` for the dataset) of a trained policy from dataset
  states, the pairs MOPO penalises;
- ``model h..H``: steps ``h`` to ``H − 1`` of ``H``-step rollouts (``--long-horizon``), pushed further out.

Rollout rows stop at their first termination. The policy is a SAC checkpoint of ``examples/mopo.py`` (``--policy``;
empty: uniform random actions). Per penalty: Spearman ρ between ``u`` and the error, AUROC for flagging the worst
``--worst-fraction`` of errors, a reliability curve; MOReL's halting rule (the data's largest disagreement over κ,
``--pessimism-coefs``) with precision and recall. Writes ``<out>/<name>.{md,json,png}``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from cmbrl import SAC, ConservativeModelEnv, load_dataset
from cmbrl.components.calibration import (CALIBRATION_PENALTIES, calibration_data, calibration_metrics,
                                          format_calibration_table, morel_halt_threshold, plot_reliability)
from cmbrl.components.training import (dataset_env_id, default_max_transitions, fit_or_load_ensemble,
                                       load_checkpoint, mopo_hyperparameters, parse_dataclass_args,
                                       resolve_run_device)


@dataclasses.dataclass
class Args:
    dataset: str = "cmbrl/hopper/medium-replay-v0"
    """Minari id or short name (hopper-medium-replay)."""
    max_transitions: int = -1
    """The ensemble's data: the first N transitions (0: all; -1: examples/mopo.py's rule, all up to 200k else 100k)."""
    ensemble_dir: str = "runs/learning/ensembles"
    """Where examples/mopo.py caches ensembles (fitted here when absent: minutes)."""
    ensemble_seed: int = 0
    """The cached ensemble's seed."""
    ensemble_max_epochs: int = 50
    """The cached ensemble's epoch cap (examples/mopo.py's --ensemble-max-epochs; used to fit it when absent)."""
    policy: str = ""
    """A SAC checkpoint of examples/mopo.py (checkpoint_seed<S>.pt) for the model rollouts; empty: uniform random."""
    num_pairs: int = 5_000
    """(s, a) pairs per state set."""
    long_horizon: int = 25
    """H of the pushed-out rollouts (their steps h..H-1 are kept)."""
    worst_fraction: float = 0.1
    """Share of the largest errors that a penalty should flag (AUROC, halting precision/recall)."""
    penalties: str = ""
    """Comma-separated penalty names (cmbrl.PENALTIES); empty: the catalogue's six."""
    pessimism_coefs: str = "1,2,5"
    """MOReL's κ values (threshold = the data's largest disagreement / κ), comma-separated."""
    seed: int = 0
    """Seeds the data sample, the rollouts and the member draw."""
    out: str = "benchmarks/results/calibration"
    """Output folder."""
    summary: int = 0
    """1: only combine every <out>/*.json of earlier runs into <out>/summary.md (no new run)."""
    device: str = "auto"
    """Where the ensemble (its fit, when absent), the policy and the model rollouts run: auto (CUDA when torch sees
    one, else the CPU), cpu, cuda or cuda:N. The true transitions are MuJoCo's, on the CPU."""


def rollout_pairs(ensemble, data, policy, *, horizon, keep_from, num_pairs, termination_fn, seed):
    """(observation, action) pairs at steps keep_from..horizon-1 of model rollouts, each row up to its first done."""
    batch = math.ceil(2 * num_pairs / (horizon - keep_from))
    env = ConservativeModelEnv(ensemble, horizon=horizon, start_states=data, batch_size=batch,
                               termination_fn=termination_fn, seed=seed)
    with torch.no_grad():
        rollout = env.rollout(horizon, policy, break_when_any_done=False)  # (batch, horizon)
    done = rollout["next", "done"].squeeze(-1).long()
    alive = (done.cumsum(1) - done) == 0  # no done before this step
    alive[:, :keep_from] = False
    obs, act = rollout["observation"][alive], rollout["action"][alive]
    pick = torch.randperm(obs.shape[0], generator=torch.Generator().manual_seed(seed))[:num_pairs]
    return obs[pick], act[pick]


def summarise(out: Path) -> str:
    """Combines the runs in ``out``: ρ / AUROC (total and reward-only error), agreement with the penalty study's
    ranking by return (seeds/003, Table I), MOReL halting."""
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    rows = {key: [{"ensemble": r["ensemble"], "state_set": s, "metrics": m} for r in runs for s, m in r[key].items()]
            for key in ("results", "results_reward")}
    return (f"Spearman ρ / AUROC (worst 10 % of errors) of u against the true one-step error (next observation and "
            f"reward, L2):\n\n{format_calibration_table(rows['results'])}\n\nReward error only:\n\n"
            f"{format_calibration_table(rows['results_reward'])}\n\nAgreement with the penalty study's order by "
            f"return ({' > '.join(CALIBRATION_PENALTIES)}; Spearman over the six, +1 = same order):\n\n"
            f"{format_calibration_table(rows['results'], 'agreement')}\n\nMOReL halting (disagreement > the data's "
            f"largest / κ):\n\n{format_calibration_table(rows['results'], 'halting')}\n\nPolicies of the model "
            f"rollouts: " + "; ".join(f"{r['ensemble']}: {r['policy']}" for r in runs) + ".\n")


def main(args: Args) -> dict:
    device = resolve_run_device(args)  # a bad --device fails here, before the data and the fit
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # the policy samples its actions from the global generator
    if args.summary:
        text = summarise(Path(args.out))
        (Path(args.out) / "summary.md").write_text(text)
        print(text)
        return {}
    dataset, env_id = dataset_env_id(args.dataset)
    data = load_dataset(dataset)
    n = args.max_transitions if args.max_transitions >= 0 else default_max_transitions(data.shape[0])
    data = (data[:n] if n else data).to(device)  # once: the fit, the start states and the samples read it there
    ensemble, _ = fit_or_load_ensemble(args.ensemble_dir, dataset, data, seed=args.ensemble_seed,
                                       max_epochs=args.ensemble_max_epochs, device=device)
    ensemble.eval()
    horizon, _ = mopo_hyperparameters(dataset)
    termination_fn = env_id.split("-")[0].lower()
    if args.policy:
        agent = SAC(ensemble.observation_dim, ensemble.action_dim, seed=args.seed, device=device)
        agent.load_state_dict(load_checkpoint(args.policy, device)["agent"])
        policy, policy_name = agent.policy, "/".join(Path(args.policy).parts[-3:])
    else:
        policy, policy_name = None, "uniform random actions"  # TorchRL rollout: random actions from the spec

    pick = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(args.seed))[:args.num_pairs]
    state_sets = {"data": (data["observation"][pick], data["action"][pick])}
    state_sets[f"model h={horizon}"] = rollout_pairs(ensemble, data, policy, horizon=horizon, keep_from=0,
                                                     num_pairs=args.num_pairs, termination_fn=termination_fn,
                                                     seed=args.seed)
    state_sets[f"model {horizon}..{args.long_horizon}"] = rollout_pairs(
        ensemble, data, policy, horizon=args.long_horizon, keep_from=horizon, num_pairs=args.num_pairs,
        termination_fn=termination_fn, seed=args.seed + 1)
    thresholds = {f"MOReL κ={k}": morel_halt_threshold(ensemble, data["observation"], data["action"],
                                                        pessimism_coef=float(k))
                  for k in args.pessimism_coefs.split(",") if k}

    name = f"{dataset.removeprefix('cmbrl/').replace('/', '_')}_n{data.shape[0]}"
    ensemble_label = f"{dataset.removeprefix('cmbrl/')} (n={data.shape[0]:,})"
    results, results_reward, rows = {}, {}, []
    for label, (obs, act) in state_sets.items():
        if obs.shape[0] < 2:  # e.g. every rollout terminated before step h
            print(f"{label}: fewer than 2 pairs, skipped", flush=True)
            continue
        table = calibration_data(ensemble, env_id, obs, act, seed=args.seed,
                                 penalties=args.penalties.split(",") if args.penalties else CALIBRATION_PENALTIES)
        metrics = calibration_metrics(table, worst_fraction=args.worst_fraction, halt_thresholds=thresholds)
        results[label] = metrics
        results_reward[label] = calibration_metrics(table, worst_fraction=args.worst_fraction,
                                                    error_key="reward_error")
        rows.append({"ensemble": ensemble_label, "state_set": label, "metrics": metrics})
        print(f"{label}: {metrics['num_valid']}/{metrics['num_rows']} valid rows", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_reliability(out / f"{name}.png", results, f"{ensemble_label}: true one-step error vs u (policy {policy_name})")
    text = (f"Spearman ρ / AUROC (worst {100 * args.worst_fraction:.0f} % of errors) per penalty; policy: "
            f"{policy_name}; env {env_id}\n\n{format_calibration_table(rows)}\n\n"
            f"{format_calibration_table(rows, 'halting')}\n")
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"args": dataclasses.asdict(args), "policy": policy_name,
                                                  "ensemble": ensemble_label, "env_id": env_id, "results": results,
                                                  "results_reward": results_reward}, indent=1))
    print(text)
    return results


if __name__ == "__main__":
    main(parse_dataclass_args(Args, None, __doc__))
