"""Fetch one URL into a local cache: resumable (HTTP Range, guarded by If-Range), retried, size-capped,
time-capped, sha256-verified, landed atomically. A cached copy is used again when data.sha256 pins it, or after a
conditional GET (its saved ETag / Last-Modified) answers 304: a URL that serves new content under the same name is
downloaded again, so a nightly run sees the new data. One process at a time fetches a URL into a cache (a lock file
per URL under `.locks/`), so the `.part` file belongs to one writer. Every connection, each redirect hop included,
goes through the operator's policy (lmforge.core.policy): the URL must be allowed, and the address connected to
must be public unless the policy allows more. Credentials in the URL's userinfo are sent as HTTP Basic auth (to the
URL's own origin only) and the URL is redacted (lmforge.core.redact) in every log line and error message."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
import weakref
from urllib.parse import unquote, urljoin, urlparse

from lmforge.core.atomic import write_json_atomic
from lmforge.core.errors import LmforgeError
from lmforge.core.locks import hold
from lmforge.core.policy import Policy, PolicyError, load as load_policy
from lmforge.core.redact import redact_text, redact_url, split_credentials

log = logging.getLogger("lmforge.download")

CHUNK = 1 << 20
_HINT = "check the URL or point data.source at a local copy"
_SIZE_HINT = "raise data.max_bytes (--set data.max_bytes=BYTES, up to the operator's ceiling) if this file is expected"


class DownloadError(LmforgeError):
    """A URL could not be fetched, or what arrived was not what was asked for."""


class _Transient(Exception):
    """A failure worth retrying (dropped connection, timeout, 5xx, 429); keeps any partial file."""


def cache_path(url: str, cache_dir: Path) -> Path:
    """Where `url` is cached: a hash of the whole URL (unique) plus its sanitised basename (readable), which can
    neither climb out of cache_dir nor hide. download() names the file after `configured`, the URL before
    ${NAME} expansion, so no expanded secret reaches the file name."""
    name = unquote(Path(urlparse(url).path).name)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:100] or "download"
    return Path(cache_dir) / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"


def download(url: str, cache_dir: Path, *, sha256: str | None = None, max_bytes: int | None = None,
             retries: int = 4, backoff: float = 0.5, timeout: float = 30.0, progress: bool = True,
             configured: str | None = None, policy: Policy | None = None, max_seconds: float | None = None) -> Path:
    """Return a local path holding the body of `url`, downloading it unless it is already cached.

    Transient failures are retried `retries` times with exponential backoff, resuming from the bytes
    already received; the file appears at its cache path only once complete and verified. `configured`
    (default: `url`) is the URL as configured, before lmforge.data.sources expanded its ${NAME} references: it
    names the cache file, and it (redacted) is what log lines and errors show, so no expanded value appears.
    `policy` (default: the one in this process's environment) decides which URLs and addresses every hop may
    reach; `max_bytes` and `max_seconds` (default: its ceilings) bound the body and the whole download.
    One process at a time downloads a URL into a cache (a lock file per URL): a second waits, then finds it cached.
    """
    policy = policy or load_policy()
    shown = redact_url(configured or url)
    if urlparse(url).scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {shown!r}: only http:// and https:// URLs are supported",
                            hint="use an http(s) URL, or point data.source at a local file")
    policy.check_url(url, shown=configured or url)
    target = cache_path(configured or url, cache_dir)
    clock = _Clock(max_seconds or policy.ceiling("data.max_seconds"), shown)
    fetch = _Fetch(url, shown, target.parent / (target.name + ".part"), sha256=sha256.lower() if sha256 else None,
                   max_bytes=max_bytes or int(policy.ceiling("data.max_bytes")), timeout=timeout, policy=policy,
                   clock=clock)
    with hold(target.parent / ".locks" / (target.name + ".lock"), f"the download of {shown}", logger=log):
        with clock:  # the deadline starts once this process holds the URL's lock
            if _cached(fetch, target):
                return target
            target.parent.mkdir(parents=True, exist_ok=True)
            _fetch_with_retries(fetch, retries, backoff, _Progress(shown, progress))
            return _land(fetch, target)


def _validator_path(target: Path) -> Path:
    return target.with_name(target.name + ".validator")  # the cached copy's ETag / Last-Modified


def _cached(fetch: _Fetch, target: Path) -> bool:
    """Whether the cached copy can be used: pinned and matching its sha256, or the server says it is unchanged
    (or cannot be asked). Otherwise the copy is removed."""
    kept = _validator_path(target)
    if not target.is_file():
        return False
    if fetch.sha256 is not None:  # pinned: the content cannot change, so the copy is checked, not the server
        if _sha256_file(target) == fetch.sha256:
            log.debug("cache hit for %s: %s", fetch.shown, target)
            return True
        log.warning("cached %s does not match its sha256; downloading again", target)
    else:  # a URL may serve new content under the same name (a nightly source): ask the server
        unchanged = fetch.unchanged_since(_read_json(kept))
        if unchanged is not False:
            if unchanged is None:
                log.warning("could not ask %s whether it changed; using the copy cached at %s", fetch.shown,
                            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(target.stat().st_mtime)))
            return True
        log.info("%s changed since it was cached; downloading it again", fetch.shown)
    target.unlink()
    kept.unlink(missing_ok=True)
    return False


def _fetch_with_retries(fetch: _Fetch, retries: int, backoff: float, bar: _Progress) -> None:
    """Attempts until one completes; a definite answer (4xx, too big, refused, past the deadline) stops at once
    and removes the partial file, while transient failures keep it for the next attempt (or the next run)."""
    try:
        for attempt in range(max(retries, 0) + 1):
            if attempt:
                fetch.clock.sleep(backoff * 2 ** (attempt - 1))
            try:
                fetch.attempt(bar)
                return
            except _Transient as e:
                error = e
                fetch.clock.check()
                log.warning("download of %s, attempt %d of %d: %s", fetch.shown, attempt + 1, retries + 1, e)
            except LmforgeError:
                fetch.discard()
                raise
        raise DownloadError(f"download of {fetch.shown} failed after {retries + 1} attempts: {error}",
                            hint="check the network, or point data.source at a local copy")
    finally:
        bar.close()


def _land(fetch: _Fetch, target: Path) -> Path:
    """The verified `.part` renamed to the cache path, with the validator kept to ask the server next time."""
    if fetch.sha256 is not None and (actual := _sha256_file(fetch.part)) != fetch.sha256:
        fetch.discard()
        raise DownloadError(f"download of {fetch.shown} is corrupt: sha256 {actual}, expected {fetch.sha256}",
                            hint="the file changed upstream or the expected sha256 is wrong")
    os.replace(fetch.part, target)
    saved = _read_json(fetch.validator_file)
    if saved.get("etag") or saved.get("last_modified"):
        os.replace(fetch.validator_file, _validator_path(target))
    fetch.validator_file.unlink(missing_ok=True)
    log.info("downloaded %s -> %s (%d bytes)", fetch.shown, target, target.stat().st_size)
    return target


class _Clock:
    """The whole download's deadline (data.max_seconds): checked between reads, bounding each socket timeout, and
    enforced by a timer that shuts down every open connection when it passes, so a server that trickles its
    headers or body (a byte every few seconds, each read within the timeout) ends with one error line."""

    def __init__(self, seconds: float, shown: str):
        self.seconds, self.shown = seconds, shown
        self.end = time.monotonic() + seconds
        self.connections: weakref.WeakSet = weakref.WeakSet()
        self.expired = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> _Clock:
        self.end = time.monotonic() + self.seconds
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.expired or self.remaining() <= 0:
            raise DownloadError(f"download of {self.shown} took longer than data.max_seconds={self.seconds:g}",
                                hint="the server is too slow or trickles its bytes; raise data.max_seconds (up to "
                                     "the operator's ceiling) or point data.source at a local copy")

    def timeout(self, timeout: float) -> float:
        self.check()
        return max(min(timeout, self.remaining()), 0.01)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(min(seconds, self.remaining()), 0))
        self.check()

    def watch(self, connection: http.client.HTTPConnection) -> None:
        self.connections.add(connection)
        if self.expired:
            self._expire()

    def _expire(self) -> None:
        self.expired = True
        for connection in list(self.connections):
            sock = connection.sock
            if sock is not None:
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # wakes a blocked read, TLS or not
                except OSError:
                    pass


class _Fetch:
    """The attempts at one URL into one `.part` file (its writer holds the URL's lock).

    Resuming is only safe when the bytes already in `.part` and the rest the server sends now belong to the same
    version of the file. So the first response's validator (ETag, else Last-Modified) and length are saved
    beside the `.part` (`.part.validator`, JSON) before its body is written, and a resume sends `If-Range` with
    it: a server answers 206 (the rest) only while the file is unchanged, and 200 (the whole new file) otherwise,
    which is written from zero. A 206 whose ETag or total length differs from the saved ones (a server that
    ignores If-Range) also restarts from zero. Without any validator the resume trusts the server: pin
    data.sha256 for such sources."""

    def __init__(self, url: str, shown: str, part: Path, *, sha256: str | None, max_bytes: int, timeout: float,
                 policy: Policy, clock: _Clock):
        self.shown = shown
        self.url, self.auth = split_credentials(url)
        self.part, self.sha256, self.max_bytes, self.timeout = part, sha256, max_bytes, timeout
        self.clock = clock
        self.validator_file = part.with_name(part.name + ".validator")
        self.opener = _opener(policy, clock, shown)

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.validator_file.unlink(missing_ok=True)

    def _saved_validator(self) -> dict:
        return _read_json(self.validator_file)

    def _request(self, headers: dict) -> urllib.request.Request:
        req = urllib.request.Request(self.url, headers={"User-Agent": "lmforge", "Accept-Encoding": "identity",
                                                        **headers})
        if self.auth:
            req.add_unredirected_header("Authorization", self.auth)  # _PolicyRedirects re-adds it same-origin
        return req

    def unchanged_since(self, saved: dict) -> bool | None:
        """Ask the server whether the file is still the version `saved` names (a conditional GET: If-None-Match /
        If-Modified-Since). True: 304, unchanged; False: changed, or no validator to ask with (the server sent
        none), so only a new download can tell; None: the server could not be reached or answered with an error."""
        headers = {}
        if saved.get("etag"):
            headers["If-None-Match"] = saved["etag"]
        if saved.get("last_modified"):
            headers["If-Modified-Since"] = saved["last_modified"]
        if not headers:
            return False
        try:
            with self.opener.open(self._request(headers), timeout=self.clock.timeout(self.timeout)) as resp:
                return bool(saved.get("etag") and resp.headers.get("ETag") == saved["etag"])  # body not read
        except urllib.error.HTTPError as e:
            e.close()
            return True if e.code == 304 else None
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            return None

    def attempt(self, bar: _Progress) -> None:
        """One request for the rest of the file after the bytes already in `.part`, appended and fsynced; once
        more from zero when what is in `.part` turns out to belong to another version."""
        for _ in range(2):
            try:
                return self._attempt_once(bar)
            except _Restart:
                self.discard()
        raise _Transient("the server's answers to a resumed download keep changing")

    def _attempt_once(self, bar: _Progress) -> None:
        have = self.part.stat().st_size if self.part.exists() else 0
        saved = self._saved_validator() if have else {}
        resp = self._open(have, saved)
        if resp is None:  # 416 and the .part is already complete
            return
        with resp:
            if resp.status == 206 and have:
                self._check_resume(resp.headers, have, saved)
                mode = "ab"
            else:  # 200: the whole body, from zero (no Range asked, Range ignored, or If-Range: the file changed)
                have, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            expected = have + int(length) if length and length.isdigit() else None
            if expected is not None and expected > self.max_bytes:
                raise DownloadError(f"download of {self.shown} is {expected} bytes, over the limit of "
                                    f"{self.max_bytes}", hint=_SIZE_HINT)
            if mode == "wb" or not saved:
                self._save_validator(resp.headers, expected)
            have = self._receive(resp, have, mode, bar, expected)
        if expected is not None and have < expected:
            raise _Transient(f"connection closed after {have} of {expected} bytes")

    def _open(self, have: int, saved: dict):
        """The response to a request for the bytes from `have` on; None when a 416 says `.part` is complete."""
        headers = {}
        if have:
            headers["Range"] = f"bytes={have}-"
            etag = saved.get("etag") or ""
            if_range = etag if etag and not etag.startswith("W/") else saved.get("last_modified")  # strong only
            if if_range:
                headers["If-Range"] = if_range
        try:
            return self.opener.open(self._request(headers), timeout=self.clock.timeout(self.timeout))
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 416 and have:  # we asked for bytes past the end: complete already, or stale
                m = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range", ""))
                if (int(m.group(1)) == have) if m else _sha256_file(self.part) == self.sha256:
                    return None
                raise _Restart() from None
            if e.code == 429 or e.code >= 500:
                raise _Transient(f"HTTP {e.code} {e.reason}") from None
            raise DownloadError(f"download of {self.shown} failed: HTTP {e.code} {redact_text(str(e.reason))}",
                                hint=_HINT) from None
        except PolicyError as e:  # an address or a redirect the operator's policy does not allow
            raise DownloadError(f"download of {self.shown} refused: {e.message}", hint=e.hint) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            self.clock.check()
            reason = getattr(e, "reason", e)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise DownloadError(f"download of {self.shown} failed: {reason}", hint=_HINT) from None
            raise _Transient(redact_text(f"{type(reason).__name__}: {reason}")) from None

    def _check_resume(self, headers, have: int, saved: dict) -> None:
        if not headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            self.discard()
            raise _Transient(f"server sent range {headers.get('Content-Range')!r}, not bytes {have}-")
        if self._changed(saved, headers):
            log.warning("%s changed since the partial download began; starting again from zero", self.shown)
            raise _Restart()

    def _receive(self, resp, have: int, mode: str, bar: _Progress, expected: int | None) -> int:
        """The body into `.part` (appended or from zero), each read counted against data.max_bytes before it
        lands and against the deadline; returns the bytes now in `.part`."""
        bar.update(have, expected)
        with open(self.part, mode) as f:
            try:
                while chunk := resp.read1(CHUNK):  # one recv at most: a trickle cannot hold a read past the clock
                    if have + len(chunk) > self.max_bytes:
                        raise DownloadError(f"download of {self.shown} exceeded the limit of {self.max_bytes} bytes",
                                            hint=_SIZE_HINT)
                    f.write(chunk)
                    have += len(chunk)
                    bar.update(have, expected)
                    self.clock.check()
            except (OSError, http.client.HTTPException) as e:
                self.clock.check()
                raise _Transient(f"connection lost after {have} bytes: {type(e).__name__}: {e}") from None
            finally:
                f.flush()
                os.fsync(f.fileno())
        self.clock.check()
        return have

    def _save_validator(self, headers, length: int | None) -> None:
        total = re.fullmatch(r"bytes \d+-\d+/(\d+)", headers.get("Content-Range", ""))
        write_json_atomic(self.validator_file, {"etag": headers.get("ETag"),
                                                "last_modified": headers.get("Last-Modified"),
                                                "length": int(total.group(1)) if total else length})

    @staticmethod
    def _changed(saved: dict, headers) -> bool:
        """True when a 206 answer names another version than the one the `.part` began with."""
        etag = headers.get("ETag")
        if saved.get("etag") and etag and etag != saved["etag"]:
            return True
        total = re.fullmatch(r"bytes \d+-\d+/(\d+)", headers.get("Content-Range", ""))
        return bool(saved.get("length") and total and int(total.group(1)) != saved["length"])


class _Restart(Exception):
    """What is in `.part` belongs to another version of the file: start again from zero."""


def _opener(policy: Policy, clock: _Clock, shown: str) -> urllib.request.OpenerDirector:
    """urllib with every connection made through policy.connect (each address checked before it is connected to,
    each connection watched by the clock) and every redirect hop checked against the policy."""

    def guarded(base: type) -> type:
        class Guarded(base):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                self._create_connection = lambda address, timeout=None, source_address=None: policy.connect(
                    address[0], address[1], timeout, source_address)
                clock.watch(self)
                super().connect()
        return Guarded

    http_conn, https_conn = guarded(http.client.HTTPConnection), guarded(http.client.HTTPSConnection)

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_conn, req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_conn, req, context=self._context)

    return urllib.request.build_opener(Http(), Https(), _PolicyRedirects(shown, policy))


class _PolicyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib also follows ftp://) and to URLs the operator's policy allows,
    checked at every hop (its addresses are checked as each connection is made); send the Authorization header
    again only when the redirect stays on the same scheme, host and port: credentials never travel to another
    origin."""

    def __init__(self, shown: str, policy: Policy):
        self.shown, self.policy = shown, policy

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("Location") or headers.get("URI")
        if location:
            new = urljoin(req.full_url, location)
            if urlparse(new).scheme not in ("http", "https"):
                fp.close()
                raise DownloadError(f"download of {self.shown} was redirected to {redact_url(location)!r}: only "
                                    "http:// and https:// redirects are followed", hint=_HINT)
            try:
                self.policy.check_url(new, key="a redirect")
            except PolicyError as e:
                fp.close()
                raise DownloadError(f"download of {self.shown} refused: {e.message}", hint=e.hint) from None
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and _origin(newurl) == _origin(req.full_url):
            new.add_unredirected_header("Authorization", auth)
        return new


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _origin(url: str) -> tuple:
    u = urlparse(url)
    return u.scheme, u.hostname, u.port or {"http": 80, "https": 443}.get(u.scheme)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Progress:
    """A rich bar on an interactive terminal outside CI; otherwise a log line at start, every ~10%, and end.
    `url` is the redacted URL: this is what gets shown."""

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
