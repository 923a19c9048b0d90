"""Auto-support: the pieces of a diagnostic bundle that need no cluster — removing secrets,
reading this node's logs and last hour of metrics, and writing the bounded archive.

Secrets leave in two sweeps. Every record is scrubbed by field name (`SECRET_KEYS`: a
channel's password or keys, a user's password hash, a CA's private key, cloud-init's
user-data...) before it is written. Then every text of the bundle — logs included, which
no field name protects — has each secret value the ConfigDB held replaced, as well as what
looks like a token or a private key. A support team receives what an operator could show
on a screen, never what would let it into the cluster.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heron.models.alerts import SECRET_FIELDS
from heron.monitor import query
from heron.monitor.catalog import METRICS
from heron.monitor.store import Store

REDACTED = "<redacted>"

# Field names whose values are secrets wherever they appear in a record: the channels'
# (models/alerts.py), a user's or a guest user's password hash, a CA's or a pool's key,
# tokens, and cloud-init's free user-data (passwords and keys are often written there).
SECRET_KEYS = frozenset(
    {
        *SECRET_FIELDS,
        "password_hash",
        "token",
        "key",
        "private_key",
        "peer_key",
        "user_data",
        "keyring",
        "chap_password",
        "chap_secret",
    }
)

# What looks like a secret in free text: a Heron token, a PEM private key, a password given
# on a command line or in a URL.
_TEXT_SECRETS = (
    re.compile(r"hrn_[A-Za-z0-9_-]{16,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL),
    re.compile(r"(?i)(password|passwd|secret|token)(\s*[=:]\s*)([^\s\"',;()\[\]{}]+)"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
)
# Secret values shorter than this are not searched for in texts (they would blot out words).
_SHORTEST = 4

# Bounds: a bundle is mailed, so it stays small whatever the cluster's size.
LOG_TAIL = 256 * 1024  # bytes of the end of each log file
MAX_BYTES = 20 * 1024 * 1024  # the whole archive, compressed
MAX_MEMBER = 8 * 1024 * 1024  # one member, before compression
METRIC_WINDOW = 3600.0
METRIC_STEP = 60.0


def scrub(value: Any) -> Any:
    """`value` (decoded JSON) with every secret field's value replaced by REDACTED."""
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if k in SECRET_KEYS and value[k] not in (None, "", [], {}) else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def secret_values(value: Any) -> set[str]:
    """Every string held under a secret field anywhere in `value`."""
    found: set[str] = set()

    def walk(item: Any, secret: bool) -> None:
        if isinstance(item, Mapping):
            for k, v in item.items():
                walk(v, secret or k in SECRET_KEYS)
        elif isinstance(item, list | tuple):
            for v in item:
                walk(v, secret)
        elif secret and isinstance(item, str) and len(item) >= _SHORTEST:
            found.add(item)

    walk(value, False)
    return found


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without the given secret values and without what looks like a secret."""
    for secret in sorted(secrets, key=len, reverse=True):  # a longer one may hold a shorter
        text = text.replace(secret, REDACTED)
    for pattern in _TEXT_SECRETS:
        if pattern.groups == 3:
            text = pattern.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


# -- this node's part ----------------------------------------------------------------------


def log_files(state_dir: Path) -> dict[str, Path]:
    """This node's logs by their name in the bundle: herond's, the fence watchdog's, each
    heron-io's and each etcd member's that it runs."""
    found = {
        "herond.log": state_dir / "herond.log",
        "fence.log": state_dir / "fence.log",
    }
    for path in sorted(state_dir.glob("ardfs/*/heron-io.log")):
        found[f"heron-io-{path.parent.name}.log"] = path
    for path in sorted(state_dir.glob("etcd*.log")):
        found[path.name] = path
    return {name: path for name, path in found.items() if path.is_file()}


def tail(path: Path, limit: int = LOG_TAIL) -> str:
    """The last `limit` bytes of a file, from a line's start."""
    with open(path, "rb") as file:
        size = file.seek(0, io.SEEK_END)
        file.seek(max(0, size - limit))
        data = file.read(limit)
    if size > limit:
        data = data.split(b"\n", 1)[-1]
    return data.decode(errors="replace")


def node_metrics(store: Store, now: float) -> dict[str, Any]:
    """The node's own series (no VM's) over the last hour, at one point a minute."""
    found: dict[str, Any] = {}
    for name in METRICS:
        answer = query.read(store, name, (), now - METRIC_WINDOW, now, METRIC_STEP, now)
        series = [s for s in answer["series"] if 'vm="' not in s["key"]]
        if series:
            found[name] = series
    return found


def node_part(
    state_dir: Path, store: Store | None, versions: Mapping[str, str], now: float
) -> dict[str, Any]:
    """What only this node knows, for the node building a bundle: its logs' tails, its
    versions and its last hour of metrics."""
    return {
        "versions": dict(versions),
        "logs": {name: tail(path) for name, path in log_files(state_dir).items()},
        "metrics": node_metrics(store, now) if store is not None else {},
        "time": now,
    }


# -- the archive -----------------------------------------------------------------------------


@dataclass
class Archive:
    """The members of a bundle, each written once its text is scrubbed; `build` makes the
    .tar.gz, leaving out what would take it past MAX_BYTES (and saying so in the README)."""

    root: str
    secrets: set[str] = field(default_factory=set)
    members: dict[str, bytes] = field(default_factory=dict)
    contents: dict[str, str] = field(default_factory=dict)  # name -> what it holds
    cut: list[str] = field(default_factory=list)

    def add_json(self, name: str, value: Any, about: str) -> None:
        text = json.dumps(scrub(value), indent=1, sort_keys=True, default=str)
        self.add_text(name, text, about)

    def add_text(self, name: str, text: str, about: str) -> None:
        data = redact(text, self.secrets).encode()
        if len(data) > MAX_MEMBER:
            data = data[-MAX_MEMBER:]
            self.cut.append(f"{name}: only its last {MAX_MEMBER} bytes")
        self.members[name] = data
        self.contents[name] = about

    def readme(self, header: str) -> str:
        lines = [header, "", "What this bundle holds:", ""]
        width = max((len(n) for n in self.contents), default=0)
        lines += [f"  {n:<{width}}  {about}" for n, about in sorted(self.contents.items())]
        if self.cut:
            lines += ["", "Cut to keep the bundle small:", *(f"  {c}" for c in self.cut)]
        lines += [
            "",
            "Secrets (passwords, keys, tokens, password hashes, cloud-init user-data) were",
            f"replaced by {REDACTED} everywhere, logs included.",
        ]
        return "\n".join(lines) + "\n"

    def build(self, header: str, when: float | None = None) -> bytes:
        """The .tar.gz: README first, then the members, the largest logs left out first
        while the archive is over MAX_BYTES."""
        when = time.time() if when is None else when
        while True:
            data = self._pack(header, when)
            if len(data) <= MAX_BYTES or not self.members:
                return data
            largest = max(self.members, key=lambda n: len(self.members[n]))
            del self.members[largest]
            self.contents.pop(largest, None)
            self.cut.append(f"{largest}: left out (the bundle is kept under {MAX_BYTES} bytes)")

    def _pack(self, header: str, when: float) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
            readme = self.readme(header).encode()
            for name, data in [("README.txt", readme), *sorted(self.members.items())]:
                info = tarfile.TarInfo(f"{self.root}/{name}")
                info.size = len(data)
                info.mtime = int(when)
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()
