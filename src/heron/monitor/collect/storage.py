"""Storage as samples: pool capacity as this node sees it, and ARDFS from heron-io's status
(its disks, volumes, rebuilds and peers) and process."""

from __future__ import annotations

from typing import Any

from heron.monitor.series import Metric, Sample, labels_of


def pool_samples(pool: str, capacity: tuple[int, int] | None) -> list[Sample]:
    """A pool's size and free bytes; `heron_pool_reachable` 0 when it did not answer."""
    labels = labels_of(pool=pool)
    if capacity is None:
        return [Sample("heron_pool_reachable", labels, 0.0)]
    total, free = capacity
    return [
        Sample("heron_pool_reachable", labels, 1.0),
        Sample("heron_pool_size_bytes", labels, float(total)),
        Sample("heron_pool_free_bytes", labels, float(free)),
        Sample("heron_pool_used_ratio", labels, 1 - free / total if total else 0.0),
    ]


def ardfs_samples(pool: str, status: dict[str, Any], cpu_seconds: float | None) -> list[Sample]:
    """What heron-io's status.json says, for one pool on this node."""
    samples = []
    for disk, info in status.get("disks", {}).items():
        labels = labels_of(pool=pool, disk=disk)
        failed = "error" in info
        samples.append(Sample("heron_ardfs_disk_failed", labels, float(failed)))
        if not failed:
            samples.append(
                Sample("heron_ardfs_disk_size_bytes", labels, float(info["total_bytes"]))
            )
            samples.append(Sample("heron_ardfs_disk_free_bytes", labels, float(info["free_bytes"])))
    for peer, up in status.get("peers", {}).items():
        samples.append(Sample("heron_ardfs_peer_up", labels_of(pool=pool, peer=peer), float(up)))
    for volume, info in status.get("volumes", {}).items():
        if not info.get("owned"):
            continue  # the owner speaks for a volume: one series, not one per node
        labels = labels_of(pool=pool, volume=volume)
        samples += [
            Sample("heron_ardfs_volume_size_bytes", labels, float(info["size"])),
            Sample("heron_ardfs_volume_degraded", labels, float(info["state"] == "degraded")),
            Sample("heron_ardfs_volume_stale_chunks", labels, float(info["stale_chunks"])),
            Sample(
                "heron_ardfs_volume_rebuilt_chunks_total", labels, float(info["rebuilt_chunks"])
            ),
            Sample(
                "heron_ardfs_volume_rebuild_bytes_per_second",
                labels,
                float(info["rebuild_bytes_per_s"]),
            ),
            Sample(
                "heron_ardfs_volume_rebuild_stalled",
                labels,
                float(info["stale_chunks"] > 0 and not info["rebuild_bytes_per_s"]),
            ),
        ]
    scrub = status.get("scrub")
    if scrub is not None:
        labels = labels_of(pool=pool)
        samples += [
            Sample(
                "heron_ardfs_scrub_chunks_checked_total", labels, float(scrub["chunks_checked"])
            ),
            Sample("heron_ardfs_scrub_corrupt_found_total", labels, float(scrub["corrupt_found"])),
        ]
    if cpu_seconds is not None:
        samples.append(
            Sample("heron_ardfs_io_cpu_seconds_total", labels_of(pool=pool), cpu_seconds)
        )
    return samples


STORAGE_METRICS = [
    Metric("heron_pool_reachable", "gauge", "1 when the pool answered this node's capacity probe."),
    Metric("heron_pool_size_bytes", "gauge", "The pool's size as this node sees it."),
    Metric("heron_pool_free_bytes", "gauge", "The pool's free bytes as this node sees it."),
    Metric("heron_pool_used_ratio", "gauge", "The share of the pool in use (0 to 1)."),
    Metric("heron_ardfs_disk_failed", "gauge", "1 when heron-io took this ARDFS disk out of use."),
    Metric("heron_ardfs_disk_size_bytes", "gauge", "An ARDFS disk's size."),
    Metric("heron_ardfs_disk_free_bytes", "gauge", "An ARDFS disk's free bytes."),
    Metric("heron_ardfs_peer_up", "gauge", "1 when this node's heron-io reaches the peer's."),
    Metric("heron_ardfs_volume_size_bytes", "gauge", "An ARDFS volume's size (from its owner)."),
    Metric(
        "heron_ardfs_volume_degraded", "gauge", "1 while a copy or shard of the volume is stale."
    ),
    Metric("heron_ardfs_volume_stale_chunks", "gauge", "Chunks of the volume missing a copy."),
    Metric(
        "heron_ardfs_volume_rebuilt_chunks_total",
        "counter",
        "Chunks rebuilt since heron-io started.",
    ),
    Metric("heron_ardfs_volume_rebuild_bytes_per_second", "gauge", "The rebuild's current rate."),
    Metric(
        "heron_ardfs_volume_rebuild_stalled",
        "gauge",
        "1 while the volume is degraded and nothing is being rebuilt.",
    ),
    Metric(
        "heron_ardfs_scrub_chunks_checked_total", "counter", "Chunks the scrub read and checked."
    ),
    Metric(
        "heron_ardfs_scrub_corrupt_found_total", "counter", "Corrupt chunk copies the scrub found."
    ),
    Metric(
        "heron_ardfs_io_cpu_seconds_total", "counter", "CPU time of the pool's heron-io process."
    ),
]
