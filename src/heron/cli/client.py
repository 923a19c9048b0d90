"""The CLI's HTTP client: where the API is, the token, and errors as one-line messages."""

import hashlib
import json
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

_END = "-----END CERTIFICATE-----"
CONFIG = Path(os.environ.get("HERON_CONFIG", Path.home() / ".config" / "heron" / "cli.json"))


def _ca_file() -> str | None:
    """The CA in HERON_CA_FILE, for scripts that set HERON_URL and HERON_TOKEN too."""
    path = os.environ.get("HERON_CA_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        fail(f"HERON_CA_FILE: cannot read {path}: {exc.strerror}")


class CliError(Exception):
    """Printed as one line on stderr; the command exits with `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    raise CliError(message, code)


def saved() -> dict[str, str]:
    try:
        return json.loads(CONFIG.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def save(url: str, token: str, ca: str | None = None) -> None:
    """Remember the session, and the CA pinned for `url` beside those of other clusters
    (as SSH's known_hosts: logging in elsewhere does not forget a pin)."""
    config: dict[str, Any] = saved()
    pins = dict(config.get("pins") or {})
    if ca is not None:
        pins[url] = ca
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.touch(mode=0o600)
    CONFIG.write_text(json.dumps({"url": url, "token": token, "pins": pins}))


def pinned(url: str) -> str | None:
    """The CA pinned for `url` at an earlier login, PEM."""
    pins: Any = saved().get("pins") or {}
    return pins.get(url.rstrip("/"))


def fingerprint(pem: str) -> str:
    """SHA-256 of a certificate's DER, as `openssl x509 -fingerprint -sha256` prints it."""
    first = pem[: pem.index(_END) + len(_END)] if _END in pem else pem
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(first.strip())).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def tls_context(ca: str) -> ssl.SSLContext:
    """Trusts the cluster CA alone: a node's certificate must chain to it and name the host."""
    return ssl.create_default_context(cadata=ca)


def _refused_certificate(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Client:
    """`ca`: the CA to check the API's certificate with (PEM); by default HERON_CA_FILE's,
    else the one pinned for this URL at login, else the system's trusted CAs."""

    def __init__(self, url: str | None = None, token: str | None = None, ca: str | None = None):
        config = saved()
        self.url = (url or os.environ.get("HERON_URL") or config.get("url") or "").rstrip("/")
        self.token = token or os.environ.get("HERON_TOKEN") or config.get("token")
        if not self.url:
            fail("no API address: set HERON_URL or run `heron login --url URL`")
        self.ca = ca or _ca_file() or pinned(self.url)
        self.tls = tls_context(self.ca) if self.ca else ssl.create_default_context()
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(
            base_url=self.url + "/api/v1", headers=headers, timeout=60, verify=self.tls
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            refused = _refused_certificate(exc)
            if refused is not None:
                fail(self.refusal(refused))
            fail(f"cannot reach {self.url}: {exc}")
        if reply.status_code >= 400:
            try:
                body = reply.json()
                message = body.get("message") or body.get("detail") or reply.text
            except ValueError:
                message = reply.text.strip() or reply.reason_phrase
            fail(f"{reply.status_code}: {message}")
        if reply.status_code == 204 or not reply.content:
            return None
        return reply.json()

    def refusal(self, error: ssl.SSLCertVerificationError) -> str:
        trusted = f"the pinned cluster CA {fingerprint(self.ca)}" if self.ca else "a trusted CA"
        return (
            f"{self.url} refused: its certificate is not signed by {trusted} "
            f"({error.verify_message}); if the cluster's CA changed on purpose, "
            f"run `heron login` again with --ca-file or --ca-fingerprint"
        )

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def wait_task(self, task_id: str, show: bool = True, timeout: float = 3600) -> dict[str, Any]:
        """Follow a task to its end with a progress bar; fails if the task failed."""
        deadline = time.monotonic() + timeout
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            disable=not (show and sys.stderr.isatty()),
            console=None,
            transient=True,
        ) as bar:
            handle = bar.add_task("", total=1.0)
            while True:
                task = self.get(f"/tasks/{task_id}")
                bar.update(
                    handle,
                    completed=task["progress"],
                    description=f"{task['kind']} {task['state']}",
                )
                if task["state"] in ("succeeded", "failed", "cancelled"):
                    break
                if time.monotonic() > deadline:
                    fail(f"task {task_id} still {task['state']} after {timeout:.0f}s")
                time.sleep(0.2)  # polling interval of the progress bar
        if task["state"] != "succeeded":
            fail(f"task {task['kind']} {task['state']}: {task.get('error') or ''}".strip())
        return task
