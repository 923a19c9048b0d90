"""Paging and rendered views of the big lists (api.listing), without a cluster."""

import json

import pytest
from pydantic import BaseModel

from heron.api import listing
from heron.api.errors import Invalid

NAMES = [f"vm{i:03d}" for i in range(10)]


def _all_pages(names: list[str], limit: int) -> list[list[str]]:
    pages, after = [], None
    while True:
        chosen, cursor = listing.page(names, str, limit, after)
        pages.append(chosen)
        if cursor is None:
            return pages
        after = listing.decode_cursor(cursor)


def test_pages_cover_the_list_once_in_order() -> None:
    pages = _all_pages(NAMES, 3)
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [name for chosen in pages for name in chosen] == NAMES


def test_a_page_that_ends_the_list_has_no_cursor() -> None:
    assert listing.page(NAMES, str, 10, None) == (NAMES, None)
    assert listing.page(NAMES, str, None, None) == (NAMES, None)
    assert listing.page([], str, 5, None) == ([], None)


def test_a_page_starts_after_its_cursor_even_when_that_item_is_gone() -> None:
    _, cursor = listing.page(NAMES, str, 4, None)
    after = listing.decode_cursor(cursor)
    assert after == "vm003"
    without = [n for n in NAMES if n != "vm003"]
    assert listing.page(without, str, 2, after)[0] == ["vm004", "vm005"]


@pytest.mark.parametrize("token", ["x", "", "bm90IGpzb24", listing.encode_cursor("a")[:-2]])
def test_a_foreign_cursor_is_refused_naming_the_parameter(token: str) -> None:
    with pytest.raises(Invalid) as refused:
        listing.decode_cursor(token)
    assert refused.value.fields[0]["field"] == "query.continue"


class Item(BaseModel):
    name: str
    size: int


def test_a_view_is_rendered_again_only_when_its_version_changes() -> None:
    views: listing.RenderedViews[Item] = listing.RenderedViews()
    made = []

    def make(size: int) -> Item:
        made.append(size)
        return Item(name="a", size=size)

    first = views.get("a", 1, lambda: make(1))
    assert views.get("a", 1, lambda: make(2)) is first
    assert views.get("a", 2, lambda: make(2)).view.size == 2
    assert made == [1, 2]
    views.keep_only(set())
    views.get("a", 2, lambda: make(3))
    assert made == [1, 2, 3]


def test_the_list_is_the_json_array_of_its_items_with_the_cursor_header() -> None:
    views: listing.RenderedViews[Item] = listing.RenderedViews()
    items = [views.get(n, 1, lambda n=n: Item(name=n, size=1)) for n in ("a", "b")]
    reply = listing.json_list(items, "next")
    assert json.loads(reply.body) == [{"name": "a", "size": 1}, {"name": "b", "size": 1}]
    assert reply.headers[listing.CONTINUE_HEADER] == "next"
    assert listing.CONTINUE_HEADER not in listing.json_list([], None).headers


def test_the_whole_list_is_built_again_only_when_its_version_changes() -> None:
    views: listing.RenderedViews[Item] = listing.RenderedViews()
    builds = []

    def build() -> list[listing.Rendered[Item]]:
        builds.append(1)
        return []

    views.whole((1, 1), build)
    views.whole((1, 1), build)
    views.whole((2, 1), build)
    assert len(builds) == 2
