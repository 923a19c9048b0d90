"""SNMP: one notification per notice, as a v2c or v3 trap or inform, per HERON-MIB.

The notification type is the alert kind's own (heronNodeDown for rule node-down, ...) or
the generic heronAlertFiring / heronAlertResolved; every one carries the same objects
(instance .0 of each), heronAlertState telling firing from resolved. The originator's engine
ID is derived from the cluster's id (`engine_id`), so every leader sends with the same one
and SNMPv3 receivers of traps (where the sender is authoritative) need one user entry.
A trap returns once it is on the wire; an inform once the receiver acknowledged it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from importlib import resources
from typing import Any

from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    USM_AUTH_HMAC96_MD5,
    USM_AUTH_HMAC96_SHA,
    USM_AUTH_HMAC192_SHA256,
    USM_AUTH_HMAC384_SHA512,
    USM_PRIV_CBC56_DES,
    USM_PRIV_CFB128_AES,
    USM_PRIV_CFB256_AES_BLUMENTHAL,
    CommunityData,
    ContextData,
    SnmpEngine,
    Udp6TransportTarget,
    UdpTransportTarget,
    UsmUserData,
    send_notification,
)
from pysnmp.proto.errind import RequestTimedOut
from pysnmp.proto.rfc1902 import Integer32, ObjectIdentifier, OctetString
from pysnmp.smi.rfc1902 import ObjectIdentity, ObjectType

from heron.models.alerts import SnmpSettings
from heron.monitor.notify.notice import (
    HERON_PEN,
    Context,
    Notice,
    NotifyError,
    labels_text,
    value_text,
)

Oid = tuple[int, ...]

HERON_MIB: Oid = (1, 3, 6, 1, 4, 1, HERON_PEN, 1)
NOTIFICATIONS: Oid = (*HERON_MIB, 0)
OBJECTS: Oid = (*HERON_MIB, 1)
SNMP_TRAP_OID: Oid = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)

# Notification types, by rule: the built-in kinds have their own (HERON-MIB's numbers).
ALERT_FIRING = 1
ALERT_RESOLVED = 2
KINDS: dict[str, tuple[str, int]] = {
    "node-down": ("heronNodeDown", 10),
    "vm-crashed": ("heronVmCrashed", 11),
    "pool-nearly-full": ("heronPoolNearlyFull", 12),
    "volume-degraded": ("heronVolumeDegraded", 13),
    "rebuild-stalled": ("heronRebuildStalled", 14),
    "certificate-expiring": ("heronCertificateExpiring", 15),
    "etcd-member-down": ("heronEtcdMemberDown", 16),
}

# The objects, in the order every notification carries them (HERON-MIB's numbers).
ALERT_ID, RULE, SEVERITY, STATE, SUMMARY, LABELS, STARTED_AT, RESOLVED_AT = range(1, 9)
VALUE, CLUSTER_NAME, URL = 9, 10, 11
STATES = {"firing": 1, "resolved": 2}
TEXT_MAX = 1024

AUTH = {
    "MD5": USM_AUTH_HMAC96_MD5,
    "SHA": USM_AUTH_HMAC96_SHA,
    "SHA256": USM_AUTH_HMAC192_SHA256,
    "SHA512": USM_AUTH_HMAC384_SHA512,
}
# AES256 is the key localisation of draft-blumenthal-aes-usm, which net-snmp calls AES-256
# (and Cisco's variant AES-256-C).
PRIV = {
    "DES": USM_PRIV_CBC56_DES,
    "AES": USM_PRIV_CFB128_AES,
    "AES256": USM_PRIV_CFB256_AES_BLUMENTHAL,
}


def mib_text() -> str:
    """HERON-MIB, as shipped (the API may offer it for download)."""
    return resources.files(__package__).joinpath("HERON-MIB.txt").read_text()


def notification_type(notice: Notice) -> tuple[str, Oid]:
    """The notification type's name and OID for `notice`."""
    name, number = KINDS.get(notice.rule, ("", 0))
    if not number:
        if notice.state == "firing":
            name, number = "heronAlertFiring", ALERT_FIRING
        else:
            name, number = "heronAlertResolved", ALERT_RESOLVED
    return name, (*NOTIFICATIONS, number)


