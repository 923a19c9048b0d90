"""Webhooks: one signed JSON POST per delivery, listing its notices.

The body is `{"cluster": name, "cluster_id": id, "test": bool, "notices": [...]}`. With a
secret, `X-Heron-Signature: sha256=<hex>` is the HMAC-SHA256, keyed with the secret, of
`<X-Heron-Timestamp>.<body>`: a receiver recomputes it over the raw body, compares in
constant time, and refuses a timestamp too far from its clock (a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.parse

import httpx

from heron import __version__
from heron.models.alerts import WebhookSettings
from heron.monitor.notify.notice import Context, Notice, NotifyError

SIGNATURE = "X-Heron-Signature"
TIMESTAMP = "X-Heron-Timestamp"


def payload(notices: list[Notice], context: Context) -> bytes:
    document = {
        "cluster": context.cluster_name,
        "cluster_id": context.cluster_id,
        "test": any(n.test for n in notices),
        "notices": [n.as_json() for n in notices],
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: the HMAC-SHA256 of `timestamp.body` keyed with `secret`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does (minus the clock check): the signature header matches."""
    return hmac.compare_digest(signature(secret, timestamp, body), header)


def headers(settings: WebhookSettings, body: bytes, now: float) -> dict[str, str]:
    timestamp = str(int(now))
    result = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"Heron/{__version__}",
        TIMESTAMP: timestamp,
    }
    if settings.secret:
        result[SIGNATURE] = signature(settings.secret, timestamp, body)
    return result


def where(url: str) -> str:
    """The URL without path or query, which often carry a token (chat services' hooks):
    what error messages, logs and events may show."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{port}" if port else "")


async def send(settings: WebhookSettings, notices: list[Notice], context: Context) -> None:
    body = payload(notices, context)
    target = where(settings.url)
    try:
        async with httpx.AsyncClient(
            verify=context.tls, timeout=context.timeout, follow_redirects=False, trust_env=False
        ) as client:
            answer = await client.post(
                settings.url, content=body, headers=headers(settings, body, time.time())
            )
    except httpx.TimeoutException as exc:
        raise NotifyError(f"no answer from {target} within {context.timeout:g} s") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise NotifyError(f"cannot reach {target}: {_one_line(exc)}") from exc
    if not answer.is_success:
        raise NotifyError(f"{target} answered {answer.status_code} {answer.reason_phrase}".rstrip())


def _one_line(exc: Exception) -> str:
    cause = exc.__cause__ or exc.__context__
    text = " ".join(str(exc).split()) or type(exc).__name__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({' '.join(str(cause).split())})"
    return text
