"""Big lists served from the watch-fed caches: pages, and each item's JSON kept until it changes.

A list of 10 000 VMs read from etcd, validated and serialised on every call costs most of a
second; the agent already holds every record in memory (`scheduler.inventory`), so a list
costs what changed since the last one. What the caches hold may be a few milliseconds
behind etcd, like every reader of a watch (see `configdb.cache`).

Paging is by key, not by offset: `continue` carries the last name of a page, so the next
page starts after it even when items are added or removed in between (nothing is skipped or
repeated, but what sorts before the cursor and appears later is not seen).
"""

import base64
import binascii
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastapi import Response
from pydantic import BaseModel

from heron.api.errors import Invalid

CONTINUE_HEADER = "X-Continue"
MAX_LIMIT = 1000

# Declared on every paged list: the header that carries the token for the next page.
PAGED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            CONTINUE_HEADER: {
                "description": "Present when `limit` cut the list: pass it as `continue` for "
                "the next page",
                "schema": {"type": "string"},
            }
        }
    }
}

T = TypeVar("T")
V = TypeVar("V", bound=BaseModel)


def encode_cursor(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode()


def decode_cursor(token: str | None) -> str | None:
    """The name a page starts after; a token this module did not make is a 422."""
    if token is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = data["after"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise Invalid("query.continue", "not a token from a previous page") from None
    if not isinstance(after, str):
        raise Invalid("query.continue", "not a token from a previous page")
    return after


def page(
    items: Sequence[T], name: Callable[[T], str], limit: int | None, after: str | None
) -> tuple[list[T], str | None]:
    """The items (sorted by `name`) after the cursor, at most `limit`, and the next cursor."""
    start = 0
    if after is not None:
        # Names are unique and sorted, so the page starts at the first one past the cursor.
        low, high = 0, len(items)
        while low < high:
            middle = (low + high) // 2
            if name(items[middle]) <= after:
                low = middle + 1
            else:
                high = middle
        start = low
    if limit is None:
        return list(items[start:]), None
    chosen = list(items[start : start + limit])
    more = start + limit < len(items)
    return chosen, encode_cursor(name(chosen[-1])) if more and chosen else None


@dataclass
class Rendered(Generic[V]):
    view: V
    json: bytes


@dataclass
class RenderedViews(Generic[V]):
    """Each item's view and its JSON, made again only when what it is made from changes."""

    _held: dict[str, tuple[Hashable, Rendered[V]]] = field(default_factory=dict)
    _whole: tuple[Hashable, list[Rendered[V]]] | None = None

    def whole(self, version: Hashable, build: Callable[[], list[Rendered[V]]]) -> list[Rendered[V]]:
        """The whole list, built again only when `version` (e.g. the caches' revisions)
        changes: while nothing changes, a list call costs no more than the filters."""
        if self._whole is None or self._whole[0] != version:
            self._whole = (version, build())
        return self._whole[1]

    def get(self, item_id: str, version: Hashable, make: Callable[[], V]) -> Rendered[V]:
        held = self._held.get(item_id)
        if held is not None and held[0] == version:
            return held[1]
        view = make()
        rendered = Rendered(view, view.model_dump_json().encode())
        self._held[item_id] = (version, rendered)
        return rendered

    def keep_only(self, item_ids: set[str]) -> None:
        """Forget the views of items that are gone."""
        for gone in self._held.keys() - item_ids:
            del self._held[gone]


def json_list(items: Sequence[Rendered[Any]], cursor: str | None) -> Response:
    """A JSON array of already rendered items, with the next page's cursor if there is one."""
    body = b"[" + b",".join(item.json for item in items) + b"]"
    headers = {CONTINUE_HEADER: cursor} if cursor is not None else None
    return Response(body, media_type="application/json", headers=headers)