def date_and_time(timestamp: float) -> bytes:
    """SNMPv2-TC DateAndTime in UTC (11 octets, with the offset +0:0)."""
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return (
        moment.year.to_bytes(2, "big")
        + bytes((moment.month, moment.day, moment.hour, moment.minute, moment.second))
        + bytes((moment.microsecond // 100000, ord("+"), 0, 0))
    )


def varbinds(notice: Notice) -> list[tuple[Oid, Any]]:
    """snmpTrapOID.0 and the objects, as (OID, pysnmp value) pairs."""

    def text(value: str) -> OctetString:
        # At most TEXT_MAX octets, cut between characters (a receiver decodes UTF-8).
        return OctetString(value.encode()[:TEXT_MAX].decode(errors="ignore").encode())

    result: list[tuple[Oid, Any]] = [
        (SNMP_TRAP_OID, ObjectIdentifier(notification_type(notice)[1])),
        (_object(ALERT_ID), text(notice.alert_id)),
        (_object(RULE), text(notice.rule)),
        (_object(SEVERITY), Integer32(notice.severity.rank)),
        (_object(STATE), Integer32(STATES[notice.state])),
        (_object(SUMMARY), text(notice.summary)),
        (_object(LABELS), text(labels_text(notice.labels))),
        (_object(STARTED_AT), OctetString(date_and_time(notice.started_at))),
        (_object(VALUE), text(value_text(notice.value))),
        (_object(CLUSTER_NAME), text(notice.cluster)),
        (_object(URL), text(notice.url or "")),
    ]
    if notice.resolved_at is not None:
        result.append((_object(RESOLVED_AT), OctetString(date_and_time(notice.resolved_at))))
    return result


def _object(number: int) -> Oid:
    return (*OBJECTS, number, 0)


def credentials(settings: SnmpSettings) -> CommunityData | UsmUserData:
    if settings.version == "v2c":
        if not settings.community:
            raise NotifyError("an SNMP v2c channel needs a community")
        return CommunityData(settings.community, mpModel=1)
    if not settings.user:
        raise NotifyError("an SNMPv3 channel needs a user")
    if settings.priv_key and not settings.auth_key:
        raise NotifyError("SNMPv3 privacy needs authentication: set an auth key")
    for what, key in (("auth", settings.auth_key), ("priv", settings.priv_key)):
        if key is not None and len(key) < 8:
            raise NotifyError(f"the SNMPv3 {what} key must have at least 8 characters")
    if not settings.auth_key:
        return UsmUserData(settings.user)
    return UsmUserData(
        settings.user,
        authKey=settings.auth_key,
        privKey=settings.priv_key or None,
        authProtocol=AUTH[settings.auth_protocol or "SHA"],
        privProtocol=PRIV[settings.priv_protocol or "AES"] if settings.priv_key else None,
    )


async def send(settings: SnmpSettings, notices: list[Notice], context: Context) -> None:
    auth = credentials(settings)
    host = settings.host.strip("[]")
    where = f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"
    kind = "inform" if settings.inform else "trap"
    # Making an engine loads MIB modules from disk (a tenth of a second): not on the loop.
    engine = await asyncio.to_thread(SnmpEngine, OctetString(context.engine_id))
    try:
        # Each try waits a third of the timeout, so that a lost datagram is sent again.
        kind_of_target = Udp6TransportTarget if ":" in host else UdpTransportTarget
        target = await kind_of_target.create(
            (host, settings.port), timeout=context.timeout / 3, retries=2
        )
        for notice in notices:
            binds = [ObjectType(ObjectIdentity(oid), value) for oid, value in varbinds(notice)]
            error, status, index, _ = await send_notification(
                engine, auth, target, ContextData(), kind, *binds
            )
            if error:
                if isinstance(error, RequestTimedOut):
                    raise NotifyError(
                        f"no acknowledgement of an SNMP inform from {where} within "
                        f"{context.timeout:g} s"
                    )
                raise NotifyError(f"SNMP {kind} to {where} failed: {error}")
            if status:
                raise NotifyError(
                    f"SNMP {kind} to {where} refused: {status.prettyPrint()} at {index}"
                )
        await _flushed(target)
    except PySnmpError as exc:
        raise NotifyError(f"SNMP {kind} to {where} failed: {' '.join(str(exc).split())}") from exc
    finally:
        engine.close_dispatcher()


async def _flushed(target: UdpTransportTarget | Udp6TransportTarget) -> None:
    """Wait until the datagrams are handed to the kernel: pysnmp opens its socket in the
    background and queues what is sent before it is open, and a trap is "sent" at once."""
    transport = target.transport
    opening = getattr(transport, "_lport", None)
    if isinstance(opening, asyncio.Future):
        await opening
    if getattr(transport, "_writeQ", None):
        raise NotifyError("the SNMP socket opened but its queue was not sent")
