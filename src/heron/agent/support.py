"""Auto-support: diagnostic bundles, built by a `support.bundle` task on the node asked,
kept in its state directory, and mailed to the support address through an SMTP channel.

The building node reads the ConfigDB (scrubbed of secrets), etcd's status and health, and
asks every other live node for its own part (log tails, versions, the last hour of its
metrics) through that node's API, all at once and each for at most PEER_TIMEOUT seconds: a
node that does not answer in time is named in the bundle, not waited for. To ask, the task
holds an administrator token of its own for the few minutes a build may take (stored
hashed under a lease, revoked when the build ends, and never written to the bundle).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import httpx

import heron
from heron.agent.alerts import etcd_health
from heron.agent.tasks import TaskContext, TaskFailed
from heron.configdb import ConfigDB, keys
from heron.configdb.client import EtcdTls
from heron.configdb.membership import Membership
from heron.errors import AgentError
from heron.models.alerts import Alert, Channel, SmtpSettings
from heron.models.auth import Role, TokenRecord, new_token, token_hash
from heron.models.common import new_id
from heron.models.settings import ClusterSettings
from heron.models.support import BUNDLE_PATTERN, BundleInfo, BundleSent
from heron.models.task import SupportBundleParams, Task, TaskKind, TaskState, new_task
from heron.monitor import support
from heron.monitor.notify import Context, NotifyError
from heron.monitor.notify.smtp import send_message
from heron.monitor.store import Store
from heron.scheduler.inventory import live_nodes

log = logging.getLogger(__name__)

KEEP = 5  # bundles kept on a node: the oldest go when a new one is made
PEER_TIMEOUT = 20.0  # seconds another node has to give its part
FAILED_TASKS_DAYS = 3
TOKEN_TTL = 180  # the task's own token: longer than a build may take
AUTO_INTERVAL = 3600.0  # at most one bundle an hour for critical alerts

# What of the ConfigDB a bundle holds, by file name: configuration, not state nor secrets
# (tokens, the CA, pool keys, login failures are not read at all).
CONFIG = {
    "settings": keys.SETTINGS,
    "nodes": keys.NODES,
    "node-settings": keys.NODE_SETTINGS,
    "pools": keys.POOLS,
    "volumes": keys.VOLUMES,
    "switches": keys.SWITCHES,
    "networks": keys.NETWORKS,
    "security-groups": keys.SECURITY_GROUPS,
    "groups": keys.GROUPS,
    "vms": keys.VMS,
    "vm-status": keys.VM_STATUS,
    "alert-rules": keys.ALERT_RULES,
    "channels": keys.CHANNELS,
    "silences": keys.SILENCES,
    "users": keys.USERS,
    "grants": keys.GRANTS,
    # V2V sources: a vsphere source's password is scrubbed by its field name, and searched
    # for in the logs (a pyVmomi error could repeat it)
    "import-sources": keys.IMPORT_SOURCES,
}
# Read, and searched for secret values, but never written: what the bundle must not hold.
NEVER = (
    keys.TOKENS,
    keys.CLUSTER_CA,
    keys.JOIN_TOKENS,
    keys.ARDFS_SECRETS,
    keys.ISCSI_SECRETS,
)

_NAME = re.compile(BUNDLE_PATTERN)


class NotConfigured(AgentError):
    """Mailing a bundle needs a support address and an SMTP channel: one is missing."""


class NoBundle(AgentError, KeyError):
    """No bundle of that name on this node."""


def is_bundle_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def versions() -> dict[str, str]:
    """Heron's, Python's, the kernel's and every installed Python distribution's versions."""
    found = {
        "heron": heron.__version__,
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "platform": platform.platform(),
    }
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[f"python:{name.lower()}"] = dist.version
    return found


async def records(db: ConfigDB, prefix: str) -> list[Any]:
    entries, _ = await db.list_raw_at(prefix)
    found = []
    for entry in entries:
        try:
            found.append({"etcd_key": entry.key, **json.loads(entry.value)})
        except (ValueError, TypeError):
            found.append({"etcd_key": entry.key, "unreadable": len(entry.value)})
    return found


async def config_part(db: ConfigDB) -> tuple[dict[str, list[Any]], set[str]]:
    """The configuration records by file name, and every secret value the ConfigDB holds
    (to be searched for in every text of the bundle)."""
    found = {name: await records(db, prefix) for name, prefix in CONFIG.items()}
    hidden: set[str] = set()
    for prefix in NEVER:
        for entry in (await db.list_raw_at(prefix))[0]:
            hidden |= _secrets_of(entry.value)
    for part in found.values():
        hidden |= support.secret_values(part)
    return found, hidden


def _secrets_of(raw: bytes) -> set[str]:
    """What a record kept out of the bundle holds: its secret fields, or its whole text."""
    try:
        value = json.loads(raw)
    except ValueError:
        text = raw.decode(errors="replace").strip()
        return {text} if len(text) >= 8 else set()
    found = support.secret_values(value)
    if not isinstance(value, dict):  # a bare value (a pool's key in hex): all of it
        found |= {t for t in (str(value), raw.decode(errors="replace").strip()) if len(t) >= 8}
    return found


async def etcd_part(db: ConfigDB, tls: EtcdTls | None) -> dict[str, Any]:
    """etcd's members, leader, health and database size (what could be read of them)."""
    membership = Membership(db)
    found: dict[str, Any] = {}
    try:
        found["members"] = [
            {"id": f"{m.id:x}", "name": m.name, "peer_urls": list(m.peer_urls),
             "client_urls": list(m.client_urls), "learner": m.learner}
            for m in await membership.list()
        ]  # fmt: skip
        found["status"] = await membership.status()
    except Exception as exc:
        found["error"] = repr(exc)
    found["health"] = await etcd_health(db, tls)
    return found


