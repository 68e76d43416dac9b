"""The cell contract of ``benchmarks/learning.py``, shared by its two backends (local threads, and Ray Tune in
``benchmarks/_ray_backend.py``): what a cell is (:class:`Cell`: an algorithm, a dataset and a seed, the command that
runs it and the folder it writes), where its folder is (:func:`cell_dir`), how it runs (:func:`run_cell`: one
subprocess, output appended to ``log.txt``) and how its outcome is read (:func:`read_result`, :func:`tail`).

Both backends import this module and neither imports the other for it, so a cell runs the same way whichever backend
drives it and its numbers do not depend on the backend.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["ROOT", "Cell", "cell_dir", "dataset_dirname", "read_result", "run_cell", "tail"]

ROOT = Path(__file__).resolve().parents[1]
"""The repository (a cell's default working directory)."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run: ``command`` (argv) writes ``out/result.json``; its output goes to ``out/log.txt``."""
    algo: str
    dataset: str
    seed: int
    out: Path
    command: tuple[str, ...]
    cwd: Path = ROOT

    @property
    def name(self) -> str:
        return f"{self.algo} {self.dataset} seed {self.seed}"

    @property
    def result_path(self) -> Path:
        return self.out / "result.json"

    @property
    def log_path(self) -> Path:
        return self.out / "log.txt"


def dataset_dirname(dataset_id: str) -> str:
    return dataset_id.replace("/", "_")


def cell_dir(root: Path, algo: str, dataset_id: str, seed: int) -> Path:
    return Path(root) / algo / dataset_dirname(dataset_id) / f"seed{seed}"


def read_result(path: Path) -> dict | None:
    """The parsed ``result.json``, or None when it is absent or not a valid result (the cell is unfinished)."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or not isinstance(result.get("normalized_score"), (int, float)):
        return None
    return result


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    # progress bars write \r-separated updates: keep the last state of each line
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n")[-lines:])


def run_cell(cell: Cell, *, poll: Callable[[], None] | None = None, poll_every: float = 1.0,
             preexec_fn: Callable[[], None] | None = None) -> dict:
    """Runs one cell to completion in a subprocess (output appended to its log.txt).

    Args:
        cell: the cell.
        poll: called every ``poll_every`` seconds while the script runs (the Ray backend reports evaluations from
            it); an exception it raises kills the script and propagates.
        poll_every: seconds between ``poll`` calls.
        preexec_fn: run in the child before the script starts (``subprocess.Popen``'s).

    Returns ``{"ok": bool, "returncode": int, "wall_time_s": float, "result": dict | None, "error": str}``;
    ``ok`` iff the script exited with 0 and left a valid ``result.json``. Never raises for a failing script.
    """
    cell.out.mkdir(parents=True, exist_ok=True)
    finished = read_result(cell.result_path)
    if finished is not None:  # finished meanwhile (e.g. by another benchmark process on the same --out)
        return {"ok": True, "returncode": 0, "wall_time_s": 0.0, "result": finished, "error": ""}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(cell.log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cell.command)}\n")
        log.flush()
        try:
            process = subprocess.Popen(cell.command, stdout=log, stderr=subprocess.STDOUT, cwd=cell.cwd, env=env,
                                       preexec_fn=preexec_fn)
        except OSError as error:  # the interpreter or the script could not be started
            log.write(f"{error!r}\n")
            returncode = -1
        else:
            try:
                while True:
                    try:
                        returncode = process.wait(timeout=poll_every if poll else None)
                        break
                    except subprocess.TimeoutExpired:
                        poll()
            finally:  # interrupted (Ctrl-C, a stopped trial): the script does not outlive its cell
                if process.poll() is None:
                    process.kill()
                    process.wait()
    wall = time.perf_counter() - start
    result = read_result(cell.result_path)
    error = ""
    if returncode != 0:
        error = f"exit code {returncode}"
    elif result is None:
        error = f"exit code 0 but no valid {cell.result_path.name}"
    return {"ok": not error, "returncode": returncode, "wall_time_s": wall, "result": result, "error": error}
