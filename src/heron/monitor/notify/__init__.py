"""Monica's notification channels: the drivers that deliver alert notices outside.

`deliver(channel, notices, context)` sends `notices` through the driver of the channel's
kind (`DRIVERS`), grouped where the medium allows (one mail, one webhook POST; SNMP one
notification each), and returns once they are handed over (an SNMP inform: acknowledged).
It raises NotifyError with a one-line reason otherwise, within about `context.timeout`;
the caller records it and tries again later. It sends what it is given: the caller picks
the notices a channel takes with `wants`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from heron.models.alerts import Alert, Channel
from heron.monitor.notify import smtp, snmp, webhook
from heron.monitor.notify.notice import (
    HERON_PEN,
    Context,
    Notice,
    NotifyError,
    engine_id,
    engine_id_hex,
    notice_of,
    probe_notice,
    tls_context,
    wants,
)

__all__ = [
    "DRIVERS",
    "HERON_PEN",
    "Context",
    "Notice",
    "NotifyError",
    "deliver",
    "engine_id",
    "engine_id_hex",
    "notice_of",
    "notifier",
    "send_test",
    "tls_context",
    "wants",
]

Driver = Callable[[Any, list[Notice], Context], Awaitable[None]]

# By ChannelSettings.kind. Each driver takes its own settings model.
DRIVERS: dict[str, Driver] = {
    "smtp": smtp.send,
    "snmp": snmp.send,
    "webhook": webhook.send,
}

# Beyond the drivers' own timeouts: resolving names, thread hand-over, closing.
GRACE = 2.0


async def deliver(channel: Channel, notices: list[Notice], context: Context) -> None:
    """Send `notices` through `channel`; NotifyError("channel NAME (KIND): why") if not."""
    if not notices:
        return
    kind = channel.settings.kind
    driver = DRIVERS.get(kind)
    if driver is None:
        raise NotifyError(f"channel {channel.name}: no driver for kind {kind!r}")
    try:
        async with asyncio.timeout(context.timeout + GRACE):
            await driver(channel.settings, notices, context)
    except NotifyError as exc:
        raise NotifyError(f"channel {channel.name} ({kind}): {exc}") from exc
    except TimeoutError as exc:
        raise NotifyError(
            f"channel {channel.name} ({kind}): not delivered within {context.timeout:g} s"
        ) from exc


async def send_test(channel: Channel, context: Context) -> None:
    """Send one clearly marked test notice through `channel` (enabled or not, whatever its
    minimum severity): the settings page's "send test"."""
    await deliver(channel, [probe_notice(channel.name, context.cluster_name, time.time())], context)


def notifier(
    context: Context, link: Callable[[Alert], str | None] | None = None
) -> Callable[[Channel, list[Alert]], Awaitable[None]]:
    """`deliver` for alerts, as the leader's alert controller and the API's "send test" call
    it: each alert becomes its notice, with `link(alert)` as the link to the UI."""

    async def send(channel: Channel, alerts: list[Alert]) -> None:
        notices = [notice_of(a, context.cluster_name, link(a) if link else None) for a in alerts]
        await deliver(channel, notices, context)

    return send
