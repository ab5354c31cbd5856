"""Acquire a preset's `data.source` as local files: the embedded pyjokes corpus, an HTTP(S) URL, a file,
a directory or an archive. Returns the local path that `formats.read_documents` reads."""
from __future__ import annotations

from pathlib import Path

from lmforge.atomic import write_text_atomic
from lmforge.config import DataConfig
from lmforge.data.archive import ArchiveLimits, extract, is_archive
from lmforge.data.download import download
from lmforge.errors import LmforgeError
from lmforge.safepath import safe_component


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


def acquire(source: str, cache_dir: Path, sha256: str = "", *, archive_limits: ArchiveLimits | None = None) -> Path:
    """Return a local file or directory holding the corpus named by `source`; `archive_limits` bound what an
    archive may extract to (default: ArchiveLimits())."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    if source == "pyjokes":
        return pyjokes_corpus(cache_dir)
    if is_url(source):
        path = download(source, cache_dir / "downloads", sha256=sha256 or None)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise LmforgeError(f"data source {source} does not exist",
                               hint="--set data.source=PATH to a file, directory, archive or http(s) URL")
    if path.is_file() and is_archive(path):
        name = safe_component(path.name.split(".")[0], fallback="archive")  # a local archive's name is anything
        return extract(path, cache_dir / "extracted" / name, archive_limits or ArchiveLimits())
    return path


def acquire_for(data: DataConfig, cache_dir: Path) -> Path:
    """acquire() with the limits of the data config (data.archive_max_*)."""
    return acquire(data.source, cache_dir, data.sha256,
                   archive_limits=ArchiveLimits(data.archive_max_bytes, data.archive_max_members,
                                                data.archive_max_ratio))
