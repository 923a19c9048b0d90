"""What protection policies decide, without I/O: when a VM's next round is due, which points
retention removes, and what the inventory shows of a VM (its RPO achieved).

Retention keeps the newest `retention` points, and the newest point of each of the last
`hourly` hours, `daily` days and `monthly` months (UTC); it removes the rest. The newest point
is never removed (an increment needs it as its parent, and it is the RPO).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from heron.models.dr import DRPoint, DRStatus, Protection, ProtectionPolicy


def due(protection: Protection, status: DRStatus | None, now: float) -> bool:
    """Whether a round of the VM should start now: none ran yet, or the last one started at
    least an interval ago (a failed round is retried at the next interval, not at once)."""
    if status is None or status.last_attempt is None:
        return True
    return now >= status.last_attempt + protection.policy.interval_seconds


def next_round(protection: Protection, status: DRStatus | None, now: float) -> float:
    """When the next round is due (now, if it is)."""
    if status is None or status.last_attempt is None:
        return now
    return max(now, status.last_attempt + protection.policy.interval_seconds)


def expired(points: Sequence[tuple[str, float]], policy: ProtectionPolicy) -> list[str]:
    """The ids of the points (id, instant) retention removes, oldest first: a point stays if
    it is one of the newest `retention`, or the newest of its hour, day or month (UTC) among
    the newest `hourly`, `daily` or `monthly` such periods that have a point (as Proxmox
    Backup Server's keep-hourly/daily/monthly). The newest point always stays."""
    ordered = sorted(points, key=lambda p: (p[1], p[0]), reverse=True)  # newest first
    kept = {pid for pid, _ in ordered[: max(1, policy.retention)]}
    for count, period in (
        (policy.hourly, "%Y-%m-%dT%H"),
        (policy.daily, "%Y-%m-%d"),
        (policy.monthly, "%Y-%m"),
    ):
        seen: set[str] = set()
        for pid, created in ordered:
            if len(seen) >= count:
                break
            bucket = time.strftime(period, time.gmtime(created))
            if bucket not in seen:
                seen.add(bucket)
                kept.add(pid)
    return [pid for pid, _ in reversed(ordered) if pid not in kept]


@dataclass
class InventoryRow:
    vm: str
    name: str
    node: str | None
    protected: bool
    interval_seconds: int | None
    retention: int | None
    hourly: int | None
    daily: int | None
    monthly: int | None
    points: int
    last_point: str | None
    last_point_at: float | None
    rpo_seconds: float | None  # now - the last point's instant: what would be lost now
    last_attempt: float | None
    last_error: str | None
    last_kind: str | None
    last_bytes_read: int | None
    last_bytes_written: int | None
    last_chunks_sent: int | None
    store_node: str | None


def last_point(status: DRStatus | None) -> DRPoint | None:
    if status is None or not status.points:
        return None
    return max(status.points, key=lambda p: (p.created, p.id))


def inventory_row(
    vm: str,
    name: str,
    node: str | None,
    protection: Protection | None,
    status: DRStatus | None,
    now: float,
) -> InventoryRow:
    """One VM's line of the inventory. Its points are still listed after it is unprotected
    (until they are deleted); its RPO is shown only while it is protected."""
    latest = last_point(status)
    return InventoryRow(
        vm=vm,
        name=name,
        node=node,
        protected=protection is not None,
        interval_seconds=protection.policy.interval_seconds if protection else None,
        retention=protection.policy.retention if protection else None,
        hourly=protection.policy.hourly if protection else None,
        daily=protection.policy.daily if protection else None,
        monthly=protection.policy.monthly if protection else None,
        points=len(status.points) if status else 0,
        last_point=latest.id if latest else None,
        last_point_at=latest.created if latest else None,
        rpo_seconds=max(0.0, now - latest.created) if latest and protection else None,
        last_attempt=status.last_attempt if status else None,
        last_error=status.last_error if status else None,
        last_kind=status.last_kind if status else None,
        last_bytes_read=status.last_bytes_read if status else None,
        last_bytes_written=status.last_bytes_written if status else None,
        last_chunks_sent=status.last_chunks_sent if status else None,
        store_node=status.node if status else None,
    )
