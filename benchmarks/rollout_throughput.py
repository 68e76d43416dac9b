"""Model-rollout throughput of ConservativeModelEnv against a bare-torch floor, in one process.

Work measured: 50,000 start states, horizon 5, a 7-member ensemble (5 elites; Hopper dimensions O=11, A=3; 4x200
SiLU), a SAC actor choosing (sampled) actions, the "max_aleatoric" penalty and the hopper termination function.
The floor is the fastest plain torch code for the same work: actor, elites' forward pass, member sampling, Gaussian
sample, penalty, clipping and termination, processed in cache-sized row chunks. A second mode uses the
"individual_std" penalty, which needs only the sampled member's forward pass; its floor runs one member per row.

    python benchmarks/rollout_throughput.py [--batch 50000] [--repeats 3] [--threads 2] [--device cpu]
        [--compile 0|1] [--backend inductor] [--clock wall|cpu] [--modes individual,full]

``--device``: where the ensemble, the actor, the env and the floor run (auto, cpu, cuda, cuda:N). ``--compile 1``:
the env's prediction step through ``torch.compile`` (``ConservativeModelEnv(compile=...)``, ``--backend``), compiled
by one untimed warm-up rollout; the floor stays eager. On CUDA every timing ends with a ``torch.cuda.synchronize``
and the rows are not chunked (``--chunk 0``: one chunk).

Prints transitions/s for each, the ratios (env / floor, higher is better; target >= 0.95), ``ratio=<full mode>``
last.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cmbrl import SAC, ConservativeModelEnv, DynamicsEnsemble
from cmbrl.components.cli import HelpFormatter
from cmbrl.components.devices import DEVICE_CHOICES, resolve_device
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
    return torch.tanh(loc + scale * torch.randn(loc.shape, generator=generator, device=loc.device))


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
    device = starts.device
    g = torch.Generator(device=device).manual_seed(seed)
    elites = ens.elite_indices
    # individual_std: only the sampled elite's pass; max_aleatoric: all members (non-elites too, as MOPO and the env)
    members = elites if individual else torch.arange(ens.num_members, device=device)
    layers = [(l.weight[members].contiguous(), l.bias[members].contiguous()) for l in [*ens.layers, ens.output]]
    aw = actor_weights(agent)
    mu, sd, max_lv, min_lv = ens.input_mean, ens.input_std, ens.max_logvar, ens.min_logvar
    E = len(elites)
    obs = starts[torch.randint(len(starts), (len(starts),), generator=g, device=device)]
    out = []
    for _ in range(HORIZON):
        nxt_parts, rew_parts = [], []
        for o in obs.split(chunk):
            a = bare_actor(o, aw, g)
            x = (torch.cat([o, a], -1) - mu) / sd
            k = torch.randint(E, (len(o),), generator=g, device=device)  # position among the elites
            if individual and device.type == "cpu":  # one member per row: group the rows by member
                mean_k = x.new_empty(len(o), OBS + 1)
                std_k = torch.empty_like(mean_k)
                order = torch.argsort(k)
                for m, rows in enumerate(order.split(torch.bincount(k, minlength=E).tolist())):
                    mm, ss = bare_members(x[rows].unsqueeze(0), [(w[m:m + 1], b[m:m + 1]) for w, b in layers],
                                          max_lv, min_lv)
                    mean_k[rows], std_k[rows] = mm[0], ss[0]
                u = std_k.norm(dim=-1)
            else:  # all members in use for every row, the sampled one gathered (on a GPU also for individual_std)
                mean, std = bare_members(x.unsqueeze(0).expand(len(members), -1, -1), layers, max_lv, min_lv)
                rows = torch.arange(len(o), device=device)
                index = k if individual else elites[k]
                mean_k, std_k = mean[index, rows], std[index, rows]
                u = std_k.norm(dim=-1) if individual else std.norm(dim=-1).amax(0)
            s = mean_k + std_k * torch.randn(mean_k.shape, generator=g, device=device)
            nxt = s[:, :-1] + o  # no clip: the model env keeps the model's own prediction
            term = hopper_termination(o, a, nxt)
            rew_parts.append(s[:, -1] - u)
            nxt_parts.append(torch.where(term.unsqueeze(-1), o, nxt))  # stand-in for a reset of finished rows
            out.append((o, a, nxt, term))
        obs = torch.cat(nxt_parts)
    return out


def timed(fns, repeats, device, clock=time.perf_counter):
    """Best time of each function over ``repeats`` rounds; the functions alternate within a round, so that a
    shared machine's load reaches them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = clock()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[i] = min(best[i], clock() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--batch", type=int, default=50_000, help="model rollouts stepped together")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--chunk", type=int, default=None,
                        help="rows per chunk (env and floor); default 4096 on the CPU, 0 (one chunk) on a GPU")
    parser.add_argument("--device", default="cpu", help=f"{DEVICE_CHOICES}")
    parser.add_argument("--compile", type=int, choices=(0, 1), default=0,
                        help="1: the env's prediction step through torch.compile (the floor stays eager)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend with --compile 1")
    parser.add_argument("--modes", default="individual,full", help="comma-separated: individual, full")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: perf_counter; cpu: this process's CPU time (steadier on a shared machine with "
                             "--threads 1; meaningless on CUDA)")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    device = resolve_device(args.device)
    chunk = args.chunk if args.chunk is not None else (4096 if device.type == "cpu" else 0)
    chunk = chunk or args.batch
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ens = DynamicsEnsemble(OBS, ACT, seed=0, device=device).eval()
    agent = SAC(OBS, ACT, seed=0)
    agent.policy.to(device)
    starts = 0.1 * torch.randn(args.batch, OBS)
    starts[:, 0] += 1.25
    starts = starts.to(device)
    low, high = starts.amin(0) - 1, starts.amax(0) + 1
    compile = {"backend": args.backend} if args.compile else False
    print(f"device={device} compile={compile or 0} threads={args.threads} chunk={chunk} clock={args.clock} "
          f"torch={torch.__version__}")
    transitions = args.batch * HORIZON
    ratios = {}
    modes = args.modes.split(",")
    for mode, penalty in (("individual", "individual_std"), ("full", "max_aleatoric")):
        if mode not in modes:
            continue
        env = ConservativeModelEnv(ens, penalty=penalty, horizon=HORIZON, start_states=starts, batch_size=args.batch,
                                   termination_fn="hopper", observation_low=low, observation_high=high,
                                   chunk_size=chunk, seed=0, compile=compile)
        individual = mode == "individual"
        with torch.no_grad():  # as in examples/mopo.py (collectors also run the policy without grad)
            if compile:
                start = time.perf_counter()
                env.rollout(HORIZON, agent.policy, break_when_any_done=False)  # compiles every chunk shape
                print(f"{mode}: compile warm-up {time.perf_counter() - start:.1f}s")
            t_env, t_floor = timed([lambda: env.rollout(HORIZON, agent.policy, break_when_any_done=False),
                                    lambda: floor_rollout(ens, agent, starts, low, high, individual, chunk, 0)],
                                   args.repeats, device, clock)
        ratios[mode] = t_floor / t_env
        print(f"{mode}: ConservativeModelEnv transitions/s={transitions / t_env:,.0f}")
        print(f"{mode}: bare-torch floor transitions/s={transitions / t_floor:,.0f}")
        print(f"{mode}: ratio_{mode}={ratios[mode]:.3f}")
    if "full" in ratios:
        print(f"ratio={ratios['full']:.3f}")


if __name__ == "__main__":
    main()
