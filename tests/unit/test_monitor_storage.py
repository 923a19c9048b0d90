"""heron.monitor.collect.storage: pools and heron-io's status as samples."""

from heron.monitor.catalog import METRICS
from heron.monitor.collect.storage import ardfs_samples, pool_samples

STATUS = {
    "node": "node1",
    "disks": {"d1": {"path": "/x", "total_bytes": 1000, "free_bytes": 400}, "d2": {"error": "EIO"}},
    "peers": {"node2": True, "node3": False},
    "volumes": {
        "v1": {
            "owned": True,
            "size": 4096,
            "state": "degraded",
            "stale_chunks": 3,
            "rebuilt_chunks": 5,
            "rebuild_bytes_per_s": 100,
        },
        "v2": {
            "owned": False,
            "size": 1,
            "state": "healthy",
            "stale_chunks": 0,
            "rebuilt_chunks": 0,
            "rebuild_bytes_per_s": 0,
        },
    },
    "scrub": {"passes": 1, "chunks_checked": 9, "corrupt_found": 0},
}


def test_heron_io_status_gives_disks_peers_and_the_volumes_this_node_owns() -> None:
    samples = {s.key: s.value for s in ardfs_samples("fast", STATUS, 12.5)}
    assert samples['heron_ardfs_disk_free_bytes{disk="d1",pool="fast"}'] == 400
    assert samples['heron_ardfs_disk_failed{disk="d2",pool="fast"}'] == 1
    assert 'heron_ardfs_disk_size_bytes{disk="d2",pool="fast"}' not in samples
    assert samples['heron_ardfs_peer_up{peer="node3",pool="fast"}'] == 0
    assert samples['heron_ardfs_volume_degraded{pool="fast",volume="v1"}'] == 1
    assert samples['heron_ardfs_volume_stale_chunks{pool="fast",volume="v1"}'] == 3
    assert not any('volume="v2"' in key for key in samples)  # its owner reports it
    assert samples['heron_ardfs_io_cpu_seconds_total{pool="fast"}'] == 12.5


def test_a_pool_that_did_not_answer_is_unreachable_with_no_sizes() -> None:
    assert [s.name for s in pool_samples("nfs1", None)] == ["heron_pool_reachable"]
    answered = {s.name: s.value for s in pool_samples("nfs1", (100, 40))}
    assert answered == {"heron_pool_reachable": 1, "heron_pool_size_bytes": 100,
                        "heron_pool_free_bytes": 40, "heron_pool_used_ratio": 0.6}  # fmt: skip


def test_every_storage_sample_is_in_the_catalog() -> None:
    names = {s.name for s in ardfs_samples("p", STATUS, 1.0) + pool_samples("p", (1, 1))}
    assert names <= set(METRICS)


def test_certificates_give_their_time_left_and_the_configdb_its_latency() -> None:
    import time

    from heron.monitor.collect.services import certificate_samples, configdb_samples
    from heron.tls import make_authority

    now = time.time()
    authority = make_authority("c1", now, lifetime=30 * 86400)
    [sample] = certificate_samples({"ca": authority.certificate, "node": None}, now)
    assert sample.key == 'heron_certificate_expiry_seconds{certificate="ca"}'
    assert 29 * 86400 < sample.value <= 30 * 86400
    assert certificate_samples({"ca": "not a certificate"}, now) == []
    assert [s.value for s in configdb_samples(0.25)] == [1.0, 0.25]
    assert [s.key for s in configdb_samples(None)] == ["heron_configdb_up"]
