"""herond: the node agent's process, composed here of the API and the controllers of agent/,
ha/ and scheduler/ (the one module that may import them all).

It serves the API, keeps the node registered, carries out the node's tasks and watches its
VMs. It holds no state of its own that matters: etcd has the desired state, QEMU processes run
on their own, so it can be killed and started again at any time.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

import heron
from heron.agent.alerts import AlertController, NodeAlerts
from heron.agent.ardfs import IoSupervisor
from heron.agent.certificates import (
    CertificateKeeper,
    cluster_authority,
    forget_pending,
    join_cluster,
    local_authority,
    node_names,
    pending_authority,
)
from heron.agent.demand import DemandPublisher
from heron.agent.dr import DRScheduler
from heron.agent.endpoints import EndpointFollower
from heron.agent.etcd_members import MemberKeeper, MembershipController
from heron.agent.handlers import Handlers
from heron.agent.imports import import_slots
from heron.agent.iscsi import IscsiSupervisor
from heron.agent.leader import LeaderRole
from heron.agent.migration import Migrations
from heron.agent.monitor import (
    Measurements,
    ipmi_source,
    live_samplers,
    node_source,
    service_samples,
    storage_samples,
    switch_port_source,
    vm_info_source,
    vm_source,
)
from heron.agent.mounts import MountKeeper
from heron.agent.network import NetworkController
from heron.agent.registration import Registration
from heron.agent.reservation import CoreReservation
from heron.agent.support import SupportBundles, bundle_for_critical
from heron.agent.tasks import TaskRunner
from heron.agent.vms import VMController
from heron.api.app import create_app
from heron.api.auth import hash_password
from heron.api.context import ApiContext
from heron.audit import AuditLog
from heron.configdb import UNREACHABLE, ConfigDB, Conflict, keys
from heron.configdb.client import EtcdTls
from heron.configdb.etcd import EtcdMember
from heron.configdb.lease import startup_endpoints
from heron.ha.controller import FailoverController
from heron.ha.fence import ha_vms_running, tell_grace, write_beat
from heron.hypervisor import cgroups
from heron.hypervisor.accel import choose_accelerator, qemu_version
from heron.models.alerts import Alert
from heron.models.auth import Role, User
from heron.models.node import ARDFS_PEER_TLS, MIGRATION_TLS, WATCHDOG_PRESENCE, Node
from heron.models.storage import Pool
from heron.models.task import TaskKind
from heron.monitor.catalog import METRICS
from heron.monitor.collect.ipmi import IpmiPoller
from heron.monitor.live import Live
from heron.monitor.notify import Context, notifier
from heron.monitor.recorder import Recorder
from heron.monitor.store import Store
from heron.network.dataplane import DataPlane
from heron.scheduler.drs import BalancingController
from heron.scheduler.inventory import Inventory
from heron.scheduler.rebalance import RebalanceController
from heron.tls import Authority, NodeCredentials, TlsError, authority_name, fingerprint
from heron.util.proc import read_pidfile, spawn_detached, terminate

log = logging.getLogger("herond")

T = TypeVar("T")
# How long a stopping agent may take before it exits anyway (herond.bounded).
SHUTDOWN_LIMIT = 60.0

DEFAULT_CACHE = Path(os.environ.get("HERON_CACHE_DIR", "/var/cache/heron"))


@dataclass
class AgentConfig:
    name: str
    state_dir: Path
    address: str
    api_port: int
    etcd: list[str]
    lease_ttl: int = 3
    memory_mib: int | None = None
    # client and peer port on which this node may run an etcd member when the leader asks
    etcd_member_ports: tuple[int, int] | None = None
    embedded_etcd: EtcdMember | None = None
    admin_password_file: Path | None = None
    # The network namespace of this node's bridges and taps (a devcluster's stand-in for a
    # host); None: the host's own.
    data_netns: str | None = None
    # The address other nodes' VXLAN tunnels reach this node on (default: `address`).
    underlay: str | None = None
    # Serve the API over plain HTTP (asked for explicitly; HTTPS is the default).
    insecure_http: bool = False
    # The administrator's own CA (certificate file, key file), stored on a new cluster.
    own_ca: tuple[Path, Path] | None = None
    # More names and addresses for this node's certificate (a DNS name, a floating address).
    cert_names: tuple[str, ...] = ()
    # etcd speaks TLS with client certificates (https:// endpoints; every new cluster since
    # issue 16); False: a plain etcd, as clusters made before.
    etcd_tls: bool = False
    # Joining a cluster whose etcd speaks TLS, without a certificate yet: (API URL of a node,
    # one-time join token, SHA-256 fingerprint of the cluster CA).
    join: tuple[str, str, str] | None = None


def _forget_stop_signals() -> None:
    """In a child forked without exec (pyroute2 forks one to enter a namespace, and sends it
    SIGTERM when done with it): the inherited loop wakeup fd would carry that SIGTERM to
    herond's own loop, which would stop as if told to. The child gets the defaults back."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


