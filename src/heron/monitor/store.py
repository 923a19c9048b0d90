"""A node's metrics history on its own disk: 10 s samples, rolled up to 1 min and 1 h.

Why an embedded store of our own (docs/architecture.md, "Monitoring: the history"): the
budget is ≤ 2 bytes a sample with rollups kept for years. Whisper and RRD files keep 8 to 12
bytes a point; Prometheus's TSDB compresses well but never rolls up, so two years of 10 s
data would be kept whole. What is here is small: blocks of numpy arrays, compressed with zstd.

Layout, under the store's directory, one folder per resolution:
- `10s/<start>.blk`: one hour of 10 s samples, one value a slot;
- `1m/<start>.blk`: one hour of 1 min rollups, `1h/<start>.blk`: one day of 1 h rollups,
  each point min, avg and max of what it covers;
- `series`: the series keys, one a line, its line number the id blocks use; an empty line
  is an id no block holds any more, free for the next new series.
A block is immutable once its period is over. The current hour lives in memory and is
written out as its block every `checkpoint` seconds (no fsync per sample: a crash loses at
most that much), so a restarted agent carries on where the last one wrote. The rollups of an
hour are made when it ends, and on open for hours that ended while no agent ran.

A series that no kept block holds any more (a deleted VM's, two years after its last sample:
the hourly rollups are kept longest) leaves the index when the hour it went is pruned, so
the index and the memory it takes follow the series that exist, not all that ever did.

Values are kept to 16 bits of mantissa (relative error below 2e-5: a chart or a threshold
never sees it) and each series' points are XORed with their predecessors and split into byte
planes before zstd: steady series cost almost nothing, noisy ones about two bytes a sample.
"""

from __future__ import annotations

import heapq
import math
import os
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

from heron.monitor.series import Labels

MAGIC = b"HRNMON1\n"
MANTISSA_BITS = 16
_MASK = np.uint64(((1 << 64) - 1) ^ ((1 << (52 - MANTISSA_BITS)) - 1))
_HEAD = struct.Struct("<II")  # series count, slots x aggregates
DAY = 86400


@dataclass(frozen=True)
class Resolution:
    name: str
    step: int  # seconds a point covers
    period: int  # seconds a block covers
    keep: int  # seconds its blocks are kept
    aggregates: int  # 1: the sample itself; 3: min, avg, max

    @property
    def slots(self) -> int:
        return self.period // self.step


RAW = Resolution("10s", 10, 3600, 8 * DAY, 1)
MINUTE = Resolution("1m", 60, 3600, 92 * DAY, 3)
HOUR = Resolution("1h", 3600, DAY, 740 * DAY, 3)
RESOLUTIONS = (RAW, MINUTE, HOUR)
# Every hour with samples is rolled up into HOUR's block of its day, which outlives the other
# resolutions' blocks of that hour: a series is in some kept block as long as its last day's
# HOUR block is kept (what `Store._prune` relies on to drop series from the index).
assert all(r.keep <= HOUR.keep for r in RESOLUTIONS)


@dataclass
class Points:
    """A series over a range: `times` (the start of each point, seconds) and `values` of
    shape (points, 3): min, avg, max (equal for raw samples); NaN where nothing was kept."""

    times: np.ndarray
    values: np.ndarray


class StoreError(Exception):
    pass


# -- blocks ----------------------------------------------------------------------------------


def _pack(values: np.ndarray) -> bytes:
    bits = np.ascontiguousarray(values, dtype=np.float64).reshape(-1).view(np.uint64) & _MASK
    xored = bits.copy()
    xored[1:] ^= bits[:-1]
    return np.ascontiguousarray(xored.view(np.uint8).reshape(-1, 8).T).tobytes()


def _unpack(raw: bytes, count: int) -> np.ndarray:
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(8, count)
    xored = np.ascontiguousarray(planes.T).view(np.uint64).reshape(-1)
    return np.bitwise_xor.accumulate(xored).view(np.float64)


def write_block(path: Path, columns: dict[int, np.ndarray]) -> None:
    """Write series id -> values (slots x aggregates) as one block, atomically."""
    ids = np.array(sorted(columns), dtype=np.uint32)
    compressor = zstandard.ZstdCompressor(level=6)
    frames = [compressor.compress(_pack(columns[int(i)])) for i in ids]
    ends = np.cumsum([len(f) for f in frames], dtype=np.uint64)
    width = next(iter(columns.values())).size if columns else 0
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("wb") as out:
        out.write(MAGIC + _HEAD.pack(len(ids), width))
        out.write(ids.tobytes() + ends.tobytes())
        for frame in frames:
            out.write(frame)
    os.replace(tmp, path)


