"""Acquire a preset's `data.source` as local files: the embedded pyjokes corpus, an HTTP(S) URL, a file,
a directory or an archive. Returns the local path that `formats.read_documents` reads.

The operator's policy (lmforge.core.policy) decides which URLs and local paths a source may name and which
`${NAME}` may be expanded for which host. `${NAME}` in data.source is read from the environment here, at download
time, and only the URL as configured
(with the names, not the values) names the cache file and appears in log lines and errors: a deployment's
credential lives in the worker's environment, never in Prefect's stored parameters or lmforge's logs
(docs/security.md)."""
from __future__ import annotations

import stat
from pathlib import Path

from lmforge.core.atomic import write_text_atomic
from lmforge.core.config import DataConfig
from lmforge.data.detect import is_glob, listing
from lmforge.core.limits import ArchiveLimits
from lmforge.data.archive import extract, is_archive
from lmforge.data.download import download
from lmforge.data.objectstore import acquire_objects, is_object_url
from lmforge.core.errors import LmforgeError
from lmforge.core.policy import Policy, load as load_policy
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


def acquire(source: str, cache_dir: Path, sha256: str = "", *, max_bytes: int | None = None,
            archive_limits: ArchiveLimits | None = None, policy: Policy | None = None,
            max_seconds: float | None = None) -> Path:
    """Return a local file or directory holding the corpus named by `source`, if the operator's `policy` (default:
    the one in this process's environment, for a local run) allows it. `max_bytes` and `max_seconds` bound a
    download (default: the policy's ceilings); `archive_limits` bound what an archive may extract to."""
    policy = policy or load_policy()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if source == "pyjokes":
        return pyjokes_corpus(cache_dir)
    policy.check_source(source)
    location = policy.expand(source, "data.source")  # only the ${NAME}s the operator allows for this host
    if location != source:
        policy.check_source(location, shown=source)  # a value in the path cannot climb out of an allowed prefix
    if is_url(location):
        path = download(location, cache_dir / "downloads", sha256=sha256 or None, max_bytes=max_bytes,
                        configured=source, policy=policy, max_seconds=max_seconds)
    elif is_object_url(location):  # s3:// gs:// az:// hf://, allowed by the policy above: one copy per version
        path = acquire_objects(location, cache_dir, sha256=sha256, configured=source,
                               max_bytes=int(max_bytes or policy.ceiling("data.max_bytes")),
                               deadline_s=float(max_seconds or policy.ceiling("data.max_seconds")))
    elif is_glob(Path(location).expanduser()):  # a glob of local files: each one a regular file (detect.listing)
        path = Path(location).expanduser()
        if not listing(Path("."), str(path)):
            raise LmforgeError(f"no file matches data source {redact_text(source)}",
                               hint="check the pattern; files need a format suffix (.txt .csv .tsv .jsonl .json "
                                    ".parquet .arrow, compressed or not)")
    else:
        path = local_source(Path(location).expanduser(), source)
    if path.is_file() and is_archive(path):
        name = safe_component(path.name.split(".")[0], fallback="archive")  # a local archive's name is anything
        return extract(path, cache_dir / "extracted" / name, archive_limits or ArchiveLimits())
    return path


def local_source(path: Path, source: str) -> Path:
    """`path` when it is a regular file or a directory: a device (/dev/zero), a FIFO or a socket would never end."""
    try:
        mode = path.stat().st_mode
    except OSError:
        raise LmforgeError(f"data source {redact_text(source)} does not exist",
                           hint="--set data.source=PATH to a file, directory, archive or http(s) URL") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise LmforgeError(f"data source {redact_text(source)} is not a regular file or a directory",
                           hint="point data.source at a corpus file, not a device, FIFO or socket")
    return path


def acquire_for(data: DataConfig, cache_dir: Path, policy: Policy | None = None) -> Path:
    """acquire() with the limits of the data config (data.max_bytes, data.max_seconds and data.archive_max_*)."""
    return acquire(data.source, cache_dir, data.sha256, max_bytes=data.max_bytes, max_seconds=data.max_seconds,
                   archive_limits=ArchiveLimits(data.archive_max_bytes, data.archive_max_members,
                                                data.archive_max_ratio), policy=policy)
