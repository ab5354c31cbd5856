"""Continuous batching in the inference worker, over the runtime's BatchSession (lmforge.runtime.batch): a request
joins the running batch between decode steps (up to `max_batch` rows; more wait in the session's queue) and
leaves it as soon as it finishes; one step decodes every row at once, and each row's text is exactly what it gets
alone (its own seed, its own greedy tokens).

What the engine adds: the HTTP side's request keys, requests the runtime refuses (RequestError) reported as
events, and coalescing: a row's first text goes out at once (time to first token), later text at most every
`flush_s` (default 20 ms) or when the row ends, so that under load a message carries several tokens instead of
one. Every message costs the same trip through LitServe's transport whatever it holds: fewer, fuller messages
are what let throughput grow with the batch (benchmarks/serve_libraries.py)."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from lmforge.runtime import RequestError, RowRequest

FINISH = {"stop": "stop", "length": "length", "deadline": "length"}  # OpenAI's finish_reason for the runtime's


@dataclass
class Event:
    """What the HTTP side gets for one request."""
    key: str
    text: str = ""                 # new text since the last event
    finish: str | None = None      # None while decoding; "stop" (EOS or a stop string) or "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0     # generated so far
    error: str | None = None       # the runtime refused the request (a limit, a bad parameter): nothing follows


@dataclass
class Held:
    """A row's text not yet sent, and what the last send and the last event said."""
    text: str = ""
    sent_at: float = 0.0
    sent: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Engine:
    """submit()/cancel() from any thread; step() from one thread (the worker's decode thread)."""

    def __init__(self, session, flush_s: float = 0.02):
        self.session, self.flush_s = session, flush_s
        self.keys: dict[int, str] = {}             # the session's row id -> the request's key
        self.rows: dict[str, int] = {}             # and back
        self.held: dict[str, Held] = {}
        self.refused: deque[Event] = deque()
        self.lock = threading.Lock()

    def submit(self, key: str, request: RowRequest) -> None:
        try:
            rid = self.session.add(request)  # checked here, at once: limits, parameters
        except RequestError as exc:
            self.refused.append(Event(key, error=str(exc)))
            return
        with self.lock:
            self.keys[rid], self.rows[key], self.held[key] = key, rid, Held()

    def cancel(self, key: str) -> None:
        with self.lock:
            rid = self.rows.get(key)
        if rid is not None:
            self.session.cancel(rid)

    def busy(self) -> bool:
        return bool(self.refused) or self.session.busy

    def step(self) -> list[Event]:
        out = []
        while self.refused:
            out.append(self.refused.popleft())
        if not self.session.busy:
            return out
        events = self.session.step()
        now = time.monotonic()
        with self.lock:
            for ev in events:
                key = self.keys.get(ev.row)
                if key is None:
                    continue
                held = self.held[key]
                held.text += ev.text
                held.prompt_tokens, held.completion_tokens = ev.prompt_tokens, ev.completion_tokens
                if ev.finish_reason is None:
                    continue
                del self.keys[ev.row], self.rows[key], self.held[key]
                if ev.finish_reason != "cancelled":
                    out.append(Event(key, held.text, FINISH.get(ev.finish_reason, ev.finish_reason),
                                     held.prompt_tokens, held.completion_tokens))
            for key, held in self.held.items():  # the first text at once, then at most every flush_s
                if held.text and (not held.sent or now - held.sent_at >= self.flush_s):
                    out.append(Event(key, held.text, None, held.prompt_tokens, held.completion_tokens))
                    held.text, held.sent_at, held.sent = "", now, True
        return out
