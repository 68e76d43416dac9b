"""The GPU check: cmbrl's device tests, then its hot steps timed eager, compiled and as CUDA graphs, in one command.

    python benchmarks/gpu_check.py                          # on a GPU machine: ~5-8 min on one H100
    python benchmarks/gpu_check.py --out $OUT/gpu_check     # the report where the device tool brings files back
    python benchmarks/gpu_check.py --device cpu --quick     # a smoke run of the same code (the test suite runs it)

What it does, in order (each part's wall time is in the report; ``--budget-s`` skips the parts that would start
after the budget is spent, and says so):

1. ``pytest -m cuda tests/`` (the device-parametrised tests' CUDA half; skipped with ``--device cpu`` or
   ``--skip-tests``): passed / failed / skipped counts and the failures' names.
2. **Model transitions** through :class:`cmbrl.ConservativeModelEnv`: ``--rollout-starts`` start states x horizon
   ``--horizon`` (default 200,000 x 5 = 1M transitions, MB2PO's per-iteration budget) with 7 members, Hopper's
   dimensions (O 11, A 3), the all-member ``max_aleatoric`` penalty (MOPO) and the hopper termination function, the
   policy a SAC actor on the same device: transitions per second, eager and ``compile=True``.
3. **Updates per second** of :class:`cmbrl.SAC`, :class:`cmbrl.AWAC` and :class:`cmbrl.COMBO` (batch 256, their
   default networks), then fine-tuning's AWAC critic-only step (5 critics) and IQL (5 critics) (:data:`LEARNERS`) on pre-generated batches already on the device: ``eager``, ``compile`` (``torch.compile`` of the
   whole update) and, on CUDA, ``cudagraphs`` (the compiled update captured by ``tensordict.nn.CudaGraphModule``,
   as TorchRL's SOTA scripts and LeanRL run SAC). The first call's time (compilation / capture) is reported apart.
4. **One ensemble-fit epoch** on ``--fit-transitions`` synthetic transitions (default 1M; 7 x 4 x 200 SiLU, batch
   256 per member): seconds per epoch.
5. **Projections** from the figures above: MOPO's 1M SAC steps with a rollout of 50,000 starts x h 5 every 1,000
   steps (MOPO arXiv:2005.13239 §5 / OfflineRL-Kit), and MB2PO's 500 iterations of 1M model transitions and 1,000
   AWAC updates (MB2PO, OpenReview wiSgdeJ29ee; values unverified, see ``../shared/HYPERPARAMETERS.md`` §4). Both
   leave out the ensemble fit and the evaluations. And one O3F explorer run at critic UTD 20: 10k env steps x 20
   critic steps (the env steps and the one actor update per env step left out).

Prints a markdown table and writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out``. Synthetic data only:
no dataset, MuJoCo or network is needed, so it runs on a bare GPU machine that has the carried wheels
(``docs/gpu.md`` gives the exact device command).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tensordict import TensorDict

from cmbrl.components.cli import HelpFormatter

ROOT = Path(__file__).resolve().parents[1]

MOPO_STEPS, MOPO_ROLLOUT_EVERY, MOPO_ROLLOUT_TRANSITIONS = 1_000_000, 1_000, 50_000 * 5
MB2PO_ITERATIONS, MB2PO_TRANSITIONS, MB2PO_UPDATES = 500, 1_000_000, 1_000
O3F_ENV_STEPS = 10_000  # issue 29's online budget per explorer
MODES = ("eager", "compile", "cudagraphs")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def random_batches(n: int, batch_size: int, obs_dim: int, act_dim: int, device: torch.device,
                   real_ratio: float = 0.5) -> list[TensorDict]:
    """``n`` batches of random transitions with TorchRL's keys and COMBO's ``"is_real"``, created on ``device``."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        batch = TensorDict({
            "observation": torch.randn(batch_size, obs_dim, generator=g),
            "action": torch.rand(batch_size, act_dim, generator=g) * 2 - 1,
            "is_real": (torch.arange(batch_size) < round(real_ratio * batch_size)).unsqueeze(-1),
            "next": {"observation": torch.randn(batch_size, obs_dim, generator=g),
                     "reward": torch.randn(batch_size, 1, generator=g),
                     "terminated": torch.rand(batch_size, 1, generator=g) < 0.05,
                     "done": torch.zeros(batch_size, 1, dtype=torch.bool)}}, batch_size=[batch_size])
        batches.append(batch.to(device))
    return batches