def _versions() -> dict[str, str]:
    versions = {"heron": heron.__version__}
    for name, args in (
        ("qemu", ["qemu-system-x86_64", "--version"]),
        ("etcd", ["etcd", "--version"]),
    ):
        with contextlib.suppress(OSError):
            out = subprocess.run(args, capture_output=True, text=True, timeout=10).stdout
            versions[name] = out.splitlines()[0].split("version")[-1].strip(" :") if out else "?"
    return versions


async def bootstrap(db: ConfigDB, password_file: Path | None) -> None:
    """First start of a cluster: a `local` pool and an admin user. Harmless to repeat."""
    with contextlib.suppress(Conflict):
        await db.create(keys.pool("local"), Pool(name="local", created_at=time.time()))
    if password_file is None or await db.list(User, keys.USERS):
        return
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(12)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.touch(mode=0o600)
        password_file.write_text(password + "\n")
    admin = User(
        name="admin", role=Role.admin, password_hash=hash_password(password), created_at=time.time()
    )
    with contextlib.suppress(Conflict):
        await db.create(keys.user("admin"), admin)


async def etcd_credentials(
    config: AgentConfig, credentials: NodeCredentials, names: list[str]
) -> Authority | None:
    """Before etcd over TLS can be reached (or, for the first node, started): this node's
    certificate. Returns the CA this node made or loaded itself, to be stored in the ConfigDB
    once etcd is up; None when the node had a certificate already or got one by joining."""
    if pending_authority(credentials) or config.own_ca is not None:
        return local_authority(credentials, names, config.own_ca)
    if credentials.certificate() is not None:
        return None
    if config.join is not None:
        await join_cluster(*config.join, credentials, names)
        return None
    member = config.embedded_etcd
    if member is not None and member.cluster_state == "new" and len(member.initial_cluster) <= 1:
        return local_authority(credentials, names, None)  # the first node of a new cluster
    raise TlsError(
        "this node has no certificate for etcd over TLS: join it with a token (`heron "
        "cluster join` on the cluster prints the command), or give every member of a new "
        "multi-member etcd the same --ca-cert and --ca-key"
    )


async def patiently(what: str, step: Callable[[], Awaitable[T]], first: float = 1.0) -> T:
    """A startup step that needs the ConfigDB, tried until etcd answers: a node that starts
    cut off from the etcd quorum (a partition, the other nodes still booting after a power
    cut) comes up when it returns, instead of exiting into its service manager's restarts."""
    delay = first
    while True:
        try:
            return await step()
        except UNREACHABLE as exc:
            log.warning("%s: the ConfigDB cannot be reached (%r); again in %g s", what, exc, delay)
            await asyncio.sleep(delay)  # etcd's return is not announced
            delay = min(delay * 2, 15.0)


