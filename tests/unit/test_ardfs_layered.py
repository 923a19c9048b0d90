"""The layer logic of ARDFS snapshots (layered.py) over in-memory layers: fall-through reads,
copy-up of partial writes only, zeroes that hide the layers below, merges, extents, a layer's
size, blocks a layer's stores cannot tell, and the layers of a volume expanded into placed
volumes (io.expand)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from heron.ardfs.client import local_cluster
from heron.ardfs.config import Scheme, VolumeSpec
from heron.ardfs.io import Io, expand
from heron.ardfs.layered import Layer, Stack, held_bytes, merge
from heron.ardfs.layout import BLOCK_SIZE
from heron.ardfs.volume import Extent, UnavailableError

B = BLOCK_SIZE


class Memory:
    """A sparse volume in memory that counts the bytes written to it."""

    def __init__(self, size: int):
        self._size = size
        self.blocks: dict[int, bytearray] = {}
        self.written = 0
        self.asked = 0
        self.unknown: set[int] = set()  # blocks its stores cannot tell (an EC disk down)

    @property
    def size(self) -> int:
        return self._size

    async def read_into(self, offset: int, view: memoryview) -> None:
        at = 0
        while at < len(view):
            block, inside = divmod(offset + at, B)
            n = min(len(view) - at, B - inside)
            data = self.blocks.get(block)
            view[at : at + n] = data[inside : inside + n] if data is not None else bytes(n)
            at += n

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self.written += len(data)
        block, inside = divmod(offset, B)
        assert inside + len(data) <= B
        self.blocks.setdefault(block, bytearray(B))[inside : inside + len(data)] = data

    async def flush(self) -> None:
        pass

    async def trim(self, offset: int, length: int, fua: bool) -> None:
        await self.write(offset, memoryview(bytes(length)), fua)

    async def write_zeroes(self, offset: int, length: int, fua: bool, may_trim: bool) -> None:
        await self.write(offset, memoryview(bytes(length)), fua)

    async def allocated_blocks(self, first: int, count: int) -> list[bool | None]:
        self.asked += 1
        return [
            None if b in self.unknown else b in self.blocks for b in range(first, first + count)
        ]

    async def extents(self, offset: int, length: int) -> list[Extent]:
        return [Extent(length, False)]


def layer(size: int = 4 * B) -> Layer:
    return Layer(uuid.uuid4().hex, Memory(size))


def memory(found: Layer) -> Memory:
    assert isinstance(found.volume, Memory)
    return found.volume


async def read(stack: Stack, offset: int, length: int) -> bytes:
    out = memoryview(bytearray(length))
    await stack.read_into(offset, out)
    return bytes(out)


def test_reads_fall_through_and_partial_writes_copy_the_block_up() -> None:
    async def scenario() -> None:
        base, top = layer(), layer()
        await memory(base).write(0, memoryview(b"a" * B), False)
        await memory(base).write(B, memoryview(b"b" * B), False)
        stack = Stack("v", [base, top], 4 * B)
        assert await read(stack, B - 2, 4) == b"aabb"
        assert await read(stack, 2 * B, 3) == bytes(3)  # no layer holds it
        await stack.write(10, memoryview(b"xy"), False)
        assert memory(top).written == B  # the whole block, once
        await stack.write(12, memoryview(b"z"), False)
        assert memory(top).written == B + 1  # the top holds it now: a plain write
        await stack.write(B, memoryview(b"c" * B), False)
        assert memory(top).written == 2 * B + 1  # a whole block copies nothing up
        assert await read(stack, 8, 6) == b"aaxyza"
        assert await read(stack, B, 2) == b"cc"
        assert bytes(memory(base).blocks[0][8:14]) == b"aaaaaa"  # the snapshot is untouched

    asyncio.run(scenario())


def test_a_block_a_layer_cannot_tell_is_neither_read_as_data_nor_as_a_hole() -> None:
    async def scenario() -> None:
        base, middle, top = layer(), layer(), layer()
        for block in (0, 1):
            await memory(base).write(block * B, memoryview(b"a" * B), False)
        await memory(middle).write(B, memoryview(b"m" * B), False)
        memory(middle).unknown = {0, 1}  # held or not: its stores cannot say for now
        memory(base).unknown = {2}
        stack = Stack("v", [base, middle, top], 4 * B)
        for offset in (0, B):
            with pytest.raises(UnavailableError):
                await read(stack, offset, 4)
            with pytest.raises(UnavailableError):
                await stack.write(offset + 1, memoryview(b"w"), False)  # a copy-up of what?
        with pytest.raises(UnavailableError):
            await merge(middle, top)
        assert middle.known_bytes() is None and not memory(top).blocks
        # The bottom layer's blocks read alike held or not: no error there.
        assert await read(stack, 2 * B, 4) == bytes(4)
        assert await stack.extents(0, 4 * B) == [Extent(3 * B, False), Extent(B, True)]
        memory(middle).unknown = set()  # the disk is back: asked again at the next use
        assert await read(stack, 0, 2) + await read(stack, B, 2) == b"aamm"
        assert middle.known_bytes() == B and await merge(middle, top) == 1

    asyncio.run(scenario())


def test_concurrent_partial_writes_to_one_block_both_land() -> None:
    async def scenario() -> None:
        base, top = layer(), layer()
        await memory(base).write(0, memoryview(b"a" * B), False)
        stack = Stack("v", [base, top], 4 * B)
        await asyncio.gather(
            stack.write(0, memoryview(b"1"), False), stack.write(1, memoryview(b"2"), False)
        )
        assert await read(stack, 0, 3) == b"12a"
        assert memory(top).written == B + 1  # one copy-up, then a plain write

    asyncio.run(scenario())


def test_zeroes_over_a_lower_layer_are_written_not_trimmed() -> None:
    async def scenario() -> None:
        base, top = layer(), layer()
        await memory(base).write(0, memoryview(b"a" * B), False)
        stack = Stack("v", [base, top], 4 * B)
        await stack.trim(0, 16, False)
        await stack.write_zeroes(3 * B, 16, False, True)
        assert await read(stack, 0, 17) == bytes(16) + b"a"
        assert 0 in memory(top).blocks  # zeroes copied up over the "a" below

    asyncio.run(scenario())


def test_a_merge_copies_what_the_layer_above_lacks() -> None:
    async def scenario() -> None:
        base, middle, top = layer(), layer(), layer()
        await memory(base).write(0, memoryview(b"a" * B), False)
        await memory(middle).write(0, memoryview(b"m" * B), False)
        await memory(middle).write(B, memoryview(b"n" * B), False)
        stack = Stack("v", [base, middle, top], 4 * B)
        await stack.write(B + 5, memoryview(b"t"), False)  # block 1 copied up into the top
        copied = await merge(middle, top)
        assert copied == 1  # block 0; block 1 the top has already
        stack.set_layers([base, top], 4 * B)
        assert await read(stack, 0, 2) == b"mm"
        assert await read(stack, B + 4, 3) == b"ntn"

    asyncio.run(scenario())


def test_a_layers_size_is_its_blocks_counted_once_and_grows_with_a_merge_into_it() -> None:
    assert held_bytes([], 10 * B) == 0
    assert held_bytes([0, 2, 5], 10 * B) == 3 * B
    # The last block of a volume that is not a whole number of blocks counts its part only.
    assert held_bytes([0, 2], 2 * B + 4096) == B + 4096

    async def scenario() -> None:
        below, frozen, top = layer(), layer(), layer()
        assert frozen.known_bytes() is None  # not asked yet: no size, rather than 0
        for block in (0, 1, 2):
            await memory(below).write(block * B, memoryview(b"b" * B), False)
        await memory(frozen).write(B, memoryview(b"f" * B), False)
        await frozen.held()
        assert frozen.known_bytes() == B
        stack = Stack("v", [below, frozen, top], 4 * B)
        await stack.write(5, memoryview(b"t"), False)  # the top's, not the frozen layer's
        assert frozen.known_bytes() == B
        await merge(below, frozen)  # the snapshot below deleted: blocks 0 and 2 move up
        assert frozen.known_bytes() == 3 * B

    asyncio.run(scenario())


def test_an_answer_asked_before_a_forget_is_not_kept() -> None:
    """A handover forgets what a layer holds while a read may be asking the chunk stores:
    that answer may miss what the other node wrote, so it is asked again."""

    async def scenario() -> None:
        found = layer()
        volume = memory(found)
        asked = asyncio.Event()
        go = asyncio.Event()
        plain = volume.allocated_blocks

        async def slow(first: int, count: int) -> list[bool]:
            answer = await plain(first, count)
            asked.set()
            await go.wait()
            return answer

        volume.allocated_blocks = slow  # type: ignore[method-assign]
        reading = asyncio.ensure_future(found.held())
        await asyncio.wait_for(asked.wait(), 5)
        await volume.write(B, memoryview(b"w" * B), False)  # by the other node, meanwhile
        found.forget()
        go.set()
        assert await asyncio.wait_for(reading, 5) == {1}
        assert volume.asked == 2

    asyncio.run(scenario())


def test_extents_are_holes_only_where_no_layer_holds_the_block() -> None:
    async def scenario() -> None:
        base, top = layer(), layer()
        await memory(base).write(0, memoryview(b"a"), False)
        await memory(top).write(2 * B, memoryview(b"b"), False)
        stack = Stack("v", [base, top], 4 * B)
        assert await stack.extents(0, 4 * B) == [
            Extent(B, False),
            Extent(B, True),
            Extent(B, False),
            Extent(B, True),
        ]
        # What a layer holds is asked of its chunk stores once, then kept.
        await stack.extents(0, 4 * B)
        assert memory(base).asked == 1 and memory(top).asked == 1

    asyncio.run(scenario())


def test_one_layer_stacks_are_the_volume_itself() -> None:
    async def scenario() -> None:
        only = layer()
        stack = Stack("v", [only], 4 * B)
        await only.held()  # known once, then written past by the plain volume's paths
        await stack.write(1, memoryview(b"x"), False)
        assert memory(only).written == 1 and memory(only).asked == 1
        # A snapshot: what the old top holds is asked again, not taken from before.
        stack.set_layers([only, layer()], 4 * B)
        assert await read(stack, 0, 2) == b"\x00x"
        assert memory(only).asked == 2

    asyncio.run(scenario())


def test_expand_serves_each_layer_once_under_its_own_name() -> None:
    frozen, top, kept, clone_top = (uuid.uuid4().hex for _ in range(4))
    source = VolumeSpec(name="src", size=B, scheme=Scheme(copies=2), layers=[frozen, top],
                        kept=[kept], owner="a")  # fmt: skip
    clone = VolumeSpec(name="clone", size=B, layers=[frozen, clone_top], owner="b")
    plain = VolumeSpec(name="plain", size=B)
    specs = {s.name: s for s in expand([source, clone, plain])}
    assert set(specs) == {"src", "clone", "plain", f"layer:{frozen}", f"layer:{kept}"}
    assert specs["src"].id == top and specs["clone"].id == clone_top
    assert specs["plain"].id == plain.id  # no snapshots: served as it always was
    assert specs[f"layer:{frozen}"].owner == "a"  # the source's, first named
    assert all(not s.layers and not s.merges for s in specs.values())


def test_heron_io_gives_its_frozen_layers_sizes_and_asks_again_for_an_unowned_top(
    tmp_path: Path,
) -> None:
    """One heron-io over a real chunk store in a directory (not started: no sockets): it
    learns what a snapshot's frozen layer holds without a read needing it, and a client
    opening a layered volume nobody owns makes it ask again what the top holds (another
    node may have written it)."""

    async def scenario() -> None:
        volume = VolumeSpec(name="v", size=16 * 2**20, scheme=Scheme(copies=1))
        io = Io(local_cluster(tmp_path, 1, [volume])[0])
        try:
            io.apply_volumes([volume])
            await asyncio.gather(*io.claims)
            plain = io.open_export("v")
            assert plain is not None
            for block in (0, 2):
                await plain.write(block * B, memoryview(b"a" * B), False)
            snapped = volume.model_copy(update={"layers": [volume.id, uuid.uuid4().hex]})
            io.apply_volumes([snapped])
            await asyncio.gather(*io.claims)
            assert io.layer_status("v")["layer_bytes"] == {volume.id: 2 * B}
            stack = io.open_export("v")
            assert stack is plain and await stack.top.has(1) is False
            # Written through another node's heron-io: here, straight into the top's copies.
            await io.volumes["v"].write(B, memoryview(b"b" * B), False)
            assert await stack.top.has(1) is False  # what it knew
            assert io.open_export("v") is stack and await stack.top.has(1)
        finally:
            await io.stop()

    asyncio.run(scenario())


def test_an_owner_change_forgets_the_kept_layers_too(tmp_path: Path) -> None:
    """A snapshot's layer off the stack (after a revert to an older one) is merged into
    when the snapshot below it goes, by whichever node owns the volume then: what this node
    knew of it is old once another node owned the volume."""

    async def scenario() -> None:
        base, kept, top = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
        volume = VolumeSpec(name="v", size=16 * 2**20, scheme=Scheme(copies=1), id=base,
                            layers=[base, top], kept=[kept])  # fmt: skip
        io = Io(local_cluster(tmp_path, 1, [volume])[0])
        try:
            io.apply_volumes([volume])
            await asyncio.gather(*io.claims)
            assert io.layers[kept].blocks == set()  # learned: nobody owns the volume
            elsewhere = volume.model_copy(update={"owner": "n2", "epoch": 2})
            io.apply_volumes([elsewhere])
            assert io.layers[kept].blocks is None and io.layers[top].blocks is None
            assert "layer_bytes" in io.layer_status("v")
            assert io.layer_status("v")["layer_bytes"] == {}  # not this node's word now
        finally:
            await io.stop()

    asyncio.run(scenario())
