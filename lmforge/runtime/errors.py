"""The runtime's errors: one base class, so an app catches everything the runtime raises about its input with
`except lmforge.runtime.RuntimeInputError`. Each is also a ValueError, as before."""
from __future__ import annotations


class RuntimeInputError(ValueError):
    """A problem with what the app handed the runtime: a model directory, a request, sampling parameters."""


class ModelDirError(RuntimeInputError):
    """The model directory is missing a file or holds an invalid one."""


class RequestError(RuntimeInputError):
    """An invalid generation request or sampling parameter (max_new_tokens, temperature, top_k, device, ...)."""
