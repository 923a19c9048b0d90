"""What every route needs, passed in once when the app is built (no global state)."""

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from heron.agent.support import SupportBundles
from heron.api.listing import RenderedViews
from heron.audit import AuditLog
from heron.configdb import ConfigDB
from heron.hypervisor.qga import GuestAgent
from heron.models.alerts import Alert, Channel
from heron.monitor.live import Live
from heron.monitor.notify import Context
from heron.monitor.recorder import Recorder
from heron.scheduler.inventory import Inventory


@dataclass
class ApiContext:
    db: ConfigDB
    node: str
    state_dir: Path
    audit: AuditLog
    http: httpx.AsyncClient
    inventory: Inventory  # watch-fed copies for placement and the big lists
    # The JSON of each VM's view, kept until the VM, its status or its node's liveness change.
    vm_views: RenderedViews[Any] = field(default_factory=RenderedViews)
    # A VM of this node to its guest agent: herond shares its VM controller's, so API calls
    # and the controller's probes take turns on the one channel.
    guest_agent: Callable[[str], GuestAgent] | None = None
    # What calls to other nodes check their certificates with (the cluster CA): `http` has
    # it already; the console relay's websockets need it too.
    peer_tls: ssl.SSLContext | None = None
    # This node's metrics (its history and latest samples); None where nothing is measured.
    monitor: Recorder | None = None
    # The 1 s live view of the objects of this node being watched; None: none is offered.
    live: Live | None = None
    # Sends one channel its notices (raising on failure): for the channels' "send test".
    deliver: Callable[[Channel, list[Alert]], Awaitable[None]] | None = None
    # Who the cluster is to the outside (its id makes the SNMP engine ID).
    notify: Context | None = None
    # This node's diagnostic bundles (building them is a task; listing, serving, mailing here).
    support: SupportBundles | None = None
