"""Serving limits: the most work one request may ask of a loaded model, enforced by lmforge.runtime itself so that
every app that embeds it (the MLflow pyfunc model, an HTTP server, a script) is protected alike.

Where they come from, in order: the built-in defaults below; the model directory's lmforge.json `limits` section
(optional: a directory exported before it existed gets the defaults), each value checked against a hard ceiling so
that a hostile directory cannot lift them without bound; then the embedding app, which may only lower them
(`Generator(dir, limits={"max_new_tokens": 256})`). A request over a limit raises RequestError naming the limit
(a server answers it with HTTP 400)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from numbers import Integral, Real

from lmforge.runtime.errors import ModelDirError, RequestError


@dataclass(frozen=True)
class ServingLimits:
    max_new_tokens: int = 2048  # tokens one request may generate
    max_prompt_bytes: int = 1 << 20  # UTF-8 bytes of one prompt, checked before any tokenising
    max_stop_strings: int = 16  # stop strings per request
    max_stop_chars: int = 1024  # characters of each stop string
    deadline_s: float = 300.0  # wall-clock seconds from a request's arrival to its last token
    max_batch: int = 64  # rows decoded at once by one batch (more requests wait for a free row)


# what lmforge.json may declare at most: bounds on memory and time whatever the directory says
CEILINGS = ServingLimits(max_new_tokens=1 << 20, max_prompt_bytes=1 << 30, max_stop_strings=1024,
                         max_stop_chars=1 << 20, deadline_s=7 * 86400.0, max_batch=4096)
NAMES = tuple(f.name for f in fields(ServingLimits))


def _number(value: object, integral: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, Integral if integral else Real):
        return False
    return integral or math.isfinite(value)


def _checked(values: dict, where: str, error: type, ceiling: ServingLimits) -> dict:
    """The limits in `values` (a dict from JSON or an app), each a positive number no larger than `ceiling`'s."""
    app = error is RequestError  # an app lowering the model's limits; else lmforge.json's own `limits` section
    fix = "an app may only lower the model's limits" if app else \
        "fix or remove the `limits` section: without it the runtime's defaults apply"
    if not isinstance(values, dict):
        raise error(f"{where} must be an object of limits ({', '.join(NAMES)}), got {type(values).__name__}",
                    hint='pass limits as a dict, e.g. {"max_new_tokens": 256}' if app else fix)
    unknown = sorted(set(values) - set(NAMES), key=str)
    if unknown:
        raise error(f"{where} has unknown limit {str(unknown[0])[:40]!r}; the limits are {', '.join(NAMES)}",
                    hint=f"remove {str(unknown[0])[:40]!r} or correct its spelling" if app else fix)
    out = {}
    for name, value in values.items():
        integral = name != "deadline_s"
        top = getattr(ceiling, name)
        if not _number(value, integral) or not 0 < value <= top:
            kind = "an integer" if integral else "a number of seconds"
            shown = repr(value)[:40] if not isinstance(value, int) or value.bit_length() < 128 else "a huge integer"
            raise error(f"{where}.{name} must be {kind} in (0, {top}], got {shown}",
                        hint=f"pass {name} from {'1' if integral else 'above 0'} to {top}: {fix}" if app else fix)
        out[name] = int(value) if integral else float(value)
    return out


def model_limits(section: object, path: str) -> ServingLimits:
    """The limits a model directory declares (lmforge.json `limits`; missing = the built-in defaults)."""
    if section is None:
        return ServingLimits()
    return replace(ServingLimits(), **_checked(section, f"{path} limits", ModelDirError, CEILINGS))


def lowered(limits: ServingLimits, app: dict | None) -> ServingLimits:
    """`limits` with the app's own values ({name: value}, any subset), each of which may only lower the model's:
    a higher one is an error, not silently ignored (the app would believe it holds)."""
    if not app:
        return limits
    return replace(limits, **_checked(dict(app) if hasattr(app, "keys") else app, "limits", RequestError, limits))
