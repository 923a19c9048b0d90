"""The etcd client under the ConfigDB: aetcd's, on a channel and with a watcher of Heron's.

aetcd 1.0 opens plaintext channels only, and its watcher can hand one watch's events to
another (see `Watcher`); both are put right here, and `make_client` sets the gRPC options a
ConfigDB needs (fail-over between members, quick redials).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.watcher
import grpc

from heron.errors import ConfigDBError
from heron.tls import NodeCredentials

# A request that etcd has not answered in this time is failed rather than hung on.
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class EtcdTls:
    """What a client of an etcd that speaks TLS shows and trusts: the cluster CA (the only
    one trusted), and this node's certificate and key (etcd asks every client for one)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def of(cls, credentials: NodeCredentials) -> EtcdTls:
        return cls(credentials.ca_file, credentials.cert_file, credentials.key_file)

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> EtcdTls:
        """A node's own credentials (where `NodeCredentials` keeps them)."""
        return cls.of(NodeCredentials(state_dir / "tls"))

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes(),
            certificate_chain=self.cert_file.read_bytes(),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same, for HTTP calls to etcd (its /health)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def secure(endpoints: Sequence[str]) -> bool:
    """Whether these endpoints speak TLS: https:// ones do; plain host:port or http:// ones
    do not (every cluster before etcd's TLS, which keeps working as it was). A mix is
    refused: one client talks to one cluster, and a cluster is one or the other."""
    kinds = {e.startswith("https://") for e in endpoints}
    if len(kinds) > 1:
        raise ConfigDBError(f"etcd endpoints mix https:// and plain ones: {list(endpoints)}")
    return kinds == {True}


def strip_scheme(endpoint: str) -> str:
    return endpoint.removeprefix("https://").removeprefix("http://")


def grpc_target(endpoints: Sequence[str]) -> tuple[str, int]:
    """Turn ["127.0.0.1:2379", ...] into the host and port aetcd joins into one gRPC target.

    gRPC's `ipv4:` scheme takes a list of addresses and fails over between them, which is how
    one client talks to a 3- or 5-member cluster; aetcd only joins host and port with a colon.
    """
    hosts = [strip_scheme(e) for e in endpoints]
    if len(hosts) == 1:
        host, port = hosts[0].rsplit(":", 1)
        return host, int(port)
    last_host, last_port = hosts[-1].rsplit(":", 1)
    return "ipv4:" + ",".join([*hosts[:-1], last_host]), int(last_port)


class Watcher(aetcd.watcher.Watcher):  # type: ignore[misc]
    """aetcd's watcher, with each watch's id chosen here and sent with its create request.

    All watches of a client share one gRPC stream, and aetcd gives the next "created" answer
    to the watch it is waiting for. A create that timed out (a busy or paused etcd) is
    answered later all the same, and that late answer went to the next watch created: that
    watch then got the other prefix's events, and its own watch was cancelled as unwanted
    (seen under load: a cache of /heron/groups/ fed /heron/watchdogs/ records, the task
    runner fed the leader key). With the id in the request an answer is matched to its
    request, and a late one is cancelled. etcd takes client-chosen ids since 3.4.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._ids = itertools.count(1)
        self._awaited: int | None = None  # the id of the create request in flight

    async def add_callback(self, key: bytes, callback: Any, **kwargs: Any) -> Any:
        kwargs["watch_id"] = next(self._ids)
        return await super().add_callback(key, callback, **kwargs)

    async def _enqueue_watch_create(self, *args: Any, watch_id: int, **kwargs: Any) -> None:
        # Called by add_callback with the lock held, right after it made the pending callback.
        self._awaited = watch_id
        request = self._build_watch_create_request(*args, **kwargs)
        request.create_request.watch_id = watch_id  # aetcd takes the argument but drops it
        await self._request_queue.put(request)

    async def _handle_response(self, response: Any) -> None:
        if response.created:
            async with self._lock:
                pending = self._new_callback
                if pending is None or response.watch_id != self._awaited:
                    # The answer to a create that gave up waiting: nobody wants this watch.
                    await self._enqueue_watch_cancel(watch_id=response.watch_id)
                    return
                if response.compact_revision != 0:
                    pending.error = aetcd.exceptions.RevisionCompactedError(
                        response.compact_revision
                    )
                else:
                    self._callbacks[response.watch_id] = pending
                    pending.watch_id = response.watch_id
                self._new_callback_ready.notify_all()
            return  # etcd sends a watch's events after its "created", never with it
        await super()._handle_response(response)


class Client(aetcd.Client):  # type: ignore[misc]
    """aetcd's client with `Watcher`; `connect` is its own here (aetcd's makes its own
    watcher, and a plaintext channel only)."""

    def _channel(self) -> Any:
        return aetcd.rpc.insecure_channel(
            f"{self._host}:{self._port}", options=self._options.items()
        )

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # type: ignore[has-type]  # another task opens the channel: wait for it
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            self.channel = self._channel()
            self.kvstub = aetcd.rpc.KVStub(self.channel)
            self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
            self.leasestub = aetcd.rpc.LeaseStub(self.channel)
            self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
            self._watcher = Watcher(
                aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


class TlsClient(Client):
    """The client over a TLS channel, showing the node's certificate."""

    def __init__(self, tls: EtcdTls, **kwargs: Any):
        super().__init__(**kwargs)
        self._tls = tls

    def _channel(self) -> Any:
        # Read on each connect: a renewed certificate is used from the next channel on.
        return aetcd.rpc.secure_channel(
            f"{self._host}:{self._port}",
            self._tls.channel_credentials(),
            options=self._options.items(),
        )


def make_client(endpoints: Sequence[str], tls: EtcdTls | None = None) -> Client:
    host, port = grpc_target(endpoints)
    options: dict[str, Any] = {}
    if secure(endpoints):
        if tls is None:
            raise ConfigDBError(
                f"etcd at {list(endpoints)} speaks TLS: a client needs the cluster CA and a "
                "node certificate"
            )
        if len(endpoints) > 1:
            # One target of several addresses has no one name to check: every member's
            # certificate names its loopback addresses too (`node_names`), and only the
            # cluster's CA is trusted, so "a node of this cluster" is what is checked.
            options["grpc.ssl_target_name_override"] = "localhost"
    make = Client if tls is None or not secure(endpoints) else partial(TlsClient, tls)
    return make(
        host=host,
        port=port,
        timeout=int(REQUEST_TIMEOUT),
        options=options
        | {
            # Notice a dead member quickly so the channel fails over to another one.
            "grpc.keepalive_time_ms": 2000,
            "grpc.keepalive_timeout_ms": 2000,
            # Only while calls or watches are open: etcd counts a ping on an idle
            # connection as abuse and closes it (GOAWAY "too_many_pings"), whatever
            # its --grpc-keepalive-min-time. An idle client has nothing to fail over.
            "grpc.keepalive_permit_without_calls": 0,
            "grpc.http2.max_pings_without_data": 0,
            "grpc.max_receive_message_length": 64 * 1024 * 1024,
            # Spread requests over every member rather than all to the first that answers.
            "grpc.lb_policy_name": "round_robin",
            # gRPC waits up to 120 s before redialling a member that was down: far too
            # long for a ConfigDB that is back within seconds.
            "grpc.initial_reconnect_backoff_ms": 100,
            "grpc.min_reconnect_backoff_ms": 100,
            "grpc.max_reconnect_backoff_ms": 1000,
        },
    )
