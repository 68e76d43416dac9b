"""Where cmbrl's tensors live and how its hot steps are compiled: one place for ``--device`` and ``--compile``.

* :func:`resolve_device` turns ``"auto" | "cpu" | "cuda" | "cuda:N"`` (or a :class:`torch.device`) into a
  :class:`torch.device` with an explicit index, or raises a clear ``ValueError`` naming what was asked for and what
  this machine has;
* :func:`check_same_device` refuses tensors on two devices, naming both;
* :func:`compile_step` wraps a learner's whole update (loss, backward, optimiser and target steps) in
  ``torch.compile`` and/or ``tensordict.nn.CudaGraphModule``, the pattern of TorchRL's SOTA implementations
  (``sota-implementations/sac/sac.py``) and LeanRL.

Every learner (:class:`~cmbrl.agents.SAC`, :class:`~cmbrl.agents.AWAC`, :class:`~cmbrl.agents.COMBO`,
:class:`~cmbrl.agents.BC`), :class:`~cmbrl.components.DynamicsEnsemble` and the examples' ``--device`` go through
:func:`resolve_device`, so ``device="cuda"`` on a machine without CUDA fails the same way everywhere.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["DEVICE_CHOICES", "resolve_device", "available_devices", "check_same_device", "check_compile_options",
           "compile_kwargs", "compile_step"]

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
"""What ``--device`` accepts (``auto``: the first CUDA device when torch sees one, else the CPU)."""


def available_devices() -> list[str]:
    """The devices this process can use: ``["cpu", "cuda:0", ...]``."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu", *[f"cuda:{i}" for i in range(count)]]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` for a ``device`` argument, checked against what this machine has.

    Args:
        device: ``"auto"`` or ``None`` (CUDA device 0 when ``torch.cuda.is_available()``, else the CPU), ``"cpu"``,
            ``"cuda"`` (the current CUDA device), ``"cuda:N"``, or a :class:`torch.device`.

    Returns:
        A :class:`torch.device`; CUDA devices carry their index (``cuda:0``), so that devices compare equal to
        ``tensor.device``.

    Raises:
        ValueError: a string torch cannot parse or a device type other than CPU/CUDA (naming :data:`DEVICE_CHOICES`);
            a CUDA device on a machine without CUDA, or an index beyond the visible devices (naming what was asked
            for and :func:`available_devices`).
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be {DEVICE_CHOICES} or a torch.device, got {device!r} "
                         f"({type(device).__name__})")
    try:
        parsed = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except RuntimeError:
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {device!r}") from None
    if parsed.type == "cpu":
        return torch.device("cpu")
    if parsed.type != "cuda":
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {device!r} (device type {parsed.type!r} is not "
                         f"supported by cmbrl)")
    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
        raise ValueError(f"device {str(device)!r} was asked for, but {why}; available: "
                         f"{', '.join(available_devices())}. Use --device cpu (or auto).")
    index = torch.cuda.current_device() if parsed.index is None else parsed.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} was asked for, but only {torch.cuda.device_count()} CUDA "
                         f"device(s) are visible; available: {', '.join(available_devices())}")
    return torch.device("cuda", index)


def check_same_device(what: str, tensor: torch.Tensor, expected: torch.device | str, owner: str) -> None:
    """Raises ``ValueError`` naming both devices unless ``tensor`` lives on ``expected``.

    Args:
        what: the tensor's name in the message (e.g. ``"start_states"``).
        tensor: the tensor to check.
        expected: the device it must be on.
        owner: what owns ``expected`` in the message (e.g. ``"the ensemble"``).
    """
    expected = torch.device(expected)
    if tensor.device != expected and not (tensor.device.type == expected.type == "cuda" and expected.index is None):
        raise ValueError(f"{what} is on {tensor.device} but {owner} is on {expected}; move it once with "
                         f".to({str(expected)!r}) (cmbrl does not copy across devices at every step)")


def check_compile_options(device: torch.device, compile: bool | str | dict, cudagraphs: bool) -> None:
    """Raises ``ValueError`` for ``cudagraphs=True`` off CUDA, or a ``compile`` that is not a bool, a
    ``torch.compile`` mode string (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``, ...) or a dict of
    ``torch.compile`` keyword arguments (e.g. ``{"backend": "aot_eager"}``, ``{"mode": "max-autotune"}``)."""
    if not isinstance(compile, (bool, str, dict)):
        raise ValueError(f"compile must be a bool, a torch.compile mode string or a dict of torch.compile keyword "
                         f"arguments, got {compile!r} ({type(compile).__name__})")
    if isinstance(compile, dict) and not all(isinstance(key, str) for key in compile):
        raise ValueError(f"compile as a dict holds torch.compile keyword arguments (string keys), got {compile!r}")
    if cudagraphs and torch.device(device).type != "cuda":
        raise ValueError(f"cudagraphs=True needs a CUDA device (CUDA graphs are a CUDA feature), got device "
                         f"{str(device)!r}; use cudagraphs=False on the CPU")


def compile_kwargs(compile: bool | str | dict) -> dict | None:
    """The ``torch.compile`` keyword arguments ``compile`` stands for, or ``None`` for no compilation.

    ``False``: ``None``; ``True`` or ``"default"``: ``{}`` (inductor, default mode); any other string:
    ``{"mode": compile}``; a dict: a copy of it (an empty dict compiles with the defaults).
    """
    if compile is False or compile is None:
        return None
    if compile is True or compile == "default":
        return {}
    if isinstance(compile, str):
        return {"mode": compile}
    return dict(compile)


def compile_step(fn: Callable, *, compile: bool | str | dict = False, cudagraphs: bool = False, warmup: int = 5,
                 tensordict_input: bool = True) -> Callable:
    """``fn`` (a whole update: losses, backward, optimiser and target steps, returning detached tensors) through
    ``torch.compile`` (``compile``: ``True`` for the default mode, a mode string, or a dict of ``torch.compile``
    keyword arguments such as ``{"backend": "aot_eager"}``, see :func:`compile_kwargs`) and then
    ``tensordict.nn.CudaGraphModule`` (``cudagraphs``; CUDA only, captured after ``warmup`` eager/compiled calls).

    This is how TorchRL's SOTA scripts and LeanRL run SAC: the optimisers must be built with ``capturable=True`` for
    CUDA graphs, and every call must get inputs of the same shapes, dtypes and devices (a fixed batch size).
    ``tensordict_input``: ``fn`` takes a TensorDict (``CudaGraphModule(in_keys=[], out_keys=[])``); otherwise
    tensors.
    """
    kwargs = compile_kwargs(compile)
    if kwargs is not None:
        fn = torch.compile(fn, **kwargs)
    if cudagraphs:
        from tensordict.nn import CudaGraphModule

        keys = {"in_keys": [], "out_keys": []} if tensordict_input else {}
        fn = CudaGraphModule(fn, warmup=warmup, **keys)
    return fn
