"""Torch-free decoding runtime: onnxruntime + numpy + tokenizers over an exported lmforge model directory.

    from lmforge.runtime import Generator
    gen = Generator("artifacts/runs/<run>/model")
    print(gen.generate("Why", max_new_tokens=60, temperature=0.8, top_k=40, seed=0))
"""
from lmforge.runtime.batch import BatchSession
from lmforge.runtime.errors import ModelDirError, RequestError, RuntimeInputError
from lmforge.runtime.generator import Generator
from lmforge.runtime.limits import ServingLimits
from lmforge.runtime.modeldir import read_model_dir
from lmforge.runtime.requests import RowEvent, RowRequest
from lmforge.runtime.sampling import SamplingParams

__all__ = ["BatchSession", "Generator", "ModelDirError", "RequestError", "RowEvent", "RowRequest",
           "RuntimeInputError", "SamplingParams", "ServingLimits", "read_model_dir"]
