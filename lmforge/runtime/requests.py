"""What an app asks of the runtime, one row at a time, and what it gets back: RowRequest in, RowEvent out.

Each row of a batch carries its own request (prompt, max_new_tokens, sampling parameters, stop strings, seed), so
a server can batch requests that arrive from different clients; `settle` checks one against the model's
generation defaults and its serving limits (lmforge.runtime.limits) before any work is done."""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

from lmforge.runtime.errors import RequestError
from lmforge.runtime.limits import ServingLimits
from lmforge.runtime.sampling import SamplingParams

SERVED = "where the model is served: lmforge.json `limits`, or the app's own lower limit"  # who may raise one

# EOS or a stop string; max_new_tokens; limits.deadline_s; BatchSession.cancel
FINISH_REASONS = ("stop", "length", "deadline", "cancelled")


@dataclass(frozen=True)
class RowRequest:
    """One row's request. None = the model directory's default (lmforge.json `generation`)."""
    prompt: str
    max_new_tokens: int | None = None
    temperature: float | None = None  # 0 = greedy
    top_k: int | None = None  # 0 = off
    top_p: float | None = None  # 1 = off
    repetition_penalty: float | None = None  # 1 = off
    stop: tuple[str, ...] | list[str] | str | None = None  # the text ends before the first one that appears
    seed: int | None = None  # the row's own RNG: the same seed gives the same tokens, alone or in any batch


@dataclass(frozen=True)
class RowEvent:
    """One step of one row: the token it sampled and the text that is now safe to show. A running row has one
    event per step (its text may be "": a character or a stop string's prefix held back); every row ends with
    exactly one event whose finish_reason is set. A row's texts, joined, are exactly the text it gets alone."""
    row: int  # the request's index in stream_batch's list, or the id BatchSession.add returned
    text: str  # whole characters only; never a part of a stop string
    token_ids: tuple[int, ...]  # the id sampled this step (none for EOS, or for a row that ended unsampled)
    finish_reason: str | None  # None while the row runs; then one of FINISH_REASONS
    prompt_tokens: int  # the prompt's ids as decoded (after the cut to the context)
    completion_tokens: int  # ids generated so far (EOS left out)

    def __init__(self, row: int, text: str, token_ids: tuple[int, ...], finish_reason: str | None,
                 prompt_tokens: int, completion_tokens: int):
        # one event per row and step: one dict update instead of the six object.__setattr__ calls that a frozen
        # dataclass's own __init__ makes (half the cost; still frozen, equal, hashable)
        self.__dict__.update(row=row, text=text, token_ids=token_ids, finish_reason=finish_reason,
                             prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def check_finished(ev: RowEvent) -> None:
    """Raise RequestError when a row's last event says it ran out of time (what generate() and `lmforge generate`
    do; a streaming server may rather end the stream with finish_reason "deadline")."""
    if ev.finish_reason == "deadline":
        raise RequestError("the request ran past its deadline (limits.deadline_s)",
                           hint=f"ask for fewer tokens, or raise limits.deadline_s {SERVED}")


@dataclass(frozen=True)
class Settled:
    """A request checked and completed with the model's defaults."""
    prompt: str
    max_new_tokens: int
    params: SamplingParams
    stop: tuple[str, ...]
    seed: int | None


def _integer(name: str, value: object, low: int, high: int, limit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise RequestError(f"{name} must be an integer, got {value!r}",
                           hint=f"pass {name} as a whole number from {low} to {high}")
    if value < low:
        raise RequestError(f"{name} must be >= {low}, got {value}", hint=f"pass {name} from {low} to {high}")
    if value > high:
        raise RequestError(f"{name} {value} is over the limit of {high} ({limit})",
                           hint=f"ask for at most {high}, or raise {limit} {SERVED}")
    return int(value)


def check_prompt(prompt: object, limits: ServingLimits) -> str:
    """The prompt as valid UTF-8 text within limits.max_prompt_bytes, measured before anything tokenises it."""
    if not isinstance(prompt, str):
        raise RequestError(f"prompt must be a string, got {type(prompt).__name__}",
                           hint="pass the prompt as a str; decode bytes as UTF-8 first")
    top = limits.max_prompt_bytes
    if len(prompt) > top:  # each character is at least one byte: over without encoding a huge prompt
        size = f"over {top}"
    else:
        try:
            size = len(prompt.encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate: e.g. a non-UTF-8 byte from argv (surrogateescape)
            bad = prompt[exc.start]
            raise RequestError(f"prompt is not valid UTF-8 text: {bad!r} at character {exc.start}",
                               hint="pass UTF-8 text; re-encode the input or set a UTF-8 locale") from None
        if size <= top:
            return prompt
    raise RequestError(f"prompt is {size} bytes, over the limit of {top} (limits.max_prompt_bytes)",
                       hint="send a shorter prompt: only its last tokens fit the model's context anyway")


def check_stop(stop: object, limits: ServingLimits) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
        raise RequestError(f"stop must be a string or a list of strings, got {type(stop).__name__}",
                           hint='pass stop as one string or a list of strings, e.g. ["\\n", "."]')
    if len(stops) > limits.max_stop_strings:
        raise RequestError(f"{len(stops)} stop strings are over the limit of {limits.max_stop_strings} "
                           "(limits.max_stop_strings)",
                           hint=f"pass at most {limits.max_stop_strings}, or raise limits.max_stop_strings {SERVED}")
    for s in stops:
        if len(s) > limits.max_stop_chars:
            raise RequestError(f"a stop string of {len(s)} characters is over the limit of {limits.max_stop_chars} "
                               "(limits.max_stop_chars)",
                               hint=f"shorten it to {limits.max_stop_chars} characters, or raise limits.max_stop_chars "
                                    f"{SERVED}")
    return tuple(s for s in stops if s)


def settle(req: RowRequest, defaults: dict, limits: ServingLimits) -> Settled:
    """Check one request against the limits and fill what it leaves out from `defaults` (lmforge.json
    `generation`, already validated). RequestError names the first problem."""
    if not isinstance(req, RowRequest):
        raise RequestError(f"a request must be a lmforge.runtime.RowRequest, got {type(req).__name__}",
                           hint="build each request with lmforge.runtime.RowRequest(prompt, max_new_tokens=...)")
    prompt = check_prompt(req.prompt, limits)

    def pick(name: str, fallback):
        value = getattr(req, name)
        if value is None:
            value = defaults.get(name)
        return fallback if value is None else value

    if req.max_new_tokens is None:  # the model's default, at most the limit (an app may have lowered it)
        n = min(int(defaults.get("max_new_tokens") or 100), limits.max_new_tokens)
    else:
        n = _integer("max_new_tokens", req.max_new_tokens, 1, limits.max_new_tokens, "limits.max_new_tokens")
    params = SamplingParams(temperature=pick("temperature", 1.0), top_k=pick("top_k", 0), top_p=pick("top_p", 1.0),
                            repetition_penalty=pick("repetition_penalty", 1.0))
    seed = req.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < 2**64):
        raise RequestError(f"seed must be an integer in [0, 2**64), got {seed!r}",
                           hint="pass a whole number such as seed 42, or leave it out for a random draw")
    return Settled(prompt, n, params, check_stop(req.stop, limits), seed)
