"""The operator's policy: what a run may reach and what it may cost, set by whoever runs the worker (its
environment), never by whoever triggers a run (config keys, a deployment's `overrides`). docs/security.md.

Standard library only (the lowest layer; lmforge.runtime may read it too). The API:

    pol = load(environ=None, deployment=False)  # the policy in force; `deployment` is decided by the caller
                                                 # (lmforge.tasks: a Prefect deployment run), never in here
    pol.check_source(url_or_path, key="data.source")  # None, or a PolicyError naming the setting that allows it
    pol.expand(text, key="data.source")   # ${NAME} -> its value, only for a NAME the policy allows for the
                                          # URL's host (or `local` for a path); off for every other NAME
    pol.check_address(host, ip)           # an address a connection would reach: public, or allowed
    pol.connect(host, port, timeout)      # a socket to the first allowed address of `host` (every hop)
    pol.ceiling(name)                     # the operator's ceiling on a config key or serving limit
    pol.bounded(name, value)              # value when 0 < value <= ceiling, else one PolicyError

The settings, all optional (an unset one keeps the default):

    LMFORGE_POLICY=/etc/lmforge/policy.toml          # a TOML file with the tables below
    LMFORGE_ALLOWED_SOURCES="https://huggingface.co/datasets/ /srv/corpora"   # replaces the default list
    LMFORGE_ALLOWED_ADDRESSES="loopback 10.0.0.0/8"  # beyond public addresses: loopback, private, link-local, CIDRs
    LMFORGE_ALLOWED_SECRETS="LMFORGE_SOURCE_TOKEN@huggingface.co"   # NAME@host[:port]; NAME@http://host for http
    LMFORGE_CEILINGS="data.max_bytes=1073741824 train.nproc=4"

    # policy.toml
    [sources]
    allow = ["https://huggingface.co/datasets/", "/srv/corpora"]
    addresses = ["loopback"]
    [secrets]
    LMFORGE_SOURCE_TOKEN = "huggingface.co"          # or a list of hosts
    [ceilings]
    "data.max_bytes" = 1073741824

A source entry is `*` (any URL), `SCHEME://*` (any URL of that scheme), a URL prefix `SCHEME://HOST[:PORT]/PATH`
(HOST may start with `*.`; PATH matches whole segments) or an absolute local root (`/` = any local path).
Without a sources setting a local run allows `*` and `/` (as before the policy existed: local files and public
URLs) and a deployment run allows `https://*` only. Every http(s) connection, each redirect hop included,
reaches public addresses only unless `addresses` names more. A ceiling from the policy replaces the default
ceiling; the config can lower a limit under it, never raise one over it.
"""
from __future__ import annotations

import ipaddress
import math
import os
import posixpath
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lmforge.core import envsubst
from lmforge.core.errors import LmforgeError
from lmforge.core.redact import redact_text

DOCS = "docs/security.md"

# name -> (default ceiling, what it bounds). Config keys of the same name may be set up to it, never past it.
CEILINGS: dict[str, tuple[float, str]] = {
    "data.max_bytes": (4 << 30, "bytes of one download"),
    "data.max_seconds": (3600, "seconds one download may take, all attempts together"),
    "data.archive_max_bytes": (8 << 30, "uncompressed bytes of one archive"),
    "data.archive_max_members": (1_000_000, "members of one archive"),
    "data.archive_max_ratio": (100.0, "uncompressed/compressed size of an archive"),
    "data.max_record_chars": (16 << 20, "characters of one document, line, CSV/TSV field or row"),
    "data.parts": (64, "parts a preparation fans out to"),
    "tokenizer.vocab_size": (262_144, "tokens of a trained BPE vocabulary"),
    "model.n_layer": (96, "layers"),
    "model.n_head": (128, "attention heads"),
    "model.n_embd": (8192, "embedding width"),
    "model.n_hidden": (8192, "recurrent state width"),
    "model.block_size": (8192, "context length"),
    "model.params": (2_000_000_000, "estimated weights of the configured model"),
    "train.batch_size": (4096, "sequences per step"),
    "train.grad_accum": (1024, "micro-batches per step"),
    "train.max_steps": (1_000_000, "optimizer steps of one run"),
    "train.eval_iters": (10_000, "batches per evaluation"),
    "export.check_positions": (1_000_000, "val positions the export verification scores"),
    "promote.windows": (100_000, "val windows a promotion scores"),
    "train.nproc": (16, "training processes on one host"),
    "train.threads": (256, "torch threads per process"),
    "eval.num_samples": (100, "samples per prompt and temperature"),
    # the runtime's own serving defaults (lmforge/runtime/limits.py), here bounding what a config may ask of them
    "serve.max_new_tokens": (2048, "tokens one request may generate (eval/export.max_new_tokens)"),
    "serve.max_prompt_bytes": (1 << 20, "bytes of one prompt (each of eval.prompts)"),
    "serve.max_stop_strings": (16, "stop strings of one request"),
    "serve.max_stop_chars": (1024, "characters of one stop string"),
    "serve.deadline_s": (300, "seconds one request may run"),
}

