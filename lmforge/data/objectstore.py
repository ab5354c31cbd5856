"""Object-store sources through fsspec: `s3://bucket/prefix/`, `gs://`, `az://` (and `hf://` where
huggingface_hub is installed); one object, a prefix (every object under it) or a glob. Each object is copied
into the cache once per version: a run lists the objects (their ETag, version id, generation, size), downloads
only those whose identity changed, and removes the copies of objects that are gone, so the local mirror is the
prefix as it is now. Unchanged objects mean unchanged bytes, the same data fingerprint and a resumed run; a
replaced object means new bytes and a run of its own (lmforge.core.layout).

Credentials come only from each store's standard places (environment, profile/config files, instance or
workload role; AWS_ENDPOINT_URL for an S3-compatible server): a URL with userinfo, query options other than
versionId, or fsspec's `::` chaining is refused, and no config key carries storage options. The same guarantees
as http(s) sources: data.max_bytes caps the listed total before any download and every stream while it is read;
data.sha256 pins one object's bytes (or, for a prefix, the digest of its manifest: `key sha256` lines); a
deadline and per-request timeouts bound the time; URLs and error text are redacted before they are logged.

The manifest (lmforge-objects.json beside the copies) names each object's key, ETag, version and sha256; the
prepared data's meta.json and the registered version's tags carry it (lmforge.registry.review)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from lmforge.core.atomic import write_json_atomic
from lmforge.core.errors import LmforgeError
from lmforge.core.redact import redact_text, redact_url
from lmforge.core.safepath import confined, safe_component

log = logging.getLogger("lmforge.download")

SCHEMES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
           "abfss": "adlfs", "hf": "huggingface_hub"}
EXTRA = {"s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure", "huggingface_hub": "hf"}
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE (~/.aws), or an instance/task role",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, or the VM's service account",
    "az": "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY / AZURE_STORAGE_CONNECTION_STRING, a service "
          "principal (AZURE_CLIENT_ID...), or a managed identity",
    "hf": "HF_TOKEN or `hf auth login`",
}
MANIFEST = "lmforge-objects.json"
MAX_OBJECTS = 100_000
DEADLINE_S = 6 * 3600.0       # the whole copy of one source; per-request timeouts are below
CHUNK = 4 << 20
_IDENTITY_KEYS = (("ETag", "etag"), ("etag", "etag"), ("VersionId", "version_id"), ("version_id", "version_id"),
                  ("generation", "generation"), ("md5Hash", "md5"), ("blob_id", "blob_id"),
                  ("last_commit", "commit"), ("LastModified", "last_modified"), ("last_modified", "last_modified"),
                  ("mtime", "last_modified"), ("updated", "last_modified"))


def is_object_url(source: str) -> bool:
    return urlparse(source).scheme.lower() in SCHEMES and "://" in source


def _family(scheme: str) -> str:
    return {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}.get(scheme, scheme)


def check_url(url: str, shown: str) -> None:
    """Refuse what would carry credentials or options in the URL: userinfo, query options, `::` chains."""
    u = urlparse(url)
    if "::" in url:
        raise LmforgeError(f"{shown}: fsspec URL chaining (::) is not accepted as a data source",
                           hint="name the object store URL itself, e.g. s3://bucket/prefix/")
    if "@" in u.netloc and _family(u.scheme.lower()) != "az":
        raise LmforgeError(f"{shown}: credentials in an object-store URL are not accepted",
                           hint=f"give them the store's standard way: {CREDENTIALS[_family(u.scheme.lower())]}")
    extra = [q.split("=", 1)[0] for q in u.query.split("&") if q and not q.startswith("versionId=")]
    if extra or u.fragment:
        raise LmforgeError(f"{shown}: options in an object-store URL are not accepted "
                           f"({', '.join(extra) or 'fragment'})",
                           hint="name the bucket and key only (?versionId=... is allowed for one S3 object)")
    if not u.netloc:
        raise LmforgeError(f"{shown} names no bucket", hint="e.g. s3://bucket/prefix/")


def _filesystem(url: str, shown: str):
    """(fsspec filesystem, path inside it) with the store's default credential chain and bounded requests."""
    scheme = urlparse(url).scheme.lower()
    package = SCHEMES[scheme]
    try:
        __import__(package)
        import fsspec
    except ImportError:
        raise LmforgeError(f"{shown} needs the {package} package, which is not installed",
                           hint=f'pip install "lmforge[{EXTRA[package]}]"') from None
    options: dict = {}
    if _family(scheme) == "s3":
        # version_aware: a listed object's VersionId is read back exactly, not whatever is latest by then
        options = {"version_aware": True, "skip_instance_cache": True,
                   "config_kwargs": {"connect_timeout": 10, "read_timeout": 60,
                                     "retries": {"max_attempts": 4, "mode": "standard"}}}
    elif _family(scheme) in ("gs", "az"):
        options = {"skip_instance_cache": True}
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def _identity(info: dict) -> dict:
    """What names this version of an object: ETag / version id / generation / blob id and size; the modification
    time only for a store that gives none of those (its listing and its HEAD may format times differently)."""
    out = {}
    for key, name in _IDENTITY_KEYS:
        value = info.get(key)
        if value not in (None, "") and name not in out:
            out[name] = str(value).strip('"') if name == "etag" else str(value)
    if len(out) > 1:
        out.pop("last_modified", None)
    out["size"] = int(info.get("size") or info.get("Size") or 0)
    return out


