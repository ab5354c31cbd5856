"""The OpenAI completions wire format (`POST /v1/completions`): a request body checked field by field into a Job
the worker decodes, the server's own limits, and the JSON objects sent back (one completion, or server-sent
event chunks). Field names and shapes follow OpenAI's API reference for the legacy completions endpoint, so the
`openai` clients, LangChain and the rest read them as they are.

Accepted: model, prompt (a string, or a list of one string), max_tokens, temperature, top_p, stop (a string or a
list), seed, n=1, stream, stream_options.include_usage, echo=false, best_of=1, logprobs=null, user; and two
fields vLLM and llama.cpp accept too: top_k and repetition_penalty. Fields left out take the model's own
`lmforge.json` generation defaults. Anything else named by OpenAI that would change the text (presence/frequency
penalties, logit_bias, suffix, n > 1) is refused with a 400 naming it, never silently ignored. Values are checked
by the runtime itself (lmforge.runtime: ranges, types, the serving limits), whose RequestError is a 400 too."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

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
    """The HTTP side's own limit. The limits on one request's work (max_new_tokens, prompt bytes, stop strings,
    deadline, batch) are the runtime's (lmforge.runtime.limits.ServingLimits): it checks every request and its
    RequestError is answered with a 400 naming the limit."""
    max_queue: int = 256            # requests waiting for their first token; past it: 503, retry later
    max_body_bytes: int = 8 << 20   # a request body (a JSON-escaped prompt takes up to 6 bytes a byte)


@dataclass
class Completion:
    """A checked request: the runtime's RowRequest fields (None = the model's own default) and what only the
    HTTP side needs."""
    request: dict
    model: str
    stream: bool
    include_usage: bool


REFUSED = {  # OpenAI fields whose non-default value would change the text: refused, never ignored
    "suffix": (None,), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}), "logprobs": (None,), "echo": (None, False), "best_of": (None, 1), "n": (None, 1),
}


def parse_completion(body: object, model: str) -> Completion:
    """The request of a `POST /v1/completions` JSON body, or BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
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
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", "stream_options")
    request = {"prompt": prompt, "max_new_tokens": body.get("max_tokens"), "stop": body.get("stop"),
               **{k: body.get(k) for k in ("temperature", "top_p", "top_k", "repetition_penalty", "seed")}}
    return Completion(request, model, stream, bool(options.get("include_usage")))


PARAMS = {"max_new_tokens": "max_tokens", "prompt": "prompt", "stop": "stop", "temperature": "temperature",
          "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repetition_penalty", "seed": "seed"}


def refused(message: str) -> BadRequest:
    """The runtime's RequestError as a 400: its message names the limit or parameter; `param` is the request
    field it is about (the runtime's max_new_tokens is the API's max_tokens). The message keeps the runtime's
    `(hint: ...)`, the fix, but only the problem before it decides `param` and `code`."""
    problem = message.split(" (hint: ", 1)[0]
    head = problem.split(" ", 2)
    word = next((w for w in head if w in PARAMS), None)
    if word is None and "stop string" in problem:
        word = "stop"
    return BadRequest(message, PARAMS.get(word), code="limit" if "limit" in problem else None)


def completion_id() -> str:
    return "cmpl-" + uuid.uuid4().hex[:24]


def completion(cid: str, model: str, text: str, finish: str | None, usage: dict) -> dict:
    """The whole answer of a non-streamed request."""
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], "usage": usage}


def chunk(cid: str, model: str, created: int, text: str, *, finish: str | None = None, usage: dict | None = None,
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
