"""ONNX-to-ONNX conversions of an exported graph: dynamic int8 weights, onnxruntime's offline optimisation,
float16. Used by both exports (lmforge.export.modeldir, lmforge.export.genai); onnx and onnxruntime only."""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import onnx

ADVICE = "Please consider to run pre-processing before quantization"  # onnxruntime, on every quantize_* call


class _DropAdvice(logging.Filter):
    """On the root logger: onnxruntime's quantisers' own root-logged lines below WARNING, and ADVICE."""

    def filter(self, record: logging.LogRecord) -> bool:
        mine = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return not (str(record.msg).startswith(ADVICE) or mine and record.levelno < logging.WARNING)


@contextlib.contextmanager
def quiet_quantization():
    """onnxruntime's quantisers, without their chatter in the CLI's output: quantize_dynamic logs ADVICE (shape
    inference pre-processing for static image models, nothing these graphs need) with logging.warning on the root
    logger, and info lines per tensor there too; importing matmul_nbits_quantizer calls
    logging.basicConfig(level=INFO) and logs a line per node. Inside: that advice and their info lines are dropped,
    onnxruntime.quantization logs warnings and up only, and a root handler or level the import installed is
    taken back afterwards. Real warnings and errors still show."""
    root, drop = logging.getLogger(), _DropAdvice()
    ort_log = logging.getLogger("onnxruntime.quantization")
    handlers, root_level, ort_level = list(root.handlers), root.level, ort_log.level
    root.addFilter(drop)
    ort_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeFilter(drop)
        ort_log.setLevel(ort_level)
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(root_level)


def quantize_int8(src: Path, dst: Path) -> Path:
    with quiet_quantization():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # DefaultTensorType: shape inference cannot type the outputs of com.microsoft ops (the fast graph's attention)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return dst


def optimize_graph(src: Path, dst: Path) -> Path:
    """onnxruntime's extended graph optimisations (constant folding, fusions) run once and saved, so sessions
    skip them at load. The saved graph is tied to the execution provider it was optimised for (CPU here)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """Weights and activations in float16 (for the CUDA execution provider); inputs and outputs, including the
    KV cache / recurrent state, stay float32 so the runtime feeds the same arrays as for model.onnx."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values truncated to fp16 range" for masks' large negatives
        model = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
    model.topological_sort()  # the converter appends the input Casts after their consumers
    onnx.save(model.model, str(dst))
    onnx.checker.check_model(str(dst))
    return dst
