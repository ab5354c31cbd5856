"""Acquire a preset's `data.source` as local files: the embedded pyjokes corpus, an HTTP(S) URL, a file,
a directory or an archive. Returns the local path that `formats.read_documents` reads.

`${NAME}` in data.source is read from the environment here, at download time, and only the URL as configured
(with the names, not the values) names the cache file and appears in log lines and errors: a deployment's
credential lives in the worker's environment, never in Prefect's stored parameters or lmforge's logs
(docs/security.md)."""
from __future__ import annotations

from pathlib import Path

from lmforge.core.atomic import write_text_atomic
from lmforge.core.config import DataConfig
from lmforge.data.detect import is_glob, listing
from lmforge.core.limits import ArchiveLimits
from lmforge.data.archive import extract, is_archive
from lmforge.data.download import download
from lmforge.data.objectstore import acquire_objects, is_object_url
from lmforge.core.envsubst import expand
from lmforge.core.errors import LmforgeError
from lmforge.core.redact import redact_text
from lmforge.core.safepath import safe_component


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def pyjokes_corpus(cache_dir: Path) -> Path:
    """The one-liners shipped by the `pyjokes` package (English, all categories), one joke per line."""
    from importlib.metadata import version

    import pyjokes

    jokes = [" ".join(j.split()) for j in pyjokes.get_jokes(language="en", category="all")]
    path = cache_dir / f"pyjokes-{version('pyjokes')}.txt"
    if not path.exists():
        write_text_atomic(path, "\n".join(jokes) + "\n")
    return path


def acquire(source: str, cache_dir: Path, sha256: str = "", *, max_bytes: int = DataConfig.max_bytes,
            archive_limits: ArchiveLimits | None = None) -> Path:
    """Return a local file or directory holding the corpus named by `source`. `max_bytes` caps a download
    (0 = no limit); `archive_limits` bound what an archive may extract to (default: ArchiveLimits())."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    if source == "pyjokes":
        return pyjokes_corpus(cache_dir)
    location = expand(source, "data.source")
    if is_url(location):
        path = download(location, cache_dir / "downloads", sha256=sha256 or None, max_bytes=max_bytes or None,
                        configured=source)
    elif is_object_url(location):  # s3:// gs:// az:// hf://: copied once per object version (objectstore.py)
        path = acquire_objects(location, cache_dir, sha256=sha256, max_bytes=max_bytes or None, configured=source)
    else:
        path = Path(location).expanduser()
        if not path.exists() and not (is_glob(path) and listing(Path("."), str(path))):
            raise LmforgeError(f"data source {redact_text(source)} does not exist",
                               hint="--set data.source=PATH to a file, directory, glob, archive, or an http(s) "
                                    "or s3:// gs:// az:// URL")
    if path.is_file() and is_archive(path):
        name = safe_component(path.name.split(".")[0], fallback="archive")  # a local archive's name is anything
        return extract(path, cache_dir / "extracted" / name, archive_limits or ArchiveLimits())
    return path


def acquire_for(data: DataConfig, cache_dir: Path) -> Path:
    """acquire() with the limits of the data config (data.max_bytes and data.archive_max_*)."""
    return acquire(data.source, cache_dir, data.sha256, max_bytes=data.max_bytes,
                   archive_limits=ArchiveLimits(data.archive_max_bytes, data.archive_max_members,
                                                data.archive_max_ratio))
