"""The exported model directory (what apps embed): model.onnx (+ model.int8.onnx, model.fp16.onnx),
tokenizer.json and lmforge.json. This module writes and reads lmforge.json and validates the directory."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmforge.core.atomic import write_json_atomic
from lmforge.runtime import onnxwire, schema
from lmforge.runtime.errors import REEXPORT, TAMPERED, ModelDirError
from lmforge.runtime.limits import ServingLimits, model_limits

MANIFEST = "lmforge.json"
FORMAT = "lmforge-model"
FORMAT_VERSION = 1
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx",
                 "optimized": "model.opt.onnx", "fast": "model.fast.onnx", "fast-int8": "model.fast.int8.onnx",
                 "fast-int4": "model.fast.int4.onnx", "fast-fp16": "model.fast.fp16.onnx",
                 "fast-rows": "model.fast.rows.onnx"}
# variant -> its fast graph (lmforge.export.fast), when present; int4 exists only as a fast graph
FAST_VARIANTS = {"fp32": "fast", "int8": "fast-int8", "int4": "fast-int4", "fp16": "fast-fp16"}
# variant -> the export option that writes it (lmforge.core.config.ExportConfig), for a hint
EXPORT_OPTIONS = {"int8": "export.int8", "fast-int8": "export.int8", "fp16": "export.fp16", "fast-fp16": "export.fp16",
                  "int4": "export.int4", "fast-int4": "export.int4",
                  "fast-rows": "export.rows_graph", "optimized": "export.optimize"}




@dataclass
class ModelDir:
    path: Path
    manifest: dict

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def io(self) -> dict:
        return self.manifest["io"]

    @property
    def tokens(self) -> dict:
        return self.manifest["tokens"]

    @property
    def generation(self) -> dict:
        return self.manifest.get("generation", {})

    @property
    def limits(self) -> ServingLimits:
        return model_limits(self.manifest.get("limits"), str(self.path / MANIFEST))

    @property
    def tokenizer_path(self) -> Path:
        return self._inside(self.manifest["tokenizer"]["file"])

    def variants(self) -> list[str]:
        return [v for v, f in self.manifest["files"].items() if self._inside(f, must_exist=False).is_file()]

    def onnx_path(self, variant: str = "fp32") -> Path:
        files = self.manifest["files"]
        if variant not in files:
            option = EXPORT_OPTIONS.get(variant)
            raise ModelDirError(f"{self.path} has no {variant!r} model; it has: {', '.join(files)}",
                                hint="pass one of the variants it has" +
                                     (f", or re-export with --set {option}=true" if option else ""))
        path = self._inside(files[variant])
        for location in external_data_locations(path):
            self._inside(location, named_by=path.name)  # external weights must lie in the directory too
        return path

    def _inside(self, name: str, named_by: str = MANIFEST, must_exist: bool = True) -> Path:
        """Resolve a file named by the manifest, refusing anything outside the directory."""
        root = self.path.resolve()
        try:
            target = (root / name).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
            raise ModelDirError(f"{named_by} names {name!r}, which cannot be resolved: {exc}", hint=TAMPERED) from None
        if root not in target.parents:
            raise ModelDirError(f"{named_by} names {name!r}, which lies outside {self.path}",
                                hint=f"a model's files must lie inside its directory: {TAMPERED}")
        if must_exist and not target.is_file():
            raise ModelDirError(f"{self.path} is missing {name}",
                                hint=f"copy the whole directory again, or {REEXPORT}")
        return target


def external_data_locations(onnx_file: Path) -> list[str]:
    """The files an ONNX model's tensors name as external data, read without loading any data and without the
    `onnx` package (lmforge.runtime.onnxwire walks the protobuf bytes), so the runtime-only install checks them
    too. A cheap byte scan skips the walk for the usual self-contained model: an external-data entry's key is
    the literal string "location", which protobuf stores as those very bytes."""
    import mmap

    if onnx_file.stat().st_size == 0:
        raise ModelDirError(f"{onnx_file} is empty", hint=f"copy the whole directory again, or {REEXPORT}")
    with open(onnx_file, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm.find(b"location") < 0:
            return []
        try:
            return onnxwire.external_data_locations(mm)
        except onnxwire.WireError as exc:
            raise ModelDirError(f"{onnx_file} is not a valid ONNX model: {exc}",
                                hint=f"copy the whole directory again, or {REEXPORT}") from None


def write_manifest(directory: Path, manifest: dict) -> Path:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    return write_json_atomic(Path(directory) / MANIFEST, manifest)


def _load_manifest(file: Path) -> dict:
    """lmforge.json parsed within a size bound; any JSON it cannot be (too big, too deep, not UTF-8, an integer
    of thousands of digits) is one ModelDirError."""
    size = file.stat().st_size
    if size > schema.MAX_MANIFEST_BYTES:
        raise ModelDirError(f"{file} is {size} bytes, over the {schema.MAX_MANIFEST_BYTES} an lmforge.json may be",
                            hint=f"lmforge writes a few KB there: {TAMPERED}")
    try:
        manifest = json.loads(file.read_bytes().decode("utf-8"))
    except RecursionError:
        raise ModelDirError(f"{file} is nested too deeply to be an lmforge.json", hint=TAMPERED) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, int digit limit
        raise ModelDirError(f"{file} is not valid JSON: {str(exc)[:160]}",
                            hint=f"undo the hand edit (`python -m json.tool {file.name}` shows where), or {REEXPORT}"
                            ) from None
    if not isinstance(manifest, dict):
        raise ModelDirError(f"{file} must hold a JSON object, not {type(manifest).__name__}", hint=TAMPERED)
    return manifest


def read_model_dir(directory: str | Path) -> ModelDir:
    """Read and check a model directory's lmforge.json (runtime.schema: types, ranges, token ids, generation
    defaults, serving limits) and that every file it names lies inside the directory, before anything is
    loaded or allocated."""
    path = Path(directory)
    if not (path / MANIFEST).is_file():
        raise ModelDirError(f"{path} is not an lmforge model directory (no {MANIFEST})",
                            hint="pass a run's model/ directory, e.g. artifacts/runs/<run>/model, or "
                                 "models:/NAME@ALIAS")
    manifest = _load_manifest(path / MANIFEST)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(f"{path / MANIFEST} has format {str(manifest.get('format'))[:40]!r} version "
                            f"{str(manifest.get('format_version'))[:20]!r}; "
                            f"this runtime reads {FORMAT} v{FORMAT_VERSION}",
                            hint="re-export the model with this lmforge (`lmforge run`), or install the lmforge "
                                 "that wrote it")
    for key in ("model", "io", "tokens", "tokenizer", "files"):
        if key not in manifest:
            raise ModelDirError(f"{path / MANIFEST} lacks the {key!r} section", hint=TAMPERED)
    schema.check_manifest(manifest, str(path / MANIFEST))
    md = ModelDir(path, manifest)
    md.limits  # noqa: B018 - validates the `limits` section
    for name in [*manifest["files"].values(), *schema.genai_paths(manifest)]:  # loaded or not: all confined
        md._inside(name, must_exist=False)
    tokenizer = md.tokenizer_path  # validates presence and confinement
    if tokenizer.stat().st_size > schema.MAX_TOKENIZER_BYTES:
        raise ModelDirError(f"{tokenizer} is {tokenizer.stat().st_size} bytes, over the "
                            f"{schema.MAX_TOKENIZER_BYTES} a tokenizer.json may be",
                            hint=f"a 250k-token vocabulary takes ~20 MB: {TAMPERED}")
    return md