def block_ids(path: Path) -> set[int]:
    """The series a block holds, read from its table alone."""
    with path.open("rb") as source:
        head = source.read(len(MAGIC) + _HEAD.size)
        if not head.startswith(MAGIC) or len(head) < len(MAGIC) + _HEAD.size:
            raise StoreError(f"{path}: not a metrics block")
        count, _ = _HEAD.unpack_from(head, len(MAGIC))
        raw = source.read(4 * count)
    return {int(i) for i in np.frombuffer(raw, dtype=np.uint32, count=len(raw) // 4)}


class Block:
    """A block read lazily: its series table at once, a series' frame when asked."""

    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        if not self.data.startswith(MAGIC):
            raise StoreError(f"{path}: not a metrics block")
        count, self.width = _HEAD.unpack_from(self.data, len(MAGIC))
        at = len(MAGIC) + _HEAD.size
        self.ids = np.frombuffer(self.data, dtype=np.uint32, count=count, offset=at)
        self.ends = np.frombuffer(self.data, dtype=np.uint64, count=count, offset=at + 4 * count)
        self.base = at + 12 * count

    def get(self, series: int) -> np.ndarray | None:
        i = int(np.searchsorted(self.ids, series))
        if i == len(self.ids) or self.ids[i] != series:
            return None
        start = self.base + (int(self.ends[i - 1]) if i else 0)
        frame = self.data[start : self.base + int(self.ends[i])]
        raw = zstandard.ZstdDecompressor().decompress(frame)
        return _unpack(raw, self.width)

    def columns(self) -> dict[int, np.ndarray]:
        found = {}
        for series in self.ids:
            values = self.get(int(series))
            if values is not None:
                found[int(series)] = values
        return found


def rollup(values: np.ndarray, source: Resolution, target: Resolution) -> np.ndarray:
    """Points of `source` (slots x aggregates) as points of `target` (min, avg, max)."""
    shaped = values.reshape(-1, target.step // source.step, source.aggregates)
    if source.aggregates == 1:
        return aggregate(shaped[..., 0], shaped[..., 0], shaped[..., 0])
    return aggregate(shaped[..., 0], shaped[..., 1], shaped[..., 2])


def aggregate(lows: np.ndarray, means: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """Rows of points (each row one new point) as min, avg, max, ignoring what is missing."""
    # A series absent for a whole point (all NaN) is the normal case, not worth a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.stack(
            [np.nanmin(lows, axis=1), np.nanmean(means, axis=1), np.nanmax(highs, axis=1)],
            axis=1,
        )


# -- the series index ------------------------------------------------------------------------


class SeriesIndex:
    """Series key <-> id, kept in the `series` file: line n holds the key of id n, an empty
    line an id that is free again (`release`). New keys are appended at once; a file with
    released or reused ids is written anew (atomically) by `save`, which the store calls
    before it writes any block that may hold a reused id."""

    def __init__(self, path: Path):
        self.path = path
        self.keys: list[str] = path.read_text().splitlines() if path.exists() else []
        self.ids = {key: i for i, key in enumerate(self.keys) if key}
        self.free = [i for i, key in enumerate(self.keys) if not key]
        heapq.heapify(self.free)
        self.dirty = False

    def id(self, key: str) -> int:
        found = self.ids.get(key)
        if found is None:
            if "\n" in key or not key:
                raise StoreError(f"a series key is one line, not empty: {key!r}")
            if self.free:
                found = heapq.heappop(self.free)
                self.keys[found] = key
                self.dirty = True
            else:
                found = len(self.keys)
                self.keys.append(key)
                if not self.dirty:
                    with self.path.open("a") as out:
                        out.write(key + "\n")
            self.ids[key] = found
        return found

    def key(self, series: int) -> str | None:
        return self.keys[series] or None if series < len(self.keys) else None

    def live(self) -> set[int]:
        return set(self.ids.values())

    def release(self, series: Iterable[int]) -> None:
        """These ids hold no data anywhere any more: their keys go, the ids are free."""
        for i in series:
            key = self.keys[i]
            if key:
                del self.ids[key]
                self.keys[i] = ""
                self.dirty = True
        while self.keys and not self.keys[-1]:
            self.keys.pop()
        self.free = [i for i, key in enumerate(self.keys) if not key]
        heapq.heapify(self.free)

    def save(self) -> None:
        if not self.dirty:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(key + "\n" for key in self.keys))
        os.replace(tmp, self.path)
        self.dirty = False

    def matching(self, name: str, labels: Labels) -> dict[int, str]:
        """The series of metric `name` whose labels include `labels`."""
        wanted = [f'{k}="{v}"' for k, v in labels]
        return {
            i: key
            for i, key in enumerate(self.keys)
            if key and (key == name or key.startswith(name + "{")) and all(w in key for w in wanted)
        }


# -- the store -------------------------------------------------------------------------------


class Store:
    """One node's history. `append` every 10 s from one thread; `read` from any thread."""

    def __init__(
        self, root: Path, checkpoint: float = 60.0, clock: Callable[[], float] = time.time
    ):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.checkpoint = checkpoint
        self.clock = clock
        self.index = SeriesIndex(root / "series")
        self.lock = threading.Lock()
        self.head_start = _period_start(clock(), RAW)
        self.head: dict[int, np.ndarray] = self._load(RAW, self.head_start)
        self.written = clock()
        # Series id -> the start of the last day whose HOUR block holds it.
        self.last_day: dict[int, int] = {}
        for day in self._starts(HOUR):
            try:
                held = block_ids(self._path(HOUR, day))
            except (OSError, StoreError):
                continue
            self.last_day.update(dict.fromkeys(held, day))
        self._catch_up()

    # -- writing ---------------------------------------------------------------------------

    def append(self, t: float, samples: Iterable[tuple[str, float]]) -> None:
        """Samples taken at `t` (series key, value). A sample of a period already sealed is
        dropped: history is not rewritten."""
        start = _period_start(t, RAW)
        with self.lock:
            if start < self.head_start:
                return
            if start > self.head_start:
                self._seal()
                self.head_start = start
                self.head = self._load(RAW, start)
            slot = int((t - start) // RAW.step)
            for key, value in samples:
                column = self.head.get(series := self.index.id(key))
                if column is None:
                    column = self.head[series] = np.full((RAW.slots, 1), np.nan)
                column[slot, 0] = value
            if t - self.written >= self.checkpoint:
                self._write_head()

    def flush(self) -> None:
        with self.lock:
            self._write_head()

    def _write_head(self) -> None:
        self.index.save()  # before a block that may hold an id it gave again
        if self.head:
            write_block(self._path(RAW, self.head_start), self.head)
        self.written = self.clock()

    def _seal(self) -> None:
        """The hour is over: its last samples and its rollups to disk, old blocks away."""
        self._write_head()
        self._roll(self.head_start, self.head)
        self._prune(current=())  # the sealed hour's series are in its blocks now

    def _roll(self, start: int, raw: dict[int, np.ndarray]) -> None:
        if not raw:
            return
        day = _period_start(start, HOUR)
        hours = self._load(HOUR, day)
        slot = (start - day) // HOUR.step
        for series, values in raw.items():
            column = hours.get(series)
            if column is None:
                column = hours[series] = np.full((HOUR.slots, 3), np.nan)
            column[slot] = rollup(values, RAW, HOUR)[0]
        write_block(self._path(HOUR, day), hours)
        for series in raw:
            self.last_day[series] = max(day, self.last_day.get(series, day))
        # Last: an hour with its MINUTE block is rolled up (`_catch_up`), HOUR's included.
        write_block(self._path(MINUTE, start), {s: rollup(v, RAW, MINUTE) for s, v in raw.items()})

    def _catch_up(self) -> None:
        """Roll up the hours that ended while no agent ran (their raw blocks are there)."""
        for start in self._starts(RAW):
            if start < self.head_start and not self._path(MINUTE, start).exists():
                self._roll(start, self._load(RAW, start))
        self._prune(current=self.head)

    def _prune(self, current: Iterable[int]) -> None:
        """Blocks older than their resolution keeps go; so do the series no kept block holds
        any more (nor `current`, the hour under way): their ids are free again."""
        now = self.clock()
        for resolution in RESOLUTIONS:
            for start in self._starts(resolution):
                if self._expired(resolution, start, now):
                    self._path(resolution, start).unlink(missing_ok=True)
        gone = {
            series
            for series in self.index.live() - set(current)
            if self._expired(HOUR, self.last_day.get(series, -HOUR.period), now)
        }
        if gone:
            self.index.release(gone)
            self.index.save()
            for series in gone:
                self.last_day.pop(series, None)

    @staticmethod
    def _expired(resolution: Resolution, start: int, now: float) -> bool:
        return start + resolution.period < now - resolution.keep

    # -- reading ---------------------------------------------------------------------------

    def read(
        self, name: str, labels: Labels, start: float, end: float, resolution: Resolution
    ) -> dict[str, Points]:
        """Every series of `name` with `labels` among its own, over [start, end)."""
        with self.lock:
            wanted = self.index.matching(name, labels)
            head_start, head = (
                self.head_start,
                {s: self.head[s].copy() for s in wanted if s in self.head},
            )
        if not wanted:
            return {}
        first = int(start // resolution.step) * resolution.step
        count = max(0, math.ceil((end - first) / resolution.step))
        times = first + resolution.step * np.arange(count, dtype=np.float64)
        out = {key: np.full((count, 3), np.nan) for key in wanted.values()}
        for period, columns in self._periods(resolution, first, end, head_start, head, wanted):
            lo = max(period, first)
            hi = min(period + resolution.period, first + count * resolution.step)
            if hi <= lo:
                continue
            into = slice((lo - first) // resolution.step, (hi - first) // resolution.step)
            frm = slice((lo - period) // resolution.step, (hi - period) // resolution.step)
            for series, values in columns.items():
                shaped = values.reshape(resolution.slots, -1)[frm]
                out[wanted[series]][into] = (
                    np.repeat(shaped, 3, axis=1) if shaped.shape[1] == 1 else shaped
                )
        with self.lock:
            # An id freed and given to a new series while this read ran is not the old one.
            same = {key for series, key in wanted.items() if self.index.key(series) == key}
        return {key: Points(times, values) for key, values in out.items() if key in same}

    def _periods(
        self,
        resolution: Resolution,
        first: int,
        end: float,
        head_start: int,
        head: dict[int, np.ndarray],
        wanted: dict[int, str],
    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        period = _period_start(first, resolution)
        while period < end:
            if resolution is RAW and period == head_start:
                yield period, head
            elif resolution is not RAW and period <= head_start < period + resolution.period:
                # The hour under way has no rollups on disk yet: made from the head.
                columns = self._pick(self._load_block(resolution, period), wanted)
                rolled = {s: rollup(v, RAW, resolution) for s, v in head.items()}
                if resolution is MINUTE:
                    columns = rolled
                else:
                    slot = (head_start - period) // HOUR.step
                    for series, values in rolled.items():
                        merged = (
                            columns.get(series, np.full((HOUR.slots, 3), np.nan))
                            .reshape(HOUR.slots, 3)
                            .copy()
                        )
                        merged[slot] = values[0]
                        columns[series] = merged
                yield period, columns
            else:
                yield period, self._pick(self._load_block(resolution, period), wanted)
            period += resolution.period

    @staticmethod
    def _pick(block: Block | None, wanted: dict[int, str]) -> dict[int, np.ndarray]:
        if block is None:
            return {}
        found = {}
        for series in wanted:
            values = block.get(series)
            if values is not None:
                found[series] = values
        return found

    # -- files -----------------------------------------------------------------------------

    def _path(self, resolution: Resolution, start: int) -> Path:
        return self.root / resolution.name / f"{start}.blk"

    def _starts(self, resolution: Resolution) -> list[int]:
        folder = self.root / resolution.name
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.blk") if p.stem.isdigit())

    def _load_block(self, resolution: Resolution, start: int) -> Block | None:
        try:
            return Block(self._path(resolution, start))
        except FileNotFoundError:
            return None

    def _load(self, resolution: Resolution, start: int) -> dict[int, np.ndarray]:
        block = self._load_block(resolution, start)
        if block is None:
            return {}
        return {
            s: v.reshape(resolution.slots, resolution.aggregates).copy()
            for s, v in block.columns().items()
        }

    def size(self) -> int:
        """Bytes on disk."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


def _period_start(t: float, resolution: Resolution) -> int:
    return int(t // resolution.period) * resolution.period


def pick_resolution(start: float, end: float, now: float, points: int = 1500) -> Resolution:
    """The finest resolution that still holds `start` and gives at most `points` points."""
    for resolution in RESOLUTIONS:
        if now - start <= resolution.keep and (end - start) / resolution.step <= points:
            return resolution
    return HOUR