async def run(config: AgentConfig) -> None:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    credentials = NodeCredentials(config.state_dir / "tls")
    names = node_names(config.name, config.address, config.cert_names)
    local = await etcd_credentials(config, credentials, names) if config.etcd_tls else None
    etcd_tls = EtcdTls.of(credentials) if config.etcd_tls else None
    if config.embedded_etcd is not None:
        config.embedded_etcd.start()
        await asyncio.to_thread(config.embedded_etcd.wait_healthy)
    accelerator = await asyncio.to_thread(choose_accelerator, DEFAULT_CACHE)
    endpoints = startup_endpoints(config.etcd, config.state_dir)
    db = ConfigDB(endpoints, etcd_tls)
    await db.connect()
    await patiently("first start", lambda: bootstrap(db, config.admin_password_file))
    await patiently("the cluster CA", lambda: cluster_authority(db, config.own_ca, local))
    forget_pending(credentials)
    certificates = CertificateKeeper(db, credentials, names)
    await patiently("the node certificate", certificates.ensure)
    scheme = "http" if config.insecure_http else "https"
    if config.insecure_http:
        log.warning("the API is served over plain HTTP (--insecure-http): passwords and "
                    "tokens cross the network readable")  # fmt: skip
    node = Node(
        name=config.name,
        address=config.address,
        api_url=f"{scheme}://{_host(config.address)}:{config.api_port}",
        cpus=os.cpu_count() or 1,
        memory_mib=config.memory_mib or _memory_mib(),
        etcd_client_url=_url(config.address, config.etcd_member_ports, 0, config.etcd_tls),
        etcd_peer_url=_url(config.address, config.etcd_member_ports, 1, config.etcd_tls),
        accelerator=accelerator,
        versions=_versions(),
        started_at=time.time(),
        underlay=config.underlay or config.address,
        features=[WATCHDOG_PRESENCE, MIGRATION_TLS, ARDFS_PEER_TLS],
    )
    start_fence_watchdog(config.state_dir, config.lease_ttl, config.name, config.etcd)
    registration = Registration(
        endpoints,
        node,
        config.lease_ttl,
        on_renewed=lambda: write_beat(config.state_dir),
        tls=etcd_tls,
    )
    cores = CoreReservation(db, config.name, config.state_dir)
    vms = VMController(
        db,
        config.name,
        config.state_dir,
        accelerator,
        on_launch=cores.pin_vm,
        qemu_version=await asyncio.to_thread(qemu_version),
        cgroup_root=cgroups.ROOT,
    )
    audit = AuditLog(config.state_dir / "audit.jsonl", config.name)
    migrations = Migrations(db, config.name, config.address, vms, audit, credentials)
    handlers = Handlers(db, config.name, config.state_dir, vms, migrations)
    inventory = Inventory(db)
    network = NetworkController(
        db,
        config.name,
        DataPlane(config.data_netns),
        config.state_dir,
        inventory,
        running_here=vms.running_here,
    )
    vms.network = network
    # Calls to other nodes check their certificates against the cluster CA.
    peer_tls = credentials.client_context()
    serving = None if config.insecure_http else credentials.server_context()
    if serving is not None:
        certificates.serving.append(serving)
    recorder = Recorder(
        await asyncio.to_thread(Store, config.state_dir / "monitor"),
        {m.name: m.kind for m in METRICS.values()},
    )
    ipmi = IpmiPoller()
    notify = notify_context(credentials, config.name)
    deliver = notifier(notify, alerts_link(node.api_url))
    node_alerts = NodeAlerts(db, config.name, audit)
    vms.on_crash = node_alerts.vm_crashed
    demand = DemandPublisher(db, config.name)
    runner = TaskRunner(
        db, config.name, handlers.table(), {TaskKind.v2v_import: lambda: import_slots(db)}
    )
    measurements = Measurements(
        recorder,
        [
            ("node", node_source()),
            ("vms", vm_source(vms, network.plane.netns)),
            ("vm names", vm_info_source(vms, inventory)),
            ("ipmi", ipmi_source(ipmi)),
            ("storage", partial(storage_samples, inventory, config.state_dir)),
            ("services", partial(service_samples, db, config.name, credentials, runner, inventory)),
            ("switches", switch_port_source(network, network.plane.netns)),
        ],
        [("alert rules", node_alerts.round), ("measured demand", demand.round)],
    )
    async with httpx.AsyncClient(timeout=10, verify=peer_tls) as http:
        handlers.support = SupportBundles(
            db,
            config.name,
            config.state_dir,
            http,
            store=lambda: recorder.store,
            node_versions=node.versions,
            notify=notify,
            tls=etcd_tls,
        )
        ctx = ApiContext(
            db=db,
            node=config.name,
            state_dir=config.state_dir,
            audit=audit,
            http=http,
            inventory=inventory,
            guest_agent=vms.guest_agent,
            peer_tls=peer_tls,
            monitor=recorder,
            live=Live(
                live_samplers(config.name, vms, network.plane.netns),
                {m.name: m.kind for m in METRICS.values()},
            ),
            deliver=deliver,
            notify=notify,
            support=handlers.support,
        )
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(ctx),
                host=config.address,
                port=config.api_port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                # One context for the server's life: a renewed certificate is loaded into it.
                ssl_context_factory=None if serving is None else lambda _c, _d: serving,
            )
        )
        # uvicorn (0.29 on) has no install_signal_handlers to turn off: while it serves it
        # catches SIGINT/SIGTERM too and stops the API; the loop's handlers below still see
        # the signal (asyncio's wakeup fd gets every one), so herond stops as before.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        os.register_at_fork(after_in_child=_forget_stop_signals)
        await vms.resume()
        controllers = [
            FailoverController(inventory, ctx.audit).run,
            BalancingController(inventory, ctx.audit).run,
            RebalanceController(inventory, ctx.audit).run,
            MembershipController(db, ctx.audit).run,
            AlertController(
                inventory,
                ctx.audit,
                deliver,
                etcd_tls,
                after_round=partial(bundle_for_critical, db, config.name),
            ).run,
        ]
        leader = LeaderRole(db, config.name, controllers)
        background = [
            asyncio.create_task(c, name=n)
            for n, c in (
                ("pulse", registration.pulse_forever()),
                ("tasks", runner.run()),
                ("dr", DRScheduler(db, config.name, vms).run()),
                ("api", server.serve()),
                ("leader", leader.run()),
                (
                    "ardfs",
                    IoSupervisor(
                        db,
                        config.name,
                        config.address,
                        config.state_dir,
                        cores.pin_io,
                        credentials,
                    ).run(),
                ),
                (
                    "iscsi",
                    IscsiSupervisor(db, config.name, config.address, config.state_dir).run(),
                ),
                ("io-cores", cores.run()),
                ("certificates", certificates.run()),
                ("ha-marks", vms.follow_ha(inventory)),
                ("agent-grace", tell_grace(db, config.state_dir, config.lease_ttl)),
                ("network", network.run()),
                ("nfs-mounts", MountKeeper(db, config.state_dir).run()),
                ("metrics", measurements.run()),
                ("demand", demand.run()),
                (
                    "etcd-endpoints",
                    EndpointFollower(db, config.state_dir, registration.use_endpoints).run(),
                ),
            )
        ]
        if ipmi.disabled is None:  # a BMC to read (a background task must not end)
            background.append(asyncio.create_task(ipmi.run(), name="ipmi"))
        else:
            log.info("IPMI sensors are not read: %s", ipmi.disabled)
        if config.etcd_member_ports is not None:
            client_port, peer_port = config.etcd_member_ports
            keeper = MemberKeeper(
                db, config.name, config.state_dir, config.address, client_port, peer_port, etcd_tls
            )
            background.append(asyncio.create_task(keeper.run(), name="etcd-member"))
        registration.start()
        await registration.wait_registered()
        log.info("node %s up: API %s, accelerator %s", config.name, node.api_url, accelerator)
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *background], return_when=asyncio.FIRST_COMPLETED)
        for job in done:
            if job is not waiter and job.exception() is not None:
                log.error("%s stopped: %r", job.get_name(), job.exception())

        async def shut_down() -> None:
            server.should_exit = True
            await leader.stop()
            # With HA VMs running, the lease must run out instead: the watchdog stops them a
            # second before the leader may start them elsewhere. Revoking it now would let
            # the leader act while they still run.
            await registration.stop(leave=not ha_vms_running(config.state_dir))
            for job in background:
                job.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if ctx.live is not None:
                ctx.live.stop()
            await inventory.stop()
            await db.close()

        await bounded(shut_down(), SHUTDOWN_LIMIT)