def run_cuda_tests(timeout_s: float) -> dict:
    """``pytest -m cuda tests/`` in a subprocess: counts, failing test ids and wall time."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rf", "tests/"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        text, code = (err.stdout or "") if isinstance(err.stdout, str) else "", "timeout"
    counts = {key: int(n) for n, key in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", text)}
    failures = re.findall(r"^FAILED (\S+)", text, flags=re.M)
    return {"command": " ".join(cmd[1:]), "returncode": code, "counts": counts, "failures": failures,
            "wall_s": time.perf_counter() - start, "tail": text[-3000:]}


def model_throughput(device: torch.device, compile: bool, starts: int, horizon: int, repeats: int) -> dict:
    """Transitions per second of ``ConservativeModelEnv.rollout`` (see the module docstring, part 2)."""
    from cmbrl import SAC, ConservativeModelEnv, DynamicsEnsemble

    ensemble = DynamicsEnsemble(11, 3, seed=0, device=device)
    start_states = torch.randn(max(starts, 10_000), 11, device=device)
    env = ConservativeModelEnv(ensemble, start_states=start_states, penalty="max_aleatoric", penalty_members="all",
                               penalty_coef=1.0, horizon=horizon, batch_size=starts, termination_fn="hopper",
                               seed=0, device=device, compile=compile)
    policy = SAC(11, 3, seed=0, device=device).policy

    def rollout():
        with torch.no_grad():
            return env.rollout(horizon, policy, break_when_any_done=False)

    first_s = timed(rollout, device)  # compilation (compile=True) or allocation warm-up
    seconds = min(timed(rollout, device) for _ in range(repeats))
    transitions = starts * horizon
    return {"transitions": transitions, "first_call_s": first_s, "seconds": seconds,
            "transitions_per_s": transitions / seconds, "seconds_per_1m": seconds * 1e6 / transitions}


LEARNERS = ("sac", "awac", "combo", "awac5_critic", "iql5")
"""Part 3's learners: the three defaults, then fine-tuning's (issue 29): ``awac5_critic`` is
``AWAC(num_qvalue_nets=5, target_subset_size=2).update_critic`` (the 19 extra critic steps per env step of
``examples/finetune.py --critic-utd 20``), ``iql5`` is ``IQL(num_qvalue_nets=5).update`` (O3F's IQL)."""


def make_learner(name: str, device: torch.device, mode: str):
    from cmbrl import AWAC, COMBO, SAC
    from cmbrl.agents import IQL

    kwargs = {"seed": 0, "device": device, "compile": mode in ("compile", "cudagraphs"),
              "cudagraphs": mode == "cudagraphs"}
    if name == "awac5_critic":
        agent = AWAC(11, 3, num_qvalue_nets=5, target_subset_size=2, **kwargs)
        agent.update = agent.update_critic  # what update_throughput times
        return agent
    if name == "iql5":
        return IQL(11, 3, num_qvalue_nets=5, **kwargs)
    return {"sac": SAC, "awac": AWAC, "combo": COMBO}[name](11, 3, **kwargs)


def update_throughput(name: str, device: torch.device, mode: str, batches: list, steps: int) -> dict:
    """Updates per second of one learner in one mode on pre-generated device batches (part 3)."""
    agent = make_learner(name, device, mode)
    first_s = timed(lambda: agent.update(batches[0]), device)  # compilation / capture happen here
    for i in range(1, 8):  # CudaGraphModule captures after its warm-up calls
        agent.update(batches[i % len(batches)], sync=False)

    def run():
        for i in range(steps):
            agent.update(batches[i % len(batches)], sync=False)

    seconds = min(timed(run, device) for _ in range(3))
    return {"first_call_s": first_s, "ms_per_update": seconds / steps * 1e3, "updates_per_s": steps / seconds}


def fit_epoch(device: torch.device, transitions: int) -> dict:
    """Seconds of one ``DynamicsEnsemble.fit`` epoch on ``transitions`` synthetic transitions (part 4)."""
    from cmbrl import DynamicsEnsemble

    g = torch.Generator().manual_seed(0)
    observation = torch.randn(transitions, 11, generator=g)
    action = torch.rand(transitions, 3, generator=g) * 2 - 1
    data = TensorDict({"observation": observation, "action": action,
                       "next": {"observation": observation + 0.1 * torch.randn(transitions, 11, generator=g),
                                "reward": torch.randn(transitions, 1, generator=g)}}, batch_size=[transitions])
    ensemble = DynamicsEnsemble(11, 3, seed=0, device=device)
    seconds = timed(lambda: ensemble.fit(data, max_epochs=1, seed=0), device)
    return {"transitions": transitions, "seconds_per_epoch": seconds}


def projections(report: dict) -> dict:
    """MOPO's 1M steps and MB2PO's 500 iterations from the best measured mode of each part (see part 5)."""
    def best(results: dict, key: str) -> tuple[str, float] | None:
        found = [(mode, r[key]) for mode, r in results.items() if isinstance(r, dict) and key in r]
        return min(found, key=lambda item: item[1]) if found else None

    out = {}
    model = best(report.get("model", {}), "seconds_per_1m")
    sac = best(report.get("updates", {}).get("sac", {}), "ms_per_update")
    awac = best(report.get("updates", {}).get("awac", {}), "ms_per_update")
    critic = best(report.get("updates", {}).get("awac5_critic", {}), "ms_per_update")
    if model and sac:
        rollouts = MOPO_STEPS // MOPO_ROLLOUT_EVERY * MOPO_ROLLOUT_TRANSITIONS / 1e6 * model[1]
        updates = MOPO_STEPS * sac[1] / 1e3
        out["mopo_1m_steps"] = {"minutes": (rollouts + updates) / 60, "rollouts_min": rollouts / 60,
                                "updates_min": updates / 60, "sac_mode": sac[0], "model_mode": model[0]}
    if model and awac:
        rollouts = MB2PO_ITERATIONS * MB2PO_TRANSITIONS / 1e6 * model[1]
        updates = MB2PO_ITERATIONS * MB2PO_UPDATES * awac[1] / 1e3
        out["mb2po_500_iterations"] = {"minutes": (rollouts + updates) / 60, "rollouts_min": rollouts / 60,
                                       "updates_min": updates / 60, "awac_mode": awac[0], "model_mode": model[0]}
    if critic:  # issue 29: O3F's critic UTD 20, 10k env steps, counted as 20 critic steps per env step
        updates = O3F_ENV_STEPS * 20 * critic[1] / 1e3
        out["o3f_critic_utd20_10k_env_steps"] = {"minutes": updates / 60, "rollouts_min": 0.0,
                                                 "updates_min": updates / 60, "critic_mode": critic[0]}
    return out


def environment(device: torch.device) -> dict:
    import tensordict
    import torchrl

    info = {"python": platform.python_version(), "torch": torch.__version__, "torchrl": torchrl.__version__,
            "tensordict": tensordict.__version__, "device": str(device), "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(), "host_cpus": __import__("os").cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"GPU check on {env.get('gpu', 'CPU')} ({env['device']}), torch {env['torch']}, torchrl "
             f"{env['torchrl']}, {env['date']}" + (" — quick smoke run, not a measurement" if report["quick"] else ""),
             ""]
    tests = report.get("tests")
    if tests:
        lines += [f"CUDA tests (`{tests['command']}`): {tests['counts']} in {tests['wall_s']:.0f} s"
                  + (f"; failed: {', '.join(tests['failures'])}" if tests["failures"] else ""), ""]
    lines += ["| measured | " + " | ".join(MODES) + " | first call (compile/capture) |", "|---|---|---|---|---|"]

    def row(label: str, results: dict, key: str, fmt: str) -> None:
        cells = [format(results[m][key], fmt) if isinstance(results.get(m), dict) and key in results[m]
                 else results.get(m, "—") if isinstance(results.get(m), str) else "—" for m in MODES]
        first = ", ".join(f"{m} {results[m]['first_call_s']:.1f} s" for m in MODES
                          if isinstance(results.get(m), dict) and "first_call_s" in results[m])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {first} |")

    if report.get("model"):
        transitions = next((r["transitions"] for r in report["model"].values() if isinstance(r, dict)), 0)
        row(f"model transitions/s ({transitions:,} per rollout)", report["model"], "transitions_per_s", ",.0f")
        row("seconds per 1M model transitions", report["model"], "seconds_per_1m", ".3f")
    for name, results in report.get("updates", {}).items():
        row(f"{name.upper()} updates/s (batch 256)", results, "updates_per_s", ",.0f")
    if report.get("fit"):
        fit = report["fit"]
        lines += ["", f"Ensemble fit: {fit['seconds_per_epoch']:.1f} s per epoch on {fit['transitions']:,} "
                      f"transitions (eager)."]
    for name, p in report.get("projections", {}).items():
        lines.append(f"Projected {name.replace('_', ' ')}: {p['minutes']:.1f} min (rollouts {p['rollouts_min']:.1f},"
                     f" updates {p['updates_min']:.1f}; fit and evaluations not included).")
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    lines.append(f"\nTotal wall time {report['wall_s']:.0f} s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto: CUDA when available)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (1,000 x 5 transitions, 10 updates, 5,000-transition fit): a smoke run")
    parser.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m cuda first")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated subset of eager,compile,cudagraphs (cudagraphs: CUDA only)")
    parser.add_argument("--learners", default=",".join(LEARNERS),
                        help=f"comma-separated subset of {','.join(LEARNERS)} (see LEARNERS)")
    parser.add_argument("--rollout-starts", type=int, default=200_000, help="model rollouts per call (B)")
    parser.add_argument("--horizon", type=int, default=5, help="model rollout horizon h")
    parser.add_argument("--update-steps", type=int, default=500, help="updates per timing block")
    parser.add_argument("--fit-transitions", type=int, default=1_000_000, help="transitions of the fit epoch")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="skip the parts that would start after this many seconds (the device slot is ~10 min)")
    args = parser.parse_args(argv)

    from cmbrl.components.devices import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(f"--device: {err}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    learners = [name.strip() for name in args.learners.split(",") if name.strip()]
    if bad := [m for m in modes if m not in MODES]:
        parser.error(f"--modes: unknown {bad}; allowed {list(MODES)}")
    if bad := [n for n in learners if n not in LEARNERS]:
        parser.error(f"--learners: unknown {bad}; allowed {list(LEARNERS)}")
    if args.quick:
        args.rollout_starts, args.update_steps, args.fit_transitions = 1_000, 10, 5_000
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 figures, comparable with the CPU's
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict = {"environment": environment(device), "quick": args.quick, "args": vars(args), "skipped": []}

    def within_budget(part: str) -> bool:
        if time.perf_counter() - started < args.budget_s:
            return True
        report["skipped"].append(f"{part} (budget of {args.budget_s:.0f} s spent)")
        return False

    def save() -> None:
        report["wall_s"] = time.perf_counter() - started
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))

    if device.type == "cuda" and not args.skip_tests:
        print("== pytest -m cuda", flush=True)
        report["tests"] = run_cuda_tests(timeout_s=max(60.0, args.budget_s / 3))
        print(report["tests"]["counts"], report["tests"]["failures"], flush=True)
        save()
    report["model"] = {}
    for mode in ("eager", "compile"):
        if mode in modes and within_budget(f"model transitions, {mode}"):
            print(f"== model transitions, {mode}", flush=True)
            try:
                report["model"][mode] = model_throughput(device, mode == "compile", args.rollout_starts,
                                                         args.horizon, repeats=3)
            except Exception as err:  # noqa: BLE001 - a failing part is reported, the rest still runs
                report["model"][mode] = f"error: {type(err).__name__}: {err}"[:500]
            print(report["model"][mode], flush=True)
            save()
    batches = random_batches(8, 256, 11, 3, device)
    report["updates"] = {}
    for name in learners:
        report["updates"][name] = {}
        for mode in modes:
            if mode == "cudagraphs" and device.type != "cuda":
                report["updates"][name][mode] = "CUDA only"
                continue
            if not within_budget(f"{name} {mode}"):
                continue
            print(f"== {name} updates, {mode}", flush=True)
            try:
                report["updates"][name][mode] = update_throughput(name, device, mode, batches, args.update_steps)
            except Exception as err:  # noqa: BLE001
                report["updates"][name][mode] = f"error: {type(err).__name__}: {err}"[:500]
            print(report["updates"][name][mode], flush=True)
            save()
    if within_budget("ensemble fit epoch"):
        print("== ensemble fit epoch", flush=True)
        try:
            report["fit"] = fit_epoch(device, args.fit_transitions)
        except Exception as err:  # noqa: BLE001
            report["skipped"].append(f"ensemble fit: {type(err).__name__}: {err}"[:500])
        print(report.get("fit"), flush=True)
    report["projections"] = projections(report)
    save()
    text = markdown(report)
    (out / "gpu_check.md").write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
