"""What every route needs, passed in once when the app is built (no global state)."""

from dataclasses import dataclass
from pathlib import Path

import httpx

from heron.audit import AuditLog
from heron.configdb import ConfigDB
from heron.scheduler.inventory import Inventory


@dataclass
class ApiContext:
    db: ConfigDB
    node: str
    state_dir: Path
    audit: AuditLog
    http: httpx.AsyncClient
    inventory: Inventory  # watch-fed copies for placement
