"""The exception cmbrl raises for inputs that lack keys (learner batches, explorer inputs, dataset transitions)."""
from __future__ import annotations

__all__ = ["MissingKeysError"]


class MissingKeysError(KeyError, ValueError):
    """Input lacks keys that a cmbrl entry point reads; the message names the missing keys, what is expected and the
    keys present. A ``KeyError``, and a ``ValueError`` too (what :meth:`~cmbrl.agents.BC.update` and
    :meth:`~cmbrl.components.DynamicsEnsemble.fit` raised for missing keys before), whose message prints as written
    (a plain ``KeyError`` prints its message's ``repr``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
