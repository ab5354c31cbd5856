"""Fetch one URL into a local cache: resumable (HTTP Range), retried, size-capped, sha256-verified, landed atomically."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from lmforge.errors import LmforgeError

log = logging.getLogger("lmforge.download")

CHUNK = 1 << 20
_HINT = "check the URL or point data.source at a local copy"


class DownloadError(LmforgeError):
    """A URL could not be fetched, or what arrived was not what was asked for."""


class _Transient(Exception):
    """A failure worth retrying (dropped connection, timeout, 5xx, 429); keeps any partial file."""


def cache_path(url: str, cache_dir: Path) -> Path:
    """Where `url` is cached: a hash of the whole URL (unique) plus its sanitised basename (readable)."""
    name = unquote(Path(urlparse(url).path).name)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:100] or "download"
    return Path(cache_dir) / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"


def download(url: str, cache_dir: Path, *, sha256: str | None = None, max_bytes: int | None = None,
             retries: int = 4, backoff: float = 0.5, timeout: float = 30.0, progress: bool = True) -> Path:
    """Return a local path holding the body of `url`, downloading it unless it is already cached.

    Transient failures are retried `retries` times with exponential backoff, resuming from the bytes
    already received; the file appears at its cache path only once complete and verified.
    """
    if urlparse(url).scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url!r}: only http:// and https:// URLs are supported",
                            hint="use an http(s) URL, or point data.source at a local file")
    sha256 = sha256.lower() if sha256 else None
    target = cache_path(url, cache_dir)
    if target.is_file():
        if sha256 is None or _sha256_file(target) == sha256:
            log.debug("cache hit for %s: %s", url, target)
            return target
        log.warning("cached %s does not match its sha256; downloading again", target)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.parent / (target.name + ".part")  # a leftover from an interrupted run is resumed

    bar = _Progress(url, progress)
    try:
        for attempt in range(max(retries, 0) + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                _fetch(url, part, sha256=sha256, max_bytes=max_bytes, timeout=timeout, bar=bar)
                break
            except _Transient as e:
                error = e
                log.warning("download of %s, attempt %d of %d: %s", url, attempt + 1, retries + 1, e)
            except DownloadError:  # a definite answer (4xx, too big): the partial file is worthless
                part.unlink(missing_ok=True)
                raise
        else:  # the .part stays, so the next run resumes where this one stopped
            raise DownloadError(f"download of {url} failed after {retries + 1} attempts: {error}",
                                hint="check the network, or point data.source at a local copy")
    finally:
        bar.close()
    if sha256 is not None and (actual := _sha256_file(part)) != sha256:
        part.unlink()
        raise DownloadError(f"download of {url} is corrupt: sha256 {actual}, expected {sha256}",
                            hint="the file changed upstream or the expected sha256 is wrong")
    os.replace(part, target)
    log.info("downloaded %s -> %s (%d bytes)", url, target, target.stat().st_size)
    return target


def _fetch(url: str, part: Path, *, sha256: str | None, max_bytes: int | None, timeout: float,
           bar: _Progress) -> None:
    """One attempt: request the rest of `url` after the bytes already in `part` and append it, fsynced."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "lmforge", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # we asked for bytes past the end: complete already, or stale
            m = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range", ""))
            if (int(m.group(1)) == have) if m else (sha256 is not None and _sha256_file(part) == sha256):
                return
            part.unlink()
            return _fetch(url, part, sha256=sha256, max_bytes=max_bytes, timeout=timeout, bar=bar)
        if e.code == 429 or e.code >= 500:
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}", hint=_HINT) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise DownloadError(f"download of {url} failed: {reason}", hint=_HINT) from None
        raise _Transient(f"{type(reason).__name__}: {reason}") from None

    with resp:
        if resp.status == 206:
            if not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                part.unlink(missing_ok=True)
                raise _Transient(f"server sent range {resp.headers.get('Content-Range')!r}, not bytes {have}-")
            mode = "ab"
        else:  # 200: the server ignored Range (or none was asked) -> the whole body, from zero
            have, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        expected = have + int(length) if length and length.isdigit() else None
        if max_bytes is not None and expected is not None and expected > max_bytes:
            raise DownloadError(f"download of {url} is {expected} bytes, over the limit of {max_bytes}",
                                hint="raise max_bytes if this file is expected")
        bar.update(have, expected)
        with open(part, mode) as f:
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    have += len(chunk)
                    if max_bytes is not None and have > max_bytes:
                        raise DownloadError(f"download of {url} exceeded the limit of {max_bytes} bytes",
                                            hint="raise max_bytes if this file is expected")
                    bar.update(have, expected)
            except (OSError, http.client.HTTPException) as e:
                raise _Transient(f"connection lost after {have} bytes: {type(e).__name__}: {e}") from None
            finally:
                f.flush()
                os.fsync(f.fileno())
    if expected is not None and have < expected:
        raise _Transient(f"connection closed after {have} of {expected} bytes")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Progress:
    """A rich bar on an interactive terminal outside CI; otherwise a log line at start, every ~10%, and end."""

    def __init__(self, url: str, enabled: bool):
        self.url, self._bar, self._next_pct = url, None, 10
        if enabled and sys.stderr.isatty() and not os.environ.get("CI"):
            try:
                from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                           TimeRemainingColumn, TransferSpeedColumn)
            except ImportError:
                pass
            else:
                self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
                self._task = self._bar.add_task(Path(urlparse(url).path).name or url, total=None)
                self._bar.start()
        if self._bar is None:
            log.info("downloading %s", url)

    def update(self, done: int, total: int | None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
        elif total and done * 100 >= self._next_pct * total and done < total:
            log.info("downloading %s: %d%% (%d of %d bytes)", self.url, done * 100 // total, done, total)
            self._next_pct = done * 100 // total // 10 * 10 + 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