def _translate(exc: BaseException, shown: str, scheme: str) -> LmforgeError:
    """One error line for whatever the store's library raised."""
    family = _family(scheme)
    text = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)[:300]
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return LmforgeError(f"{shown} does not exist ({text})",
                            hint="check the bucket and key, and that these credentials can list them")
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                "DefaultCredentialsError", "ClientAuthenticationError", "CredentialUnavailableError") \
            or "credentials" in text.lower() and ("unable to locate" in text.lower() or "no " in text.lower()):
        return LmforgeError(f"no credentials to read {shown} ({text})",
                            hint=f"give them the store's standard way: {CREDENTIALS[family]}")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text or "403" in text:
        return LmforgeError(f"access to {shown} denied ({text})",
                            hint=f"check the credentials and their permissions: {CREDENTIALS[family]}")
    return LmforgeError(f"cannot read {shown}: {name}: {text}",
                        hint="check the URL, the network, and the store's endpoint (AWS_ENDPOINT_URL for an "
                             "S3-compatible server)")


def _list(fs, path: str, url: str, shown: str) -> tuple[list[tuple[str, str, dict]], bool]:
    """[(key relative to the source, full path, info)] sorted by key, and whether the source is one object."""
    if any(c in path for c in "*?["):
        found = fs.glob(path, detail=True)
        base = path[:min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
        single = False
    else:
        info = fs.info(path)
        if info.get("type") == "file":
            return [(path.rsplit("/", 1)[-1], path, info)], True
        found = fs.find(path, detail=True)
        base, single = path.rstrip("/"), False
        if not found:
            raise FileNotFoundError(f"no objects under {path}")
    entries = []
    for full, info in found.items():
        if info.get("type", "file") != "file" or full.endswith("/"):
            continue
        rel = full[len(base):].lstrip("/") if full.startswith(base) else full.rsplit("/", 1)[-1]
        entries.append((rel, full, info))
        if len(entries) > MAX_OBJECTS:
            raise LmforgeError(f"{shown} holds more than {MAX_OBJECTS} objects",
                               hint="point data.source at a narrower prefix or glob")
    if not entries:
        raise FileNotFoundError(f"no objects match {path}")
    return sorted(entries), single


def manifest_digest(objects: list[dict]) -> str:
    """What data.sha256 pins for a prefix or glob: sha256 of the `key sha256` lines, in key order."""
    return hashlib.sha256("".join(f"{o['key']} {o['sha256']}\n" for o in objects).encode()).hexdigest()


def acquire_objects(url: str, cache_dir: Path, *, sha256: str = "", max_bytes: int | None = None,
                    configured: str | None = None, deadline_s: float = DEADLINE_S) -> Path:
    """The local copy of an object-store source: a file for one object, else a directory mirroring the prefix.
    `configured` (the URL before ${NAME} expansion) names the cache directory and is what messages show."""
    shown = redact_url(configured or url)
    scheme = urlparse(url).scheme.lower()
    check_url(url, shown)
    key = configured or url
    dest = Path(cache_dir) / "objects" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}-" \
        f"{safe_component(urlparse(key).netloc + urlparse(key).path.rstrip('/').replace('/', '_'), 'objects')[:60]}"
    from lmforge.core.locks import hold

    with hold(dest.with_name(dest.name + ".lock"), f"the object cache of {shown}"):
        try:
            fs, path = _filesystem(url, shown)
            entries, single = _list(fs, path, url, shown)
            objects = _sync(fs, entries, dest, shown, max_bytes, time.monotonic() + deadline_s)
        except LmforgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - each store's library raises its own types: one line for all
            raise _translate(exc, shown, scheme) from None
        manifest = {"url": shown, "objects": objects, "digest": manifest_digest(objects)}
        if sha256:
            actual = objects[0]["sha256"] if single else manifest["digest"]
            if actual != sha256.lower():
                raise LmforgeError(f"{shown} does not match data.sha256: {actual}, expected {sha256.lower()}",
                                   hint="the objects changed upstream, or the pin is wrong" + (
                                       " (a prefix is pinned by its manifest digest, which lmforge logs)"
                                       if not single else ""))
        write_json_atomic(dest / MANIFEST, manifest)
    log.info("%s: %d object(s), %d bytes, manifest %s", shown, len(objects), sum(o["size"] for o in objects),
             manifest["digest"][:16])
    files = dest / "files"
    return files / objects[0]["key"] if single else files


