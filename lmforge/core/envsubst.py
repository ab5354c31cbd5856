"""`${NAME}` in a config value, read from the worker's environment at the moment it is needed.

Prefect stores a flow run's parameters (the `overrides` dict) as they were passed, and lmforge logs its
config to MLflow: a secret written into `data.source` would be kept in both. Writing
`data.source = "https://host/corpus.txt?token=${LMFORGE_SOURCE_TOKEN}"` keeps only the variable's name there;
`lmforge.data.sources` expands it just before the download, inside the worker, and nothing writes the result.
"""
from __future__ import annotations

import os
import re

from lmforge.core.errors import LmforgeError

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def references(text: str, key: str) -> list[str]:
    """The variable names `text` refers to; a malformed `${...}` is an error naming `key`."""
    names = _REFERENCE.findall(text)
    for name in names:
        if not _NAME.fullmatch(name):
            raise LmforgeError(f"{key} refers to ${{{name}}}, which is not an environment variable name",
                               hint="use ${NAME} with letters, digits and _, e.g. ${LMFORGE_SOURCE_TOKEN}")
    if "${" in _REFERENCE.sub("", text):
        raise LmforgeError(f"{key} has an unclosed ${{", hint="write ${NAME}, e.g. ${LMFORGE_SOURCE_TOKEN}")
    return names


def expand(text: str, key: str, environ: dict | None = None) -> str:
    """`text` with each ${NAME} replaced by that environment variable; an unset one is an error naming it."""
    environ = os.environ if environ is None else environ
    missing = [n for n in references(text, key) if n not in environ]
    if missing:
        raise LmforgeError(f"{key} refers to ${{{missing[0]}}}, which is not set in this worker's environment",
                           hint=f"export {missing[0]}=... in the environment of the process that runs the flow "
                                "(for a deployment: the worker's)")
    return _REFERENCE.sub(lambda m: environ[m.group(1)], text)