async def bounded(stopping: Coroutine[Any, Any, None], limit: float) -> None:
    """Stop within `limit` seconds: a step that hangs (a call to an etcd that never answers,
    a job deaf to its cancel) must not leave a process that neither works nor ends, which
    its service manager would wait on forever. What was still running is logged."""
    job = asyncio.create_task(stopping, name="shutdown")
    done, _ = await asyncio.wait([job], timeout=limit)
    if job in done:
        job.result()
        return
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            frames = task.get_stack(limit=1)
            where = f"{frames[0].f_code.co_filename}:{frames[0].f_lineno}" if frames else "?"
            log.error("still running after %g s of shutdown: %s at %s", limit, task.get_name(),
                      where)  # fmt: skip
    logging.shutdown()
    os._exit(1)


def _host(address: str) -> str:
    """An address as the host part of a URL (an IPv6 one in brackets)."""
    return f"[{address}]" if ":" in address else address


def _url(host: str, ports: tuple[int, int] | None, which: int, tls: bool) -> str | None:
    return f"{'https' if tls else 'http'}://{_host(host)}:{ports[which]}" if ports else None


def start_fence_watchdog(state_dir: Path, ttl: int, name: str, endpoints: list[str]) -> int:
    """The fence watchdog runs beside the agent, in a process of its own; one per node.

    One that runs with other arguments (started by an older release, or with another TTL) is
    replaced: the agent is alive meanwhile, so nothing needs fencing in the moment between.
    """
    pidfile = state_dir / "fence.pid"
    command = [
        sys.executable,
        "-m",
        "heron.ha.fence",
        "--state-dir",
        str(state_dir),
        "--ttl",
        str(ttl),
        "--name",
        name,
        "--etcd",
        ",".join(endpoints),
    ]
    pid = read_pidfile(pidfile, str(state_dir))
    if pid is not None:
        if _cmdline(pid) == command[1:]:
            return pid
        log.info("replacing the fence watchdog %d, started with other arguments", pid)
        terminate(pid, str(state_dir))
    return spawn_detached(command, state_dir / "fence.log", pidfile)


