"""Credentials out of URIs before they are printed or logged.

Tracking and store URIs may carry secrets (`https://user:password@host`, `postgresql://user:pw@db`,
pre-signed object URLs with `X-Amz-Signature=...`, `?token=...`). Everything z2h shows on the console
or records in MLflow goes through `redact`: the password (or a lone user token) before `@` and the
values of known secret query parameters become `***`; the rest of the URI stays readable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

MASK = "***"
# Query parameters that carry a secret (compared case-insensitively): API tokens, signed URLs of S3
# (SigV4), GCS (V4) and Azure (SAS `sig`), generic keys and passwords.
SECRET_PARAMS = frozenset(
    {
        "token", "access_token", "refresh_token", "id_token", "auth", "authorization", "api_key", "apikey",
        "key", "secret", "client_secret", "password", "passwd", "pwd", "sig", "signature",
        "x-amz-signature", "x-amz-credential", "x-amz-security-token", "awsaccesskeyid",
        "x-goog-signature", "x-goog-credential", "googleaccessid",
    }
)  # fmt: skip
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")  # up to the last @


def _redact_uri(uri: str) -> str:
    userinfo = _USERINFO.match(uri)
    if userinfo:
        user, colon, _ = userinfo["userinfo"].partition(":")
        shown = f"{user}:{MASK}" if colon else MASK  # a lone user part may itself be a token
        uri = f"{userinfo['scheme']}{shown}@{uri[userinfo.end() :]}"
    head, question, query = uri.partition("?")
    if not question:
        return uri
    query, hash_mark, fragment = query.partition("#")
    pairs = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        pairs.append(f"{name}={MASK}" if equals and unquote(name).lower() in SECRET_PARAMS else pair)
    return f"{head}?{'&'.join(pairs)}{hash_mark}{fragment}"


def redact(text: str) -> str:
    """`text` (a URI, or any text holding URIs) with the credentials in its URIs masked."""
    return _URI.sub(lambda match: _redact_uri(match.group(0)), text)


def redact_values(value: Any) -> Any:
    """`value` with every string in it (through mappings, lists and tuples) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_values(item) for item in value)
    return value
