"""The HTTP side of `lmforge serve-model`, as a LitServe spec (LitServe's OpenAISpec serves chat completions only):
`POST /v1/completions` (JSON, or server-sent events with `stream: true`), `GET /v1/models` and `GET /metrics`.

A request is checked here (lmforge.serving.protocol: 400 naming the field or limit) before it is queued; the
worker's first message for it is awaited before any status is sent, so a request the runtime refuses is a 400
too, streamed or not. A client that goes away mid-stream frees its row in the worker."""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from lmforge.serving import protocol
from lmforge.serving.metrics import Metrics
from lmforge.serving.protocol import BadRequest, Limits

log = logging.getLogger("lmforge.serving")


class CompletionsSpec(LitSpec):
    def __init__(self, model: str, limits: Limits, created: int | None = None, info: dict | None = None):
        super().__init__()
        self.api_path = "/v1/completions"
        self.model, self.limits, self.info = model, limits, info or {}
        self.created = int(created or time.time())
        self._metrics: Metrics | None = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_metrics"] = None  # a prometheus registry holds locks: made again where it is used
        return state

    @property
    def stream(self) -> bool:
        return True

    @property
    def metrics(self) -> Metrics:
        if self._metrics is None:
            self._metrics = Metrics()
        return self._metrics

    def pre_setup(self, lit_api) -> None:
        self.add_endpoint(self.api_path, self.completions, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/metrics", self.metrics_endpoint, ["GET"])

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    # -- endpoints ----------------------------------------------------------------------------------------------
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": self.created,
                                            "owned_by": "lmforge", **self.info}]}

    async def metrics_endpoint(self) -> Response:
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    async def _read(self, request: Request):
        """The request's parsed completion, or the JSONResponse that refuses it (bad JSON or fields: 400; the
        queue full: 503 with Retry-After)."""
        try:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequest(f"the request body is not valid JSON: {exc}") from None
            req = protocol.parse_completion(body, self.model)
            if self.limits.max_queue and self.metrics.waiting >= self.limits.max_queue:
                raise BadRequest(f"{self.metrics.waiting} requests are waiting for a first token, this server's "
                                 f"limit (--max-queue): retry later", status=503, code="max_queue")
            return req
        except BadRequest as exc:
            self.metrics.refused(exc.status)
            return JSONResponse(exc.body(), status_code=exc.status,
                                headers={"Retry-After": "1"} if exc.status == 503 else None)

    async def completions(self, request: Request) -> Response:
        started = time.perf_counter()
        req = await self._read(request)
        if isinstance(req, Response):
            return req
        uid = str(uuid.uuid4())
        queue, event = self._submit(uid, req)
        self.metrics.accepted()
        messages = self._messages(queue, event)
        try:
            first = await anext(messages)
        except BaseException:
            self._cancel(uid)
            self.metrics.finished(started, None, failed=True)
            raise
        if "error" in first:  # the runtime refused the request (a limit, a parameter): nothing was generated
            self.response_buffer.pop(uid, None)
            self.metrics.finished(started, None, failed=True, status=400)
            return JSONResponse(protocol.refused(first["error"]).body(), status_code=400)
        ttft = time.perf_counter() - started
        self.metrics.first_token(ttft)
        cid = protocol.completion_id()
        if req.stream:
            return StreamingResponse(self._sse(uid, cid, req, first=first, messages=messages, started=started,
                                               ttft=ttft), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, last = [first["text"]], first
        self.metrics.tokens(first["completion_tokens"])
        try:
            async for msg in messages:
                text.append(msg["text"])
                self.metrics.tokens(msg["completion_tokens"] - last["completion_tokens"])
                last = msg
        except BaseException:
            self._cancel(uid)
            self.metrics.finished(started, ttft, failed=True)
            raise
        finally:
            self.response_buffer.pop(uid, None)
        self.metrics.finished(started, ttft)
        return JSONResponse(protocol.completion(cid, self.model, "".join(text), last["finish"],
                                                protocol.usage(last["prompt_tokens"], last["completion_tokens"])))

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _submit(self, uid: str, req) -> tuple:
        queue, event = deque(), asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=queue, event=event)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), req.request))
        return queue, event

    def _cancel(self, uid: str) -> None:
        """Tell the worker to drop the row of a request nobody reads any more."""
        if self.response_buffer.pop(uid, None) is not None:
            self.request_queue.put((self.response_queue_id, str(uuid.uuid4()), time.monotonic(), {"cancel": uid}))

    async def _messages(self, queue, event):
        """The worker's dicts for one request, until its final one (LitServe's data_streamer, decoded)."""
        async for data, status in self.data_streamer(queue, event, send_status=True):
            if status == LitAPIStatus.ERROR:
                # LitServe pickles the worker's exception; lmforge unpickles nothing (tests/test_hostile.py): the
                # worker logs it, the client gets a 500
                raise RuntimeError("the inference worker failed (its traceback is in the server's log)")
            msg = json.loads(data)
            yield msg
            if msg.get("finish") is not None or "error" in msg:
                return

    async def _sse(self, uid, cid, req, *, first, messages, started, ttft):
        created, n, done, status = int(time.time()), 0, False, 499  # 499: the client went away
        msg = first
        try:
            while True:
                self.metrics.tokens(msg["completion_tokens"] - n)
                n = msg["completion_tokens"]
                if msg["text"] or msg["finish"] is not None:
                    yield protocol.chunk(cid, self.model, created, msg["text"], finish=msg["finish"])
                if msg["finish"] is not None:
                    break
                msg = await anext(messages)
            if req.include_usage:
                yield protocol.chunk(cid, self.model, created, "",
                                     usage=protocol.usage(msg["prompt_tokens"], msg["completion_tokens"]), choices=False)
            yield protocol.SSE_DONE
            done = True
        except Exception as exc:  # noqa: BLE001 - the status line is sent: the error goes in the stream
            log.error("stream %s failed: %s", uid, exc)
            status = 500
            yield "data: " + json.dumps(BadRequest(str(exc), status=500, code="server_error").body()) + "\n\n"
        finally:
            if not done:
                self._cancel(uid)
            self.response_buffer.pop(uid, None)
            self.metrics.finished(started, ttft, failed=not done, status=None if done else status)
