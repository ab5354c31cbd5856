"""The OpenAI completions wire format (`POST /v1/completions`): a request body checked field by field into a Job
the worker decodes, the server's own limits, and the JSON objects sent back (one completion, or server-sent
event chunks). Field names and shapes follow OpenAI's API reference for the legacy completions endpoint, so the
`openai` clients, LangChain and the rest read them as they are.

Accepted: model, prompt (a string, or a list of one string), max_tokens, temperature, top_p, stop (a string or a
list), seed, n=1, stream, stream_options.include_usage, echo=false, best_of=1, logprobs=null, user; and two
fields vLLM and llama.cpp accept too: top_k and repetition_penalty. Fields left out take the model's own
`lmforge.json` generation defaults. Anything else named by OpenAI that would change the text (presence/frequency
penalties, logit_bias, suffix, n > 1) is refused with a 400 naming it, never silently ignored."""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import asdict, dataclass, field

SSE_DONE = "data: [DONE]\n\n"


class BadRequest(ValueError):
    """A request the server refuses: HTTP `status` with OpenAI's error object naming `param`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status = param, status
        self.code = code or ("model_not_found" if status == 404 else "invalid_request_error")

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of this server (0 lifts a limit). The runtime checks its own ceilings too
    (lmforge.runtime RequestError); whichever is lower refuses first, each as a 400 naming itself."""
    max_tokens: int = 2048          # completion tokens per request
    max_prompt_bytes: int = 65536   # UTF-8 bytes of the prompt
    max_stop: int = 4               # stop strings per request (OpenAI's own maximum)
    max_stop_chars: int = 256       # characters per stop string
    max_queue: int = 256            # requests waiting for their first token; past it: 503, retry later

    def flags(self) -> dict[str, str]:
        """Each limit's command-line flag, named in refusals."""
        return {name: "--" + name.replace("_", "-") for name in asdict(self)}


@dataclass
class Job:
    """One completion request as the inference worker decodes it; None = the model's own default."""
    key: str
    prompt: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def sampling(self) -> dict:
        """The keyword arguments of lmforge.runtime.Generator.generate/stream."""
        return {"max_new_tokens": self.max_tokens, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p, "repetition_penalty": self.repetition_penalty, "stop": list(self.stop),
                "seed": self.seed}


@dataclass
class Completion:
    """A checked request: the job plus what only the HTTP side needs."""
    job: Job
    model: str
    stream: bool
    include_usage: bool


REFUSED = {  # OpenAI fields whose non-default value would change the text: refused, never ignored
    "suffix": (None,), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}), "logprobs": (None,), "echo": (None, False), "best_of": (None, 1), "n": (None, 1),
}


def _number(body: dict, name: str, kind: type, low: float | None = None, high: float | None = None,
            low_open: bool = False):
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or not math.isfinite(value):
        raise BadRequest(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}", name)
    if low is not None and (value <= low if low_open else value < low):
        raise BadRequest(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}", name)
    if high is not None and value > high:
        raise BadRequest(f"{name} must be <= {high}, got {value!r}", name)
    return kind(value)


def parse_completion(body: object, model: str, limits: Limits) -> Completion:
    """The checked request of a `POST /v1/completions` JSON body, or BadRequest naming the field or limit."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    flags = limits.flags()
    for name, defaults in REFUSED.items():
        if name in body and body[name] not in defaults:
            raise BadRequest(f"{name}={body[name]!r} is not supported by this server "
                             f"(it serves n=1, no echo, logprobs, penalties or suffix)", name)
    asked = body.get("model")
    if asked is not None and asked != model:
        raise BadRequest(f"the model {asked!r} does not exist here; this server serves {model!r} (GET /v1/models)",
                         "model", status=404)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (or a list of one string); token-id prompts and batches of "
                         "prompts are not served: send one request per prompt", "prompt")
    size = len(prompt.encode("utf-8", "surrogatepass"))
    if limits.max_prompt_bytes and size > limits.max_prompt_bytes:
        raise BadRequest(f"prompt is {size} bytes, over this server's max_prompt_bytes limit of "
                         f"{limits.max_prompt_bytes} ({flags['max_prompt_bytes']})", "prompt", code="max_prompt_bytes")
    max_tokens = _number(body, "max_tokens", int, low=1)
    if max_tokens is not None and limits.max_tokens and max_tokens > limits.max_tokens:
        raise BadRequest(f"max_tokens={max_tokens} is over this server's max_tokens limit of {limits.max_tokens} "
                         f"({flags['max_tokens']})", "max_tokens", code="max_tokens")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of strings", "stop")
    if limits.max_stop and len(stop) > limits.max_stop:
        raise BadRequest(f"{len(stop)} stop strings is over this server's max_stop limit of {limits.max_stop} "
                         f"({flags['max_stop']})", "stop", code="max_stop")
    longest = max(map(len, stop), default=0)
    if limits.max_stop_chars and longest > limits.max_stop_chars:
        raise BadRequest(f"a stop string of {longest} characters is over this server's max_stop_chars limit of "
                         f"{limits.max_stop_chars} ({flags['max_stop_chars']})", "stop", code="max_stop_chars")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", "stream_options")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise BadRequest(f"seed must be an integer in [0, 2**63), got {seed!r}", "seed")
    job = Job(key="", prompt=prompt, max_tokens=max_tokens,
              temperature=_number(body, "temperature", float, low=0),
              top_p=_number(body, "top_p", float, low=0, high=1, low_open=True),
              top_k=_number(body, "top_k", int, low=0),
              repetition_penalty=_number(body, "repetition_penalty", float, low=0, low_open=True) or 1.0,
              stop=[s for s in stop if s], seed=seed)
    return Completion(job, model, stream, bool(options.get("include_usage")))


def completion_id() -> str:
    return "cmpl-" + uuid.uuid4().hex[:24]


def completion(cid: str, model: str, text: str, finish: str | None, usage: dict) -> dict:
    """The whole answer of a non-streamed request."""
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], "usage": usage}


def chunk(cid: str, model: str, created: int, text: str, finish: str | None = None, usage: dict | None = None,
          choices: bool = True) -> str:
    """One server-sent event of a streamed request: `data: {json}` and a blank line. The last text chunk carries
    finish_reason; with stream_options.include_usage a final chunk with no choices carries the usage."""
    import json

    body = {"id": cid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}] if choices else [],
            "usage": usage}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