def _sync(fs, entries: list, dest: Path, shown: str, max_bytes: int | None, deadline: float) -> list[dict]:
    """Bring dest/files/ to the listed objects: download new or changed ones, keep the rest, drop the gone."""
    total = sum(_identity(info)["size"] for _, _, info in entries)
    if max_bytes and total > max_bytes:
        raise LmforgeError(f"{shown} holds {total} bytes, over the limit of {max_bytes}",
                           hint="raise data.max_bytes (--set data.max_bytes=BYTES; 0 = no limit) if this is expected")
    files = dest / "files"
    files.mkdir(parents=True, exist_ok=True)
    try:
        old = {o["key"]: o for o in json.loads((dest / MANIFEST).read_text(encoding="utf-8"))["objects"]}
    except (OSError, ValueError, KeyError, TypeError):
        old = {}
    objects, budget = [], max_bytes or 0
    for rel, full, info in entries:
        ident = _identity(info)
        local = confined(files, files / rel, "an object key", hint="the store lists a key that climbs out of "
                                                                     "its prefix")
        before = old.get(rel)
        if before and {k: v for k, v in before.items() if k not in ("key", "sha256")} == ident and \
                local.is_file() and local.stat().st_size == ident["size"]:
            objects.append(before)
        else:
            digest = _download(fs, full, info, local, shown=shown, budget=budget, deadline=deadline)
            objects.append({"key": rel, **ident, "sha256": digest})
            log.info("%s: copied %s (%d bytes, etag %s)", shown, rel, ident["size"], ident.get("etag", "-"))
        if budget:
            budget -= ident["size"]
    keep = {files / o["key"] for o in objects}
    for p in sorted(files.rglob("*"), reverse=True):  # objects gone from the store leave the mirror too
        if p.is_file() and p not in keep:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    return objects


def _download(fs, full: str, info: dict, local: Path, *, shown: str, budget: int, deadline: float) -> str:
    """Copy one object (the listed version, where the store has versions) to `local`; its sha256."""
    local.parent.mkdir(parents=True, exist_ok=True)
    part = local.with_name(f".{local.name}.{os.getpid()}.part")
    version = info.get("VersionId")
    options = {"version_id": version} if version and getattr(fs, "version_aware", False) else {}
    h, have = hashlib.sha256(), 0
    try:
        with fs.open(full, "rb", block_size=CHUNK, **options) as src, open(part, "wb") as out:
            while chunk := src.read(CHUNK):
                have += len(chunk)
                if budget and have > budget:
                    raise LmforgeError(f"{shown} exceeded the limit of data.max_bytes while reading {full}",
                                       hint="raise data.max_bytes (0 = no limit) if this is expected")
                if time.monotonic() > deadline:
                    raise LmforgeError(f"copying {shown} took longer than data.max_seconds",
                                       hint="check the network, raise data.max_seconds (up to the operator's "
                                            "ceiling), or copy the data nearer and point data.source at it")
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, local)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return h.hexdigest()


def manifest_for(path: Path) -> dict | None:
    """The manifest of an object-store copy that `path` (what acquire_objects returned) is, or None."""
    path = Path(path)
    for root in (path.parent, path.parent.parent):
        if root.name and (root / MANIFEST).is_file() and (path == root / "files" or path.parent == root / "files"):
            try:
                return json.loads((root / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
    return None


def version_tags(objects: list[dict], limit: int = 4000) -> dict:
    """Registry tags naming the objects a model was trained on: their count, manifest digest, and each key with
    its version/ETag (as many as fit in `limit` characters; the digest covers all)."""
    if not objects:
        return {}
    parts = []
    for o in objects:
        ident = ",".join(f"{k}={o[k]}" for k in ("version_id", "etag", "generation") if o.get(k))
        parts.append(f"{o['key']}@{ident or o.get('last_modified', '?')}")
    text, shown_all = "", True
    for p in parts:
        if len(text) + len(p) + 2 > limit:
            shown_all = False
            break
        text += ("; " if text else "") + p
    if not shown_all:
        text += f"; ... ({len(parts)} in all)"
    return {"data_objects": len(objects), "data_objects_digest": manifest_digest(objects), "data_object_versions": text}

