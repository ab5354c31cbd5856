"""`lmforge serve-model`: an exported model directory behind LitServe (docs/serving.md). One HTTP process
(uvicorn, lmforge.serving.spec) and one inference worker (lmforge.serving.worker) that decodes every request in
flight as one batch; LitServe's process manager, request queue and ZeroMQ transport in between.

    GET  /health           200 "ok" once the model is loaded (the readiness probe), 503 before
    GET  /v1/models        the served model
    POST /v1/completions   OpenAI completions, streamed (server-sent events) or not
    GET  /metrics          Prometheus text"""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from lmforge.core.errors import LmforgeError
from lmforge.serving.protocol import Limits

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds
MAX_BATCH = 16
FAST_QUEUE = False  # LitServe's multiprocessing queues: faster than its ZeroMQ broker here (serve_libraries.py)


def check_model(model_dir: str | Path, variant: str, device: str, limits: dict | None,
                lookahead: int | None = None, batch_lookahead: bool = False) -> dict:
    """Load the model once here, so that a bad directory or limit is one `error:` line before any process starts;
    returns what GET /v1/models tells about it."""
    from lmforge.runtime import Generator, RequestError, RuntimeInputError

    try:
        gen = Generator(model_dir, variant=variant, device=device, threads=1, limits=limits, lookahead=lookahead,
                        batch_lookahead=batch_lookahead)
    except RequestError as exc:
        if exc.message.startswith("limits."):  # a flag above the model's own limit: flags may only lower them
            raise LmforgeError(exc.message, hint="serving flags may only lower the model's limits (lmforge.json "
                                                 "`limits`)") from None
        raise LmforgeError(exc.message, hint=exc.hint or "check the serve-model flags") from None
    except RuntimeInputError as exc:  # the runtime's hint names the fix (re-export, the variant to use, ...)
        raise LmforgeError(exc.message, hint=exc.hint or "pass an exported model directory or models:/NAME@ALIAS"
                           ) from None
    if batch_lookahead and not gen.rows_graph:
        exported = "rows_graph" in gen.dir.io.get("fast", {})
        why = ("lookahead is 0" if not gen.lookahead else
               f"variant {variant} on {gen.provider} has none" if exported else "the model was exported without it")
        raise LmforgeError(f"--batch-lookahead needs the model's rows graph (model.fast.rows.onnx): {why}",
                           hint="export with `--set export.rows_graph=true` and serve its fp32 variant on the CPU "
                                "with lookahead on, or leave --batch-lookahead out")
    return {"name": str(gen.dir.manifest.get("name") or Path(model_dir).name), "provider": gen.provider,
            "family": gen.dir.model.get("family"), "tokenizer": gen.dir.manifest["tokenizer"].get("kind"),
            "context": None if gen.rnn else gen.block_size, "lookahead": gen.lookahead,
            "batch_lookahead": gen.rows_graph, "limits": dict(vars(gen.limits))}


def build(model_dir: str | Path, *, name: str | None = None, limits: dict | None = None, variant: str = "fp32",
          device: str = "auto", threads: int | None = None, max_batch: int | None = None, max_queue: int = 256,
          flush_ms: float = 20.0, source: str | None = None, lookahead: int | None = None,
          batch_lookahead: bool = False, log_level: str = "warning"):
    """The LitServer for one model directory (not started). limits: the runtime's ServingLimits to lower
    ({name: value}); max_batch: rows decoded together (at most limits.max_batch; None: MAX_BATCH, or the rows
    graph's rows with batch_lookahead); lookahead: the Generator's (None: the model's lmforge.json
    `generation.lookahead`, else the variant's default); batch_lookahead: the Generator's (concurrent greedy rows
    check their drafts in one call of the rows graph, whose rows are then the batch); log_level: the worker's."""
    import litserve as ls

    from lmforge.serving.spec import CompletionsSpec
    from lmforge.serving.worker import CompletionAPI

    limits = {k: v for k, v in (limits or {}).items() if v is not None}
    about = check_model(model_dir, variant, device, limits, lookahead, batch_lookahead)
    rows = about["batch_lookahead"]
    if (rows and max_batch not in (None, rows)) or rows > about["limits"]["max_batch"]:
        raise LmforgeError(f"--batch-lookahead decodes a batch of exactly the rows graph's {rows} rows, not "
                           f"{min(max_batch or rows, about['limits']['max_batch'])}",
                           hint=f"leave --max-batch out (or pass --max-batch {rows}) with --batch-lookahead")
    max_batch = max(1, min(rows or max_batch or MAX_BATCH, about["limits"]["max_batch"]))
    name = name or about["name"]
    http = Limits(max_queue=max_queue,
                  max_body_bytes=8 * about["limits"]["max_prompt_bytes"] + (64 << 10))
    info = {"lmforge": {"source": source or str(model_dir), "variant": variant, **about, "max_batch": max_batch,
                        "max_queue": max_queue}}
    spec = CompletionsSpec(name, http, info=info)
    api = CompletionAPI(str(Path(model_dir).resolve()), variant=variant, device=device, threads=threads,
                        max_batch=max_batch, limits=limits, flush_s=flush_ms / 1e3, spec=spec, lookahead=lookahead,
                        batch_lookahead=batch_lookahead, log_level=log_level)
    return ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=False,
                        max_payload_size=http.max_body_bytes, fast_queue=FAST_QUEUE, model_metadata={"model": name})


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
          **kwargs) -> None:
    """Run until Ctrl-C or SIGTERM (a container's stop), then stop the worker and the HTTP process."""
    if host not in HOSTS:
        raise LmforgeError(f"--host {host} cannot be bound by LitServe",
                           hint="--host 127.0.0.1 (this machine only) or --host 0.0.0.0 (a container or replica)")
    if not 1024 <= port <= 65535:
        raise LmforgeError(f"--port {port} is outside 1024-65535", hint="--port 8000")
    server = build(model_dir, log_level=log_level, **kwargs)

    main_pid = os.getpid()

    def stop(signum, frame):  # SIGTERM as Ctrl-C: LitServe's orderly shutdown of its processes
        if os.getpid() != main_pid:  # a forked child (uvicorn re-raises the signal when it has stopped)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"serving {server.lit_api.spec.model} from {model_dir} on http://{host}:{port}/v1 "
          f"(ready when GET /health answers 200)", file=sys.stderr, flush=True)
    logging.getLogger("litserve").setLevel(log_level.upper())
    server.run(host=host, port=port, log_level=log_level, generate_client_file=False, num_api_servers=1)
