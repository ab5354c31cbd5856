"""The inference worker of `lmforge serve-model`: a LitServe LitAPI that loads the model once (lmforge.runtime
Generator) and a LitServe continuous-batching loop that admits requests between decode steps.

LitServe runs this in its own process; the HTTP side (lmforge.serving.spec) puts each checked request on
LitServe's request queue and reads back, per request, the dicts `step()` makes: {"text", "finish",
"prompt_tokens", "completion_tokens"} while decoding, or {"error"} for a request the runtime refused. A request
whose client went away arrives as {"cancel": key} and frees its row."""
from __future__ import annotations

import asyncio
import logging
import os

import litserve as ls
from litserve.loops.continuous_batching_loop import ContinuousBatchingLoop, Output
from litserve.utils import LitAPIStatus, LoopResponseType

from lmforge.serving.engine import Engine

log = logging.getLogger("lmforge.serving")


class CompletionAPI(ls.LitAPI):
    def __init__(self, model_dir: str, *, variant: str = "fp32", device: str = "auto", threads: int | None = None,
                 max_batch: int = 16, limits: dict | None = None, flush_s: float = 0.02, spec=None,
                 lookahead: int | None = None, batch_lookahead: bool = False, log_level: str = "warning"):
        super().__init__(max_batch_size=max_batch, stream=True, spec=spec, loop=RowLoop())
        self.model_dir, self.variant, self.device_name, self.threads = model_dir, variant, device, threads
        self.limits, self.flush_s, self.lookahead, self.batch_lookahead = limits, flush_s, lookahead, batch_lookahead
        self.log_level = log_level

    def setup(self, device) -> None:
        from lmforge.runtime import Generator

        if not log.handlers:  # this process's lines on its stderr (the server's), at serve-model's --log-level
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
            log.addHandler(handler)
        log.setLevel(self.log_level.upper())

        self.gen = Generator(self.model_dir, variant=self.variant, device=self.device_name, threads=self.threads,
                             limits=self.limits, lookahead=self.lookahead, batch_lookahead=self.batch_lookahead)
        self.engine = self.new_engine()
        log.info("worker %d: %s on %s (%s, lookahead %d, batch of %d, speculating together: %s)", os.getpid(),
                 self.model_dir, self.gen.provider, self.variant, self.gen.lookahead, self.max_batch_size,
                 "yes" if self.gen.rows_graph == self.max_batch_size else "no")

    def new_engine(self) -> Engine:
        from lmforge.runtime import BatchSession

        return Engine(BatchSession(self.gen, slots=self.max_batch_size), self.flush_s)

    # -- LitServe's continuous-batching hooks -------------------------------------------------------------------
    def add_request(self, uid: str, request: dict) -> None:
        from lmforge.runtime import RowRequest

        if "cancel" in request:
            self.engine.cancel(request["cancel"])
            return
        self.engine.submit(uid, RowRequest(**request))

    def has_capacity(self) -> bool:  # the scheduler queues what the batch cannot take yet
        return True

    def has_active_requests(self) -> bool:
        return self.engine.busy()

    def step(self, prev_outputs) -> list[Output]:
        out = []
        for ev in self.engine.step():
            if ev.error is not None:
                out.append(Output(ev.key, {"error": ev.error}, LitAPIStatus.OK))
                out.append(Output(ev.key, None, LitAPIStatus.FINISH_STREAMING))
                continue
            out.append(Output(ev.key, {"text": ev.text, "finish": ev.finish, "prompt_tokens": ev.prompt_tokens,
                                       "completion_tokens": ev.completion_tokens}, LitAPIStatus.OK))
            if ev.finish is not None:
                out.append(Output(ev.key, None, LitAPIStatus.FINISH_STREAMING))
        return out

    def encode_response(self, output):
        return output

    def predict(self, *args, **kwargs):  # LitServe's loop calls step(); predict is never used
        raise NotImplementedError


class RowLoop(ContinuousBatchingLoop):
    """LitServe's ContinuousBatchingLoop with three changes: it sleeps while there is no work (the stock loop
    spins a core at 100% when idle), a step that yields no text (a character still incomplete) is not followed
    by a 10 ms pause, and nothing is put on the wire for a key the HTTP side no longer waits for."""

    def __init__(self):
        super().__init__()
        self.wake: asyncio.Event | None = None

    def add_request(self, uid, request, lit_api, lit_spec, transport=None) -> None:
        lit_api.add_request(uid, request)
        if "cancel" in request:  # nothing is ever sent for a cancel message
            self.response_queue_ids.pop(uid, None)
        else:
            self.active_sequences[uid] = True
        if self.wake is not None:
            self.wake.set()

    def mark_completed(self, uid: str) -> None:
        self.active_sequences.pop(uid, None)
        self.response_queue_ids.pop(uid, None)

    async def run(self, lit_api, device, worker_id, request_queue, transport, workers_setup_status,  # LitLoop's
                  callback_runner):
        if self.wake is None:
            self.wake = asyncio.Event()
        if not lit_api.has_active_requests():
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), 0.5)
            except asyncio.TimeoutError:
                return
        try:
            while lit_api.has_active_requests():
                for out in await asyncio.to_thread(lit_api.step, None):
                    queue_id = self.response_queue_ids.get(out.uid)
                    if queue_id is None:
                        continue
                    if out.status == LitAPIStatus.FINISH_STREAMING:
                        self.put_response(transport, queue_id, out.uid, "", out.status, LoopResponseType.STREAMING)
                        self.mark_completed(out.uid)
                    else:
                        self.put_response(transport, queue_id, out.uid, lit_api.format_encoded_response(out.output),
                                          out.status, LoopResponseType.STREAMING)
        except Exception as exc:  # noqa: BLE001 - a bug in decoding fails the requests in flight, not the worker
            log.exception("decoding failed: %s", exc)
            for uid, queue_id in list(self.response_queue_ids.items()):
                self.put_error_response(transport, queue_id, uid, exc, LoopResponseType.STREAMING)
            self.response_queue_ids.clear()
            self.active_sequences.clear()
            lit_api.engine = lit_api.new_engine()
