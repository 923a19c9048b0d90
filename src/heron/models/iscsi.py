"""iSCSI exports of ARDFS volumes: the LUN an outside host (ESXi, a Linux initiator) uses.

The export record says what is wanted (and, once the exporting node's agent serves it, where:
`portal`, `state`). Its CHAP secret is kept apart, under keys.ISCSI_SECRETS, which no API
route returns and the UI's event stream does not follow: the API shows it once, when it is
set."""

import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from heron.models.common import Name, Record

IQN_PATTERN = r"^iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[A-Za-z0-9.:_-]+)?$"
IQN_PREFIX = "iqn.2026-12.org.heron"
Iqn = Annotated[str, Field(pattern=IQN_PATTERN, max_length=223)]
# RFC 7143: CHAP secrets of at least 12 bytes (Windows and ESXi want 12-16); printable, no
# spaces (tgtadm and initiators' configuration files take it as one word).
ChapSecret = Annotated[str, Field(pattern=r"^[!-~]{12,16}$")]
ChapUser = Annotated[str, Field(pattern=r"^[A-Za-z0-9._@:-]{1,64}$")]

ExportState = Literal["pending", "serving", "failed"]


def target_iqn(pool: str, volume_name: str, volume_id: str) -> str:
    """The target's name: Heron's prefix, the pool and volume names (readable on the
    initiator's side) and the first part of the volume's id, unique to this cluster's
    volume (a volume deleted and made again under its name is another target)."""
    readable = re.sub(r"[^a-z0-9.-]", "-", f"{pool}.{volume_name}")
    return f"{IQN_PREFIX}:{readable}.{volume_id.split('-')[0]}"


class IscsiExport(Record):
    volume: str = Field(description="the volume's id")
    pool: Name
    volume_name: Name
    node: Name = Field(description="the node whose tgtd serves the LUN (the volume's owner)")
    iqn: Iqn
    chap_user: ChapUser
    initiators: list[Iqn] = Field(description="initiator names allowed to log in")
    created_by: str
    created_at: float
    state: ExportState = "pending"
    portal: str | None = Field(default=None, description="address:port, once served")
    error: str | None = None


class IscsiSecret(Record):
    chap_secret: ChapSecret


class IscsiExportCreate(BaseModel):
    model_config = {"extra": "forbid"}

    initiators: list[Iqn] = Field(
        min_length=1, max_length=64, description="initiator IQNs allowed to log in (ACL)"
    )
    chap_user: ChapUser | None = Field(default=None, description="default: the volume's name")
    chap_secret: ChapSecret | None = Field(
        default=None, description="12-16 printable characters; default: one is generated"
    )


class IscsiExportView(IscsiExport):
    chap_secret: str | None = Field(
        default=None, description="only in the reply that set it: never shown again"
    )
