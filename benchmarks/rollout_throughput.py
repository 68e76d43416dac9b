"""Model-rollout throughput of ConservativeModelEnv against a bare-torch floor, in one process.

Work measured: 50,000 start states, horizon 5, a 7-member ensemble (5 elites; Hopper dimensions O=11, A=3; 4x200
SiLU), a SAC actor choosing (sampled) actions, the "max_aleatoric" penalty and the hopper termination function.
The floor is the fastest plain torch code for the same work: actor, elites' forward pass, member sampling, Gaussian
sample, penalty, clipping and termination, processed in cache-sized row chunks. A second mode uses the
"individual_std" penalty, which needs only the sampled member's forward pass; its floor runs one member per row.

    python benchmarks/rollout_throughput.py [--batch 50000] [--repeats 3] [--threads 2]

Prints transitions/s for each, the ratios (env / floor, higher is better; target >= 0.9), ``ratio=<full mode>`` last.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cmbrl import SAC, ConservativeModelEnv, DynamicsEnsemble
from cmbrl.components.termination import hopper_termination

OBS, ACT, HORIZON = 11, 3, 5


def actor_weights(agent: SAC):
    linears = [m for m in agent.policy.modules() if isinstance(m, torch.nn.Linear)]
    return [(m.weight.t().contiguous(), m.bias) for m in linears]


def bare_actor(x, weights, generator):
    for w, b in weights[:-1]:
        x = torch.relu(torch.addmm(b, x, w))
    w, b = weights[-1]
    loc, scale = torch.addmm(b, x, w).chunk(2, -1)
    scale = scale.clamp(-5.0, 2.0).exp()  # cmbrl.SAC's default head: exp(clamp(log σ, -5, 2))
    return torch.tanh(loc + scale * torch.randn(loc.shape, generator=generator))


def bare_members(x, layers, max_lv, min_lv):
    for w, b in layers[:-1]:
        x = F.silu(torch.baddbmm(b, x, w))
    w, b = layers[-1]
    mean, logvar = torch.baddbmm(b, x, w).chunk(2, -1)
    logvar = max_lv - F.softplus(max_lv - logvar)
    logvar = min_lv + F.softplus(logvar - min_lv)
    return mean, (0.5 * logvar).exp()


@torch.no_grad()
def floor_rollout(ens: DynamicsEnsemble, agent: SAC, starts, low, high, individual: bool, chunk: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    elites = ens.elite_indices
    # individual_std: only the sampled elite's pass; max_aleatoric: all members (non-elites too, as MOPO and the env)
    members = elites if individual else torch.arange(ens.num_members)
    layers = [(l.weight[members].contiguous(), l.bias[members].contiguous()) for l in [*ens.layers, ens.output]]
    aw = actor_weights(agent)
    mu, sd, max_lv, min_lv = ens.input_mean, ens.input_std, ens.max_logvar, ens.min_logvar
    E = len(elites)
    obs = starts[torch.randint(len(starts), (len(starts),), generator=g)]
    out = []
    for _ in range(HORIZON):
        nxt_parts, rew_parts = [], []
        for o in obs.split(chunk):
            a = bare_actor(o, aw, g)
            x = (torch.cat([o, a], -1) - mu) / sd
            k = torch.randint(E, (len(o),), generator=g)  # position among the elites
            if individual:  # one member per row: group the rows by member
                mean_k = x.new_empty(len(o), OBS + 1)
                std_k = torch.empty_like(mean_k)
                order = torch.argsort(k)
                for m, rows in enumerate(order.split(torch.bincount(k, minlength=E).tolist())):
                    mm, ss = bare_members(x[rows].unsqueeze(0), [(w[m:m + 1], b[m:m + 1]) for w, b in layers],
                                          max_lv, min_lv)
                    mean_k[rows], std_k[rows] = mm[0], ss[0]
                u = std_k.norm(dim=-1)
            else:
                mean, std = bare_members(x.unsqueeze(0).expand(len(members), -1, -1), layers, max_lv, min_lv)
                rows = torch.arange(len(o))
                mean_k, std_k = mean[elites[k], rows], std[elites[k], rows]
                u = std.norm(dim=-1).amax(0)
            s = mean_k + std_k * torch.randn(mean_k.shape, generator=g)
            nxt = s[:, :-1] + o  # no clip: the model env keeps the model's own prediction
            term = hopper_termination(o, a, nxt)
            rew_parts.append(s[:, -1] - u)
            nxt_parts.append(torch.where(term.unsqueeze(-1), o, nxt))  # stand-in for a reset of finished rows
            out.append((o, a, nxt, term))
        obs = torch.cat(nxt_parts)
    return out


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ens = DynamicsEnsemble(OBS, ACT, seed=0).eval()
    agent = SAC(OBS, ACT, seed=0)
    starts = 0.1 * torch.randn(args.batch, OBS)
    starts[:, 0] += 1.25
    low, high = starts.amin(0) - 1, starts.amax(0) + 1
    transitions = args.batch * HORIZON
    ratios = {}
    for mode, penalty in (("individual", "individual_std"), ("full", "max_aleatoric")):
        env = ConservativeModelEnv(ens, penalty=penalty, horizon=HORIZON, start_states=starts, batch_size=args.batch,
                                   termination_fn="hopper", observation_low=low, observation_high=high,
                                   chunk_size=args.chunk, seed=0)
        individual = mode == "individual"
        with torch.no_grad():  # as in examples/mopo.py (collectors also run the policy without grad)
            t_env = timed(lambda: env.rollout(HORIZON, agent.policy, break_when_any_done=False), args.repeats)
        t_floor = timed(lambda: floor_rollout(ens, agent, starts, low, high, individual, args.chunk, 0), args.repeats)
        ratios[mode] = t_floor / t_env
        print(f"{mode}: ConservativeModelEnv transitions/s={transitions / t_env:,.0f}")
        print(f"{mode}: bare-torch floor transitions/s={transitions / t_floor:,.0f}")
        print(f"{mode}: ratio_{mode}={ratios[mode]:.3f}")
    print(f"ratio={ratios['full']:.3f}")


if __name__ == "__main__":
    main()
