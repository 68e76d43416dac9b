"""Checkpoint files written so that a process killed mid-write (a session's end, an out-of-memory kill) never leaves
a truncated file where a resumable run will look for its checkpoint."""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["save_atomic"]


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder, renamed over ``path`` only once it is
    complete (``os.replace``: atomic on POSIX within one file system). Readers see the old file or the new one,
    never a partial one. On any error the temporary file is removed and ``path`` is left as it was; the error is
    re-raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