async def ephemeral_token(db: ConfigDB, user: str, why: str) -> tuple[str, str]:
    """An administrator token for `user` that vanishes with its lease: (token, its key)."""
    token = new_token()
    now = time.time()
    record = TokenRecord(
        id=new_id()[:13],
        user=user,
        role=Role.admin,
        kind="api",
        description=why,
        created_at=now,
        expires_at=now + TOKEN_TTL,
    )
    key = keys.token(token_hash(token))
    await db.create(key, record, lease=await db.grant(TOKEN_TTL))
    return token, key


@dataclass
class Findings:
    """What a bundle is made of, before it is written."""

    config: dict[str, list[Any]]
    hidden: set[str]  # secret values, to be searched for in every text
    parts: dict[str, dict[str, Any]]  # node -> its part
    missing: set[str]  # nodes that did not answer in time
    etcd: dict[str, Any]
    failed: list[Any]
    firing: list[Any]


class SupportBundles:
    """This node's bundles: building them (the task handler), listing, reading, mailing."""

    def __init__(
        self,
        db: ConfigDB,
        node: str,
        state_dir: Path,
        http: httpx.AsyncClient,
        store: Callable[[], Store | None] = lambda: None,
        node_versions: Mapping[str, str] | None = None,
        notify: Context | None = None,
        tls: EtcdTls | None = None,
    ):
        self.db = db
        self.node = node
        self.state_dir = state_dir
        self.directory = state_dir / "support"
        self.http = http
        self.store = store
        self.node_versions = dict(node_versions or {})
        self.notify = notify
        self.tls = tls

    # -- this node's part, for whoever builds ---------------------------------------------

    async def node_part(self) -> dict[str, Any]:
        own = {**versions(), **self.node_versions}
        return await asyncio.to_thread(
            support.node_part, self.state_dir, self.store(), own, time.time()
        )

    # -- building (the support.bundle task) -----------------------------------------------

    async def build(self, ctx: TaskContext) -> dict[str, Any]:
        params = ctx.params(SupportBundleParams)
        started = time.monotonic()
        user = ctx.task.user or "monica"
        found = await self._find(ctx, user)
        now = time.time()
        name = self._reserve(now)
        try:
            await ctx.progress(0.8, "writing the archive")
            info = BundleInfo(
                name=name,
                node=self.node,
                size=0,
                created_at=now,
                created_by=user,
                task=ctx.task.id,
                missing=sorted(found.missing),
            )
            data = await asyncio.to_thread(self._archive, info, found)
            info.size = len(data)
            await asyncio.to_thread(self._store, info, data)
        finally:
            (self.directory / f"{name}.part").unlink(missing_ok=True)
        took = time.monotonic() - started
        await ctx.progress(0.95, f"{name}: {len(data)} bytes in {took:.1f} s")
        result: dict[str, Any] = {"bundle": name, "node": self.node, "size": len(data),
                                  "missing": info.missing}  # fmt: skip
        if params.send:
            try:
                sent = await self.send(name)
            except (NotConfigured, NotifyError) as exc:
                raise TaskFailed(f"{name} was built but not sent: {exc}") from exc
            result["sent_to"] = sent.to
            await ctx.log(f"sent to {sent.to} through {sent.channel}")
        return result

    async def _find(self, ctx: TaskContext, user: str) -> Findings:
        """What goes into the bundle, read from the ConfigDB, etcd and every live node."""
        await ctx.progress(0.02, "reading the configuration")
        config, hidden = await config_part(self.db)
        token, token_key = await ephemeral_token(self.db, user, f"support bundle {ctx.task.id}")
        hidden.add(token)
        try:
            await ctx.progress(0.1, "asking every node for its logs and metrics")
            parts, missing = await self._gather(token, ctx)
        finally:
            with contextlib.suppress(Exception):
                await self.db.delete(token_key)
        await ctx.progress(0.7, "reading etcd, tasks and alerts")
        etcd = await etcd_part(self.db, self.tls)
        since = time.time() - FAILED_TASKS_DAYS * 86400
        failed = [
            t for t in await records(self.db, keys.TASKS)
            if t.get("state") == TaskState.failed.value and float(t.get("updated_at", 0)) > since
        ]  # fmt: skip
        firing = [a for a in await records(self.db, keys.ALERTS) if a.get("state") == "firing"]
        return Findings(config, hidden, parts, missing, etcd, failed, firing)

    def _archive(self, info: BundleInfo, found: Findings) -> bytes:
        archive = support.Archive(root=info.name.removesuffix(".tar.gz"), secrets=found.hidden)
        archive.add_json(
            "versions.json",
            {n: p.get("versions", {}) for n, p in found.parts.items()},
            "heron, Python, kernel, QEMU, etcd and library versions of each node",
        )
        for file, stored in found.config.items():
            about = f"the ConfigDB's {file}, secrets removed"
            archive.add_json(f"config/{file}.json", stored, about)
        archive.add_json("etcd.json", found.etcd, "etcd members, leader, health and database size")
        archive.add_json("tasks-failed.json", found.failed,
                         f"tasks failed in the last {FAILED_TASKS_DAYS} days")  # fmt: skip
        archive.add_json("alerts-firing.json", found.firing, "alerts firing now")
        for node, part in sorted(found.parts.items()):
            for log_name, text in sorted(part.get("logs", {}).items()):
                archive.add_text(f"nodes/{node}/{log_name}", text, f"{node}: end of {log_name}")
            archive.add_text(
                f"nodes/{node}/metrics.json",
                json.dumps(part.get("metrics", {}), sort_keys=True),
                f"{node}: its own series, last hour, one point a minute (min, avg, max)",
            )
        archive.add_json("bundle.json", info.model_dump(), "this bundle: when, by whom, where")
        header = (
            f"Heron diagnostic bundle {info.name}\nbuilt on node {self.node} by "
            f"{info.created_by} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(info.created_at))}\n"
            f"nodes in it: {', '.join(sorted(found.parts)) or 'none'}\n"
            f"nodes that did not answer within {PEER_TIMEOUT:g} s: "
            f"{', '.join(sorted(found.missing)) or 'none'}"
        )
        return archive.build(header, info.created_at)

    async def _gather(
        self, token: str, ctx: TaskContext
    ) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Every live node's part (this one's read here), each other node asked at once and
        given PEER_TIMEOUT; the parts, and the nodes that did not answer in time."""
        nodes = await live_nodes(self.db)
        headers = {"authorization": f"Bearer {token}"}

        async def ask(name: str, url: str) -> tuple[str, dict[str, Any] | None]:
            try:
                async with asyncio.timeout(PEER_TIMEOUT):
                    reply = await self.http.get(
                        f"{url}/api/v1/support/node", headers=headers, timeout=PEER_TIMEOUT
                    )
            except (httpx.HTTPError, TimeoutError, OSError) as exc:
                log.info("support bundle: %s did not answer: %r", name, exc)
                return name, None
            if reply.status_code != 200:
                log.info("support bundle: %s answered %d", name, reply.status_code)
                return name, None
            part: dict[str, Any] = reply.json()
            return name, part

        async def own() -> tuple[str, dict[str, Any] | None]:
            return self.node, await self.node_part()

        others = [n for n in nodes.values() if n.name != self.node]
        asked = [own(), *(ask(n.name, n.api_url) for n in others)]
        parts: dict[str, dict[str, Any]] = {}
        missing = set()
        for done, answer in enumerate(asyncio.as_completed(asked), start=1):
            name, part = await answer
            if part is None:
                missing.add(name)
            else:
                parts[name] = part
            said = "did not answer" if part is None else "answered"
            await ctx.progress(0.1 + 0.6 * done / len(asked), f"{name} {said}")
        return parts, missing

    def _reserve(self, now: float) -> str:
        """A name of its own for a new bundle, held by its partial file until it is stored
        (two builds in the same second get two names)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        n = 1
        while True:
            suffix = "" if n == 1 else f"-{n}"
            name = f"heron-support-{self.node}-{stamp}{suffix}.tar.gz"
            n += 1
            if (self.directory / name).exists():
                continue
            try:
                os.close(os.open(self.directory / f"{name}.part", os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                continue
            return name

    def _store(self, info: BundleInfo, data: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / info.name
        for target, content in ((path, data), (_meta(path), info.model_dump_json().encode())):
            partial = target.with_name(target.name + ".part")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(content)
            partial.rename(target)
        self.prune()

    # -- the bundles kept here ------------------------------------------------------------

    def bundles(self) -> list[BundleInfo]:
        found = []
        for path in self.directory.glob("heron-support-*.tar.gz"):
            try:
                info = BundleInfo.model_validate_json(_meta(path).read_bytes())
            except (OSError, ValueError):
                stat = path.stat()
                info = BundleInfo(name=path.name, node=self.node, size=stat.st_size,
                                  created_at=stat.st_mtime, created_by="")  # fmt: skip
            found.append(info)
        return sorted(found, key=lambda b: b.created_at, reverse=True)

    def path(self, name: str) -> Path:
        path = self.directory / name
        if not is_bundle_name(name) or not path.is_file():
            raise NoBundle(f"no bundle {name!r} on node {self.node}")
        return path

    def delete(self, name: str) -> None:
        path = self.path(name)
        path.unlink(missing_ok=True)
        _meta(path).unlink(missing_ok=True)

    def prune(self, keep: int = KEEP) -> list[str]:
        """Delete all but the `keep` newest bundles; their names."""
        doomed = [b.name for b in self.bundles()[keep:]]
        for name in doomed:
            with contextlib.suppress(NoBundle, OSError):
                self.delete(name)
        return doomed

    # -- mail -------------------------------------------------------------------------------

    async def send(self, name: str) -> BundleSent:
        """Mail a bundle kept here to the support address, through the configured channel."""
        path = self.path(name)
        found = await self.db.get(ClusterSettings, keys.SETTINGS)
        settings = (found.value if found else ClusterSettings()).support
        if not settings.address:
            raise NotConfigured("no support address is set (cluster settings, support)")
        if not settings.channel:
            raise NotConfigured("no SMTP channel is set to send through (cluster settings)")
        channel = await self.db.get(Channel, keys.channel(settings.channel))
        if channel is None or not isinstance(channel.value.settings, SmtpSettings):
            raise NotConfigured(f"there is no SMTP channel {settings.channel!r}")
        if self.notify is None:
            raise NotConfigured("this node sends no mail")
        smtp = channel.value.settings
        data = await asyncio.to_thread(path.read_bytes)
        mail = bundle_mail(smtp.sender, settings.address, name, data, self.notify.cluster_name)
        await send_message(smtp, mail, self.notify)
        return BundleSent(name=name, to=settings.address, channel=channel.value.name)


def bundle_mail(sender: str, to: str, name: str, data: bytes, cluster: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = f"[Heron support] diagnostic bundle of cluster {cluster}: {name}"
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = make_msgid("heron")
    mail["Auto-Submitted"] = "auto-generated"
    mail["X-Heron-Cluster"] = cluster
    mail.set_content(
        f"Heron cluster {cluster}: the diagnostic bundle {name} ({len(data)} bytes) is "
        "attached; its README.txt lists what it holds. Secrets were removed.\n"
        "-- \n"
        f"Кластер Heron {cluster}: диагностический пакет {name} во вложении; файл README.txt "
        "в нём перечисляет содержимое. Секреты удалены.\n",
        cte="quoted-printable",
    )
    mail.add_attachment(data, maintype="application", subtype="gzip", filename=name)
    return mail


def _meta(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".tar.gz") + ".json")


# -- the leader: a bundle when a critical alert fires -------------------------------------


async def bundle_for_critical(
    db: ConfigDB, node: str, alerts: Mapping[str, Alert], t: float
) -> Task | None:
    """If the settings ask for it, a `support.bundle` task (mailed) for a critical alert
    that began firing since the last such bundle; at most one an hour. The task made."""
    found = await db.get(ClusterSettings, keys.SETTINGS)
    settings = (found.value if found else ClusterSettings()).support
    if not (settings.on_critical and settings.address and settings.channel):
        return None
    critical = sorted(
        (a for a in alerts.values()
         if a.state == "firing" and a.severity.value == "critical"
         and a.started_at > t - AUTO_INTERVAL
         and a.silenced_by is None and a.inhibited_by is None),
        key=lambda a: a.started_at,
    )  # fmt: skip
    if not critical:
        return None
    # The last bundle made for an alert: tasks are kept a day, longer than the hour counted.
    tasks = [e.value for e in await db.list(Task, keys.TASKS)]
    last = max(
        (
            task.created_at
            for task in tasks
            if task.kind == TaskKind.support_bundle and task.params.get("alert")
        ),
        default=0.0,
    )
    if t - last < AUTO_INTERVAL:
        return None
    critical = [a for a in critical if a.started_at > last]
    if not critical:
        return None
    task = new_task(
        TaskKind.support_bundle,
        node,
        "",
        "monica",
        SupportBundleParams(send=True, alert=critical[0].id),
    )
    await db.create(keys.task(task.id), task)
    log.info("support bundle for the critical alert %s: task %s", critical[0].id, task.id)
    return task
