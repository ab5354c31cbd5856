"""The runtime's errors: one base class, so an app catches everything the runtime raises about its input with
`except lmforge.runtime.RuntimeInputError`. Each is also a ValueError, as before.

Each carries a `message` (the problem) and a `hint` (the fix), and reads `"{message} (hint: {hint})"`: the shape of
lmforge.core.errors.LmforgeError, which the runtime does not import (it stays torch- and pipeline-free), so that
`lmforge generate`, an HTTP server's 400 and the MLflow model's error all tell the user what to do."""
from __future__ import annotations

# the fix for a damaged or foreign model directory, shared by the hints that name it
REEXPORT = "re-export the model with `lmforge run`"
TAMPERED = f"{REEXPORT}; a directory from an unknown source may have been tampered with"


class RuntimeInputError(ValueError):
    """A problem with what the app handed the runtime: a model directory, a request, sampling parameters."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message

    def __reduce__(self):  # the hint survives a pickle (a LitServe worker process hands errors back)
        return type(self), (self.message, self.hint)


class ModelDirError(RuntimeInputError):
    """The model directory is missing a file or holds an invalid one."""


class RequestError(RuntimeInputError):
    """An invalid generation request or sampling parameter (max_new_tokens, temperature, top_k, device, ...)."""
