"""The exported model directory (what apps embed): model.onnx (+ model.int8.onnx, model.fp16.onnx),
tokenizer.json and lmforge.json. This module writes and reads lmforge.json and validates the directory."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "lmforge.json"
FORMAT = "lmforge-model"
FORMAT_VERSION = 1
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx",
                 "optimized": "model.opt.onnx"}


class ModelDirError(ValueError):
    """The model directory is missing a file or holds an invalid one."""


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
    def tokenizer_path(self) -> Path:
        return self._inside(self.manifest["tokenizer"]["file"])

    def variants(self) -> list[str]:
        return [v for v, f in self.manifest["files"].items() if (self.path / f).is_file()]

    def onnx_path(self, variant: str = "fp32") -> Path:
        files = self.manifest["files"]
        if variant not in files:
            raise ModelDirError(f"{self.path} has no {variant!r} model; it has: {', '.join(files)}")
        return self._inside(files[variant])

    def _inside(self, name: str) -> Path:
        """Resolve a file named by the manifest, refusing anything outside the directory."""
        root = self.path.resolve()
        target = (root / name).resolve()
        if root not in target.parents:
            raise ModelDirError(f"{MANIFEST} names {name!r}, which lies outside {self.path}")
        if not target.is_file():
            raise ModelDirError(f"{self.path} is missing {name}: re-export the model")
        return target


def write_manifest(directory: Path, manifest: dict) -> Path:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    path = Path(directory) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_model_dir(directory: str | Path) -> ModelDir:
    path = Path(directory)
    if not (path / MANIFEST).is_file():
        raise ModelDirError(f"{path} is not an lmforge model directory (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path / MANIFEST} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(f"{path / MANIFEST} has format {manifest.get('format')!r} version "
                            f"{manifest.get('format_version')!r}; this runtime reads {FORMAT} v{FORMAT_VERSION}")
    for key in ("model", "io", "tokens", "tokenizer", "files"):
        if key not in manifest:
            raise ModelDirError(f"{path / MANIFEST} lacks the {key!r} section")
    md = ModelDir(path, manifest)
    md.tokenizer_path  # noqa: B018 - validates presence and confinement
    return md
