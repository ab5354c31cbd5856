"""lmforge: a workflow-orchestrated data-to-model pipeline for small autoregressive language models, and the
torch-free ONNX runtime (lmforge.runtime) that runs what it exports. Importing this package imports nothing else."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lmforge")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"