def _cmdline(pid: int) -> list[str]:
    """A process's arguments after its program (the interpreter may be named differently)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[1:-1]
    except OSError:
        return []


def parse(argv: list[str] | None = None) -> AgentConfig:
    parser = argparse.ArgumentParser(prog="herond", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=os.uname().nodename.split(".")[0].lower())
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/heron"))
    parser.add_argument("--address", default="127.0.0.1", help="address the API listens on")
    parser.add_argument("--api-port", type=int, default=8443)
    parser.add_argument(
        "--etcd",
        help="comma-separated client endpoints of the etcd cluster "
        "(default: the embedded member, or 127.0.0.1:2379)",
    )
    parser.add_argument(
        "--embedded-etcd",
        action="store_true",
        help="run a voting etcd member on this node (started under the state dir if none runs)",
    )
    parser.add_argument("--etcd-client-port", type=int, default=2379)
    parser.add_argument("--etcd-peer-port", type=int, default=2380)
    parser.add_argument(
        "--etcd-initial-cluster",
        help="name=http://host:peerport,... of every voting member when bootstrapping a "
        "3- or 5-member cluster (default: this member alone)",
    )
    parser.add_argument("--etcd-cluster-state", choices=["new", "existing"], default="new")
    parser.add_argument(
        "--etcd-member-ports",
        metavar="CLIENT:PEER",
        help="this node may run an etcd member on these ports when the cluster grows "
        "(implied by --embedded-etcd)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=int,
        default=3,
        help="seconds after which a silent node counts as failed; its HA VMs are fenced a "
        "second before that",
    )
    parser.add_argument(
        "--memory-mib", type=int, help="memory offered to VMs (default: all of the host's)"
    )
    parser.add_argument(
        "--data-netns", help="network namespace of this node's switches (default: the host's)"
    )
    parser.add_argument(
        "--underlay",
        help="address other nodes' VXLAN tunnels reach this node on (default: --address)",
    )
    parser.add_argument(
        "--admin-password-file",
        type=Path,
        help="on a new cluster, create user admin with the password in this "
        "file (generated and written there if it does not exist)",
    )
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve the API and web UI over plain HTTP instead of HTTPS (not for networks "
        "anyone else can listen on: passwords and tokens cross it readable)",
    )
    parser.add_argument(
        "--ca-cert",
        type=Path,
        help="on a new cluster, use this CA certificate (PEM) instead of making one; with --ca-key",
    )
    parser.add_argument("--ca-key", type=Path, help="the private key (PEM) of --ca-cert")
    parser.add_argument(
        "--etcd-tls",
        action="store_true",
        help="etcd speaks TLS with client certificates of the cluster CA: the embedded member "
        "and any this node starts serve it, endpoints without a scheme are https:// (implied "
        "by https:// endpoints). A new cluster's first node makes its CA (or uses --ca-cert).",
    )
    parser.add_argument(
        "--join",
        metavar="API_URL",
        help="join a cluster whose etcd speaks TLS through this node's API (with --join-token "
        "and --ca-fingerprint; `heron cluster join` prints the whole command)",
    )
    parser.add_argument("--join-token", help="the one-time join token (see --join)")
    parser.add_argument(
        "--ca-fingerprint", help="SHA-256 fingerprint of the cluster CA, checked when joining"
    )
    parser.add_argument(
        "--cert-name",
        action="append",
        default=[],
        help="another host name or address this node's certificate is valid for (repeatable)",
    )
    args = parser.parse_args(argv)
    if (args.ca_cert is None) != (args.ca_key is None):
        parser.error("--ca-cert and --ca-key go together")
    join = (args.join, args.join_token, args.ca_fingerprint)
    if any(join) and not all(join):
        parser.error("--join, --join-token and --ca-fingerprint go together")
    etcd_tls = args.etcd_tls or any(
        e.strip().startswith("https://") for e in (args.etcd or "").split(",")
    )
    if all(join) and not etcd_tls:
        parser.error("--join is for clusters whose etcd speaks TLS (--etcd-tls)")
    tls_files = EtcdTls.in_state_dir(args.state_dir) if etcd_tls else None
    member = None
    if args.embedded_etcd:
        initial = dict(
            item.strip().split("=", 1)
            for item in (args.etcd_initial_cluster or "").split(",")
            if item.strip()
        )
        member = EtcdMember(
            name=args.name,
            data_dir=args.state_dir / "etcd",
            host=args.address,
            client_port=args.etcd_client_port,
            peer_port=args.etcd_peer_port,
            initial_cluster=initial,
            cluster_state=args.etcd_cluster_state,
            tls=tls_files,
        )
    default = member.endpoint if member else "127.0.0.1:2379"
    ports = None
    if args.etcd_member_ports:
        client, _, peer = args.etcd_member_ports.partition(":")
        ports = (int(client), int(peer))
    elif member is not None:
        ports = (member.client_port, member.peer_port)
    endpoints = [e.strip() for e in (args.etcd or default).split(",") if e.strip()]
    if etcd_tls:
        endpoints = [e if "://" in e else f"https://{e}" for e in endpoints]
    return AgentConfig(
        name=args.name,
        state_dir=args.state_dir,
        address=args.address,
        api_port=args.api_port,
        etcd=endpoints,
        lease_ttl=max(args.lease_ttl, 2),
        memory_mib=args.memory_mib,
        etcd_member_ports=ports,
        embedded_etcd=member,
        admin_password_file=args.admin_password_file,
        data_netns=args.data_netns,
        underlay=args.underlay,
        insecure_http=args.insecure_http,
        own_ca=(args.ca_cert, args.ca_key) if args.ca_cert else None,
        cert_names=tuple(args.cert_name),
        etcd_tls=etcd_tls,
        join=join if all(join) else None,
    )


def notify_context(credentials: NodeCredentials, node: str) -> Context:
    """Who sends the notices: the cluster, known by its CA (every node has the same one;
    the SNMP engine ID is made of it, so it stays when the leader changes)."""
    authority = credentials.authority()
    if authority is None:
        return Context(cluster_id=node, cluster_name=node)
    return Context(
        cluster_id=fingerprint(authority).replace(":", "").lower(),
        cluster_name=authority_name(authority),
    )


def alerts_link(api_url: str) -> Callable[[Alert], str | None]:
    """A notice's link: the alerts page of the node that sent it."""

    def link(alert: Alert) -> str | None:
        return f"{api_url}/alerts"

    return link


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=os.environ.get("HERON_LOG", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # httpx logs every request at INFO: the leader asks each etcd member's health every round.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(run(parse(argv)))


if __name__ == "__main__":
    main()
