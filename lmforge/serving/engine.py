"""Continuous batching in the inference worker: requests wait in a queue, join the running batch between decode
steps (up to `max_batch` rows) and leave it as soon as they finish; one step decodes every active row at once.

The scheduler needs only this from the runtime (the `Rows` protocol):

    rows.add(job) -> prompt token count     raises lmforge.runtime.RequestError for a request it refuses
    rows.step()   -> [Event, ...]           one decode step of every row: new text, finish reason, token counts
    rows.cancel(key), len(rows)

A row's text must not depend on the other rows (its own seed, its own greedy tokens): batching never changes an
answer. `SerialRows` is the stand-in until lmforge.runtime has a per-row batch API: it steps each row's own
Generator.stream (exact, not batched)."""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from lmforge.runtime import Generator, RuntimeInputError
from lmforge.serving.protocol import Job


@dataclass
class Event:
    """What one step produced for one request."""
    key: str
    text: str = ""                 # new text since the last event
    finish: str | None = None      # None while decoding; "stop" (EOS or a stop string) or "length" (max_tokens)
    prompt_tokens: int = 0
    completion_tokens: int = 0     # generated so far
    error: str | None = None       # the request was refused (the runtime's RequestError): no text follows


class Rows(Protocol):
    def add(self, job: Job) -> int: ...
    def step(self) -> list[Event]: ...
    def cancel(self, key: str) -> None: ...
    def __len__(self) -> int: ...


class Scheduler:
    """FIFO admission into a batch of at most `max_batch` rows. submit() and cancel() may be called from any thread;
    step() from one thread only (the worker's decode thread): new requests join between steps."""

    def __init__(self, rows: Rows, max_batch: int):
        self.rows, self.max_batch = rows, max(1, int(max_batch))
        self.waiting: deque[Job] = deque()
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()

    def submit(self, job: Job) -> None:
        with self.lock:
            self.waiting.append(job)

    def cancel(self, key: str) -> None:
        with self.lock:
            self.cancelled.add(key)

    def busy(self) -> bool:
        return bool(self.waiting) or len(self.rows) > 0

    def step(self) -> list[Event]:
        out: list[Event] = []
        with self.lock:
            cancelled, self.cancelled = self.cancelled, set()
            if cancelled:
                self.waiting = deque(j for j in self.waiting if j.key not in cancelled)
            admit = []
            while self.waiting and len(self.rows) + len(admit) < self.max_batch:
                admit.append(self.waiting.popleft())
        for key in cancelled:
            self.rows.cancel(key)
        for job in admit:
            try:
                self.rows.add(job)
            except RuntimeInputError as exc:  # the runtime's own limits and checks: the client's error
                out.append(Event(job.key, error=str(exc)))
        if len(self.rows):
            out.extend(self.rows.step())
        return out


class SerialRows:
    """Rows decoded one after another, each with its own Generator.stream: the same text a request gets alone,
    without the speed of a batch (the stand-in until the runtime's per-row batch API)."""

    def __init__(self, gen: Generator):
        self.gen = gen
        self.rows: dict[str, tuple[Job, Iterator[str], int, list[str]]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, job: Job) -> int:
        kwargs = job.sampling()
        self.gen._request(**kwargs)  # checks the request now, so a bad one is refused before any text
        prompt_tokens = min(len(self.gen.encode(job.prompt)), self.gen.block_size - 1) or 1
        self.rows[job.key] = (job, self.gen.stream(job.prompt, **kwargs), prompt_tokens, [])
        return prompt_tokens

    def cancel(self, key: str) -> None:
        self.rows.pop(key, None)

    def step(self) -> list[Event]:
        out = []
        for key, (job, pieces, prompt_tokens, text) in list(self.rows.items()):
            piece = next(pieces, None)
            if piece is not None:
                text.append(piece)
            done = piece is None
            n = len(self.gen.tokenizer.encode("".join(text), add_special_tokens=False).ids)
            finish = None
            if done:
                limit = job.max_tokens or int(self.gen.dir.generation.get("max_new_tokens", 100))
                finish = "length" if n >= limit else "stop"
                del self.rows[key]
            out.append(Event(key, piece or "", finish, prompt_tokens, n))
        return out
