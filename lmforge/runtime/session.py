"""onnxruntime sessions: pick CUDA when it is available *and* actually loads, else CPU, and report the
provider that really runs (onnxruntime-gpu lists CUDA even when its libraries are missing)."""
from __future__ import annotations

import logging
import threading

import onnxruntime as ort

from lmforge.runtime.errors import RequestError

log = logging.getLogger("lmforge.runtime")
_cuda_loads: bool | None = None  # probed once per process
_probe_lock = threading.Lock()


def _session(path: str, opts: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    return ort.InferenceSession(path, sess_options=opts, providers=providers)


def create_session(path: str, device: str = "auto", threads: int | None = None,
                   stop_spinning: bool = False) -> tuple[ort.InferenceSession, str]:
    """Return (session, provider actually used). device: auto | cpu | cuda. stop_spinning: the intra-op threads
    stop spinning when a run ends (they still spin inside it; `session.force_spinning_stop`): for sessions that
    take turns, whose idle threads would otherwise spin on for a while and take the cores from the next one's run.
    A generator's step and rows graphs take turns in a batch that speculates (Generator.batch_lookahead): 8
    alternations of a step and a 5-token call took 2.2x their sum with spinning on, 1.06x with it stopped
    (benchmarks/spinning.py); a session stepping alone measured 1.41 against 1.47 ms, so it stays on otherwise."""
    global _cuda_loads
    if device not in ("auto", "cpu", "cuda"):
        raise RequestError(f"device must be auto, cpu or cuda, got {device!r}",
                           hint="pass device 'auto' (CUDA when onnxruntime has it, else the CPU), 'cpu' or 'cuda'")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if stop_spinning:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    cpu = ["CPUExecutionProvider"]
    want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
    if want_cuda and _cuda_loads is not False:
        with _probe_lock:
            ort.set_default_logger_severity(4)  # a missing CUDA library is reported by us, once, not as an error dump
            try:
                # use_tf32=0: float32 graphs run in float32 (the export's checks against torch hold on the GPU)
                session = _session(path, opts, [("CUDAExecutionProvider", {"use_tf32": "0"}), *cpu])
            finally:
                ort.set_default_logger_severity(2)
            _cuda_loads = session.get_providers()[0] == "CUDAExecutionProvider"
        if _cuda_loads:
            return session, "CUDAExecutionProvider"
    if device == "cuda":
        log.warning("CUDA was requested but onnxruntime cannot load it here; running on CPUExecutionProvider")
    session = _session(path, opts, cpu)
    return session, session.get_providers()[0]