SETTINGS = ("LMFORGE_POLICY", "LMFORGE_ALLOWED_SOURCES", "LMFORGE_ALLOWED_ADDRESSES", "LMFORGE_ALLOWED_SECRETS",
            "LMFORGE_CEILINGS")
ADDRESS_CLASSES = ("loopback", "private", "link-local")
LOCAL = "local"  # the target of a ${NAME} inside a local path


class PolicyError(LmforgeError):
    """Something the operator's policy does not allow; the hint names the setting that would allow it."""


@dataclass(frozen=True)
class Policy:
    """What a run may reach and its ceilings. Picklable (Prefect and Dask pass it to tasks); holds no secret:
    only variable names and where each may be sent."""
    sources: tuple[str, ...] = ("*", "/")
    addresses: tuple[str, ...] = ()
    secrets: tuple[tuple[str, str], ...] = ()          # (NAME, target): target is host[:port], http://.., local
    ceilings: tuple[tuple[str, float], ...] = ()       # the operator's, over CEILINGS' defaults
    deployment: bool = False
    origin: str = "the default policy"                 # where it came from, for messages
    _networks: tuple = field(default=(), compare=False, repr=False)

    # --- sources -------------------------------------------------------------------------------------------

    def check_source(self, source: str, key: str = "data.source", shown: str | None = None) -> None:
        """Refuse a source (URL of any scheme, or local path) that no entry of `sources` allows. `shown` is what
        an error shows instead of `source` (the configured text, when `source` holds expanded secrets)."""
        shown = _redacted(shown if shown is not None else source)
        if _is_url(source):
            self._check_url(source, key, shown)
        else:
            self._check_path(source, key, shown)

    def check_url(self, url: str, key: str = "data.source", shown: str | None = None) -> None:
        """check_source for a URL only (a redirect hop): a local path here is refused."""
        shown = _redacted(shown if shown is not None else url)
        if not _is_url(url):
            raise PolicyError(f"{key} {shown!r} is not a URL", hint="give a URL such as https://host/file")
        self._check_url(url, key, shown)

    def _check_url(self, url: str, key: str, shown: str) -> None:
        _target(url, key)  # a ${NAME} in the scheme, host or port: never expanded, so refused here already
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise PolicyError(f"{key} {shown!r} is not a valid URL", hint="check the URL") from None
        path = unquote(parts.path)
        if ".." in path.split("/") or "\\" in path or "\x00" in path:
            raise PolicyError(f"{key} {shown!r} has '..' or '\\' in its path",
                              hint="give the file's own path, without '..'")
        if not any(_url_matches(entry, parts) for entry in self.sources if not entry.startswith("/")):
            allow = f"{parts.scheme}://{parts.hostname or ''}{':%d' % parts.port if parts.port else ''}/"
            raise PolicyError(f"{key} {shown!r} is not allowed by {self.origin}{self._mode()}",
                              hint=f"the operator allows it with LMFORGE_ALLOWED_SOURCES={allow} "
                                   f"(or [sources] allow in $LMFORGE_POLICY; {DOCS})")

    def _check_path(self, path: str, key: str, shown: str) -> None:
        real = os.path.realpath(os.path.expanduser(path))
        roots = [os.path.realpath(os.path.expanduser(e)) for e in self.sources if e.startswith("/")]
        if not any(real == r or os.path.commonpath([real, r]) == r for r in roots):
            raise PolicyError(f"{key} {shown!r} is a local path, which {self.origin}{self._mode()} does not allow",
                              hint=f"the operator allows a directory with LMFORGE_ALLOWED_SOURCES="
                                   f"{os.path.dirname(real) or '/'} (or [sources] allow in $LMFORGE_POLICY; {DOCS})")

    def _mode(self) -> str:
        return " for a deployment run" if self.deployment else ""

    # --- addresses -----------------------------------------------------------------------------------------

    def check_address(self, host: str, ip: str) -> None:
        """Refuse `ip` (what `host` resolved to) unless it is a public address or `addresses` allows its class
        or network. IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry."""
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        kind = address_class(addr)
        if kind == "public" or kind in self.addresses or any(addr in net for net in self._nets()):
            return
        raise PolicyError(f"{host} resolves to {addr}, a {kind} address, which {self.origin} does not allow",
                          hint=f"the operator allows it with LMFORGE_ALLOWED_ADDRESSES={kind} "
                               f"(or [sources] addresses in $LMFORGE_POLICY; {DOCS})")

    def _nets(self) -> tuple:
        if not self._networks and any(a not in ADDRESS_CLASSES for a in self.addresses):
            nets = tuple(ipaddress.ip_network(a, strict=False) for a in self.addresses if a not in ADDRESS_CLASSES)
            object.__setattr__(self, "_networks", nets)
        return self._networks

    def connect(self, host: str, port: int, timeout: float | None = None,
                source_address: tuple | None = None) -> socket.socket:
        """A TCP connection to `host`:`port` at an address this policy allows: each address `host` resolves to
        is checked before it is tried, so the address connected to is the address checked (no DNS rebinding
        between the check and the connection). A drop-in for socket.create_connection."""
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise OSError(f"cannot resolve {host}: {e.strerror}") from None
        refused: PolicyError | None = None
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            try:
                self.check_address(host, sockaddr[0])
            except PolicyError as e:
                refused = refused or e
                continue
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                sock.close()
                error = e
        if error is not None:
            raise error
        raise refused or OSError(f"{host} resolves to no address")

    # --- ${NAME} -------------------------------------------------------------------------------------------

    def check_references(self, text: str, key: str = "data.source") -> tuple | None:
        """Refuse each ${NAME} in `text` that the policy does not allow for where `text` goes (without reading the
        environment: a config is checked where it is loaded). Returns that target, or None without references."""
        names = envsubst.references(text, key)
        if not names:
            return None
        target = _target(text, key)
        for name in names:
            if not any(n == name and _target_matches(t, target) for n, t in self.secrets):
                where = target[1] if target[0] != LOCAL else LOCAL
                raise PolicyError(f"{key} refers to ${{{name}}}, which {self.origin} does not allow to be sent to "
                                  f"{where}", hint=f"the operator allows it with LMFORGE_ALLOWED_SECRETS={name}@"
                                                   f"{_target_text(target)} ({DOCS})")
        return target

    def expand(self, text: str, key: str = "data.source", environ: dict | None = None) -> str:
        """`text` with each ${NAME} replaced by its value, when the policy allows NAME for where `text` goes: the
        URL's scheme, host and port (a ${NAME} in the scheme, host or port is never expanded), or `local` for a
        path. An expanded URL must still name the same scheme, host and port."""
        target = self.check_references(text, key)
        if target is None:
            return text
        expanded = envsubst.expand(text, key, environ)
        if target[0] != LOCAL and _target(expanded, key, check=False) != target:
            raise PolicyError(f"{key}: a ${{NAME}} value changes where {_redacted(text)!r} goes",
                              hint="a variable's value may not hold '@', '/', '#' or '?' before the path")
        return expanded

    # --- ceilings ------------------------------------------------------------------------------------------

    def ceiling(self, name: str) -> float:
        """The operator's ceiling on `name` (a key of CEILINGS)."""
        for n, v in self.ceilings:
            if n == name:
                return v
        return CEILINGS[name][0]

    def bounded(self, name: str, value: float, key: str | None = None) -> float:
        """`value` when 0 < value <= ceiling(name); else one PolicyError naming the key and the ceiling."""
        key = key or name
        top = _num(self.ceiling(name))
        if value <= 0:
            raise PolicyError(f"config key {key} must be > 0, got {_num(value)} (0 no longer lifts a limit)",
                              hint=f"--set {key}=N up to the operator's ceiling {top}")
        if value > self.ceiling(name):
            raise PolicyError(f"config key {key}={_num(value)} is over the operator's ceiling {top} ({self.origin})",
                              hint=f"lower it, or the operator raises the ceiling: LMFORGE_CEILINGS={name}=N ({DOCS})")
        return value


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def address_class(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """public, loopback (0.0.0.0 and :: included: they reach this host), link-local, or private (any other
    address that is not globally routable: RFC 1918, CGNAT, ULA, multicast, reserved, documentation ranges)."""
    if addr.is_loopback or addr.is_unspecified:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_global and not addr.is_multicast:
        return "public"
    return "private"


# --- loading ---------------------------------------------------------------------------------------------------

def load(environ: dict | None = None, *, deployment: bool = False) -> Policy:
    """The policy in the worker's environment (LMFORGE_POLICY and LMFORGE_ALLOWED_* / LMFORGE_CEILINGS, the
    variables adding to the file's lists and their ceilings replacing the file's). A setting that cannot be read
    is an error, never a silent fallback to the defaults."""
    env = os.environ if environ is None else environ
    sources: list[str] | None = None
    addresses: list[str] = []
    secrets: list[tuple[str, str]] = []
    ceilings: dict[str, float] = {}
    settings = []
    if env.get("LMFORGE_POLICY"):
        settings.append(f"LMFORGE_POLICY={env['LMFORGE_POLICY']}")
        sources, addresses, secrets, ceilings = _read_file(Path(env["LMFORGE_POLICY"]))
    if env.get("LMFORGE_ALLOWED_SOURCES", "").strip():
        sources = (sources or []) + _words(env["LMFORGE_ALLOWED_SOURCES"])
    if env.get("LMFORGE_ALLOWED_ADDRESSES", "").strip():
        addresses += _words(env["LMFORGE_ALLOWED_ADDRESSES"])
    for word in _words(env.get("LMFORGE_ALLOWED_SECRETS", "")):
        name, at, target = word.partition("@")
        if not at:
            raise PolicyError(f"LMFORGE_ALLOWED_SECRETS entry {word!r} names no host",
                              hint="NAME@host, e.g. LMFORGE_SOURCE_TOKEN@huggingface.co")
        secrets.append((name, target))
    for word in _words(env.get("LMFORGE_CEILINGS", "")):
        name, eq, value = word.partition("=")
        ceilings[name] = _number(name, value if eq else "", "LMFORGE_CEILINGS")
    settings += [k for k in SETTINGS[1:] if env.get(k, "").strip()]
    if sources is None:
        sources = ["https://*"] if deployment else ["*", "/"]
    origin = f"the operator's policy ({', '.join(settings)})" if settings else "the default policy"
    pol = Policy(tuple(sources), tuple(addresses), tuple(secrets), tuple(ceilings.items()), deployment, origin)
    _validate(pol)
    return pol


def _read_file(path: Path) -> tuple[list[str] | None, list[str], list[tuple[str, str]], dict[str, float]]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PolicyError(f"cannot read the policy file LMFORGE_POLICY={path}: {e}",
                          hint=f"fix or unset LMFORGE_POLICY ({DOCS})") from None
    unknown = set(raw) - {"sources", "secrets", "ceilings"}
    if unknown:
        raise PolicyError(f"the policy file {path} has an unknown table [{sorted(unknown)[0]}]",
                          hint="its tables are [sources], [secrets] and [ceilings]")
    src = raw.get("sources", {})
    sources = _strings(src.get("allow"), path, "sources.allow") if "allow" in src else None
    addresses = _strings(src.get("addresses", []), path, "sources.addresses")
    secrets = []
    for name, targets in raw.get("secrets", {}).items():
        for target in [targets] if isinstance(targets, str) else _strings(targets, path, f"secrets.{name}"):
            secrets.append((name, target))
    ceilings = {k: _number(k, v, str(path)) for k, v in raw.get("ceilings", {}).items()}
    return sources, addresses, secrets, ceilings


def _validate(pol: Policy) -> None:
    for entry in pol.sources:
        if not (entry == "*" or entry.startswith("/") or re.fullmatch(r"[a-z][a-z0-9+.-]*://\S*", entry)):
            raise PolicyError(f"allowed source {entry!r} ({pol.origin}) is not *, SCHEME://..., nor an absolute path",
                              hint="e.g. https://huggingface.co/datasets/ or /srv/corpora")
    for a in pol.addresses:
        if a not in ADDRESS_CLASSES:
            try:
                ipaddress.ip_network(a, strict=False)
            except ValueError:
                raise PolicyError(f"allowed address {a!r} ({pol.origin}) is not {', '.join(ADDRESS_CLASSES)} "
                                  "or a network", hint="e.g. loopback or 10.0.0.0/8") from None
    for name, target in pol.secrets:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not target:
            raise PolicyError(f"allowed secret {name}@{target} ({pol.origin}) is not NAME@host",
                              hint="e.g. LMFORGE_SOURCE_TOKEN@huggingface.co")
    for name, value in pol.ceilings:
        if name not in CEILINGS:
            raise PolicyError(f"unknown ceiling {name!r} ({pol.origin})", hint="ceilings: " + ", ".join(CEILINGS))


def _number(name: str, value: object, where: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise PolicyError(f"ceiling {name} in {where} must be a number > 0, got {value!r}",
                          hint=f"e.g. {name}={CEILINGS.get(name, (1,))[0]:g}")
    return int(number) if number.is_integer() else number


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", text) if w]


def _strings(value: object, path: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{key} in the policy file {path} must be a list of strings", hint='e.g. ["loopback"]')
    return list(value)


# --- matching --------------------------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _is_url(text: str) -> bool:
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text))


def _redacted(text: str) -> str:
    return redact_text(text)


def _url_matches(entry: str, url) -> bool:
    if entry == "*":
        return True
    scheme, _, rest = entry.partition("://")
    if scheme != url.scheme.lower():
        return False
    if rest == "*":
        return True
    e = urlsplit(entry)
    host, want = (url.hostname or "").lower(), (e.hostname or "").lower()
    if want.startswith("*."):
        if not host.endswith(want[1:]):
            return False
    elif host != want:
        return False
    if (e.port or _DEFAULT_PORTS.get(scheme)) != (url.port or _DEFAULT_PORTS.get(scheme)):
        return False
    prefix = unquote(e.path)
    path = posixpath.normpath(unquote(url.path) or "/")
    if not prefix or prefix == "/":
        return True
    return path == prefix.rstrip("/") or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


def _target(text: str, key: str, check: bool = True) -> tuple:
    """Where `text` goes: (scheme, host[:port]) of a URL with a literal scheme and host, or (LOCAL, "")."""
    if not _is_url(text):
        if check and "://" in text:
            raise PolicyError(f"{key} has a ${{NAME}} in its URL scheme", hint="write the scheme literally")
        return (LOCAL, "")
    parts = urlsplit(text)
    hostport = parts.netloc.rpartition("@")[2]
    if check and "${" in hostport:
        raise PolicyError(f"{key} has a ${{NAME}} in its host or port, which is never expanded",
                          hint="write the host literally: a variable may only be sent to a host the operator names")
    return (parts.scheme.lower(), hostport.lower())


def _target_matches(allowed: str, target: tuple) -> bool:
    if target[0] == LOCAL:
        return allowed == LOCAL
    scheme, hostport = target
    if "://" in allowed:
        a_scheme, _, a_host = allowed.partition("://")
    else:
        a_scheme, a_host = "https", allowed
    a_host = a_host.rstrip("/").lower()
    if a_scheme.lower() != scheme:
        return False
    default = _DEFAULT_PORTS.get(scheme)
    return _with_port(a_host, default) == _with_port(hostport, default)


def _with_port(hostport: str, default: int | None) -> str:
    return hostport if re.search(r":\d+$", hostport) else f"{hostport}:{default}"


def _target_text(target: tuple) -> str:
    scheme, hostport = target
    if scheme == LOCAL:
        return LOCAL
    return hostport if scheme == "https" else f"{scheme}://{hostport}"
