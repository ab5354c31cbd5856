"""Credentials in URLs: hide them before anything is written or logged, and lift them out for an HTTP request.

A source URL may carry a secret in two places: the userinfo (`https://user:pass@host/...`) and the query or
fragment (`?token=...`, `#access_token=...`). Whatever lmforge writes (MLflow params and tags, the model
card, meta.json, lmforge.json) or logs passes through `redact_url` / `redact_text` first, which turn
`https://user:pass@host/x?token=abc&n=1` into `https://***@host/x?token=***&n=1`.

Standard library only: the torch-free runtime and the CLI import it before any pipeline package.
"""
from __future__ import annotations

import base64
import re
from urllib.parse import unquote

MASK = "***"

# A query/fragment parameter is secret when its name contains one of these, in any case: so access_token,
# api_key, apiKey, signature, X-Amz-Signature, X-Amz-Credential and private_token all count. Hiding a harmless
# parameter whose name merely contains one of them ("author") costs a little readability; showing a secret more.
SECRET_PARAM_WORDS = ("token", "key", "secret", "password", "passwd", "sig", "auth", "credential")

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
_PARAM = re.compile(r"(?P<sep>[?&;#])(?P<name>[^=&;#?]+)=(?P<value>[^&;#]*)")


def is_secret_param(name: str) -> bool:
    name = unquote(name).lower()
    return any(word in name for word in SECRET_PARAM_WORDS)


def redact_url(url: str) -> str:
    """`url` with its userinfo replaced by *** and the values of secret-looking parameters by ***.
    Works on malformed URLs too (pure text substitution, no parsing that could raise)."""
    url = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", url, count=1)

    def param(m: re.Match) -> str:
        if not is_secret_param(m["name"]) or not m["value"]:
            return m.group(0)
        return f"{m['sep']}{m['name']}={MASK}"

    head, q, rest = url.partition("?") if "?" in url else url.partition("#")
    if not q:
        return url
    return head + _PARAM.sub(param, q + rest)


def redact_text(text: str) -> str:
    """Every URL inside free text (a log line, an error message, a model card) redacted."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact_values(mapping: dict) -> dict:
    """A copy of `mapping` with every string value passed through redact_text (MLflow params and tags)."""
    return {k: redact_text(v) if isinstance(v, str) else v for k, v in mapping.items()}


def split_credentials(url: str) -> tuple[str, str | None]:
    """(`url` without its userinfo, the HTTP Basic `Authorization` header value for it or None).
    urllib neither strips nor sends userinfo itself: http.client would read `user:pass@host` as a bad port."""
    m = _USERINFO.match(url)
    if not m:
        return url, None
    user, _, password = m["userinfo"].partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return m["scheme"] + url[m.end():], f"Basic {token}"
