"""OHLC bars in columns (``Bars``), the calendar they fall in (``zone_of``, ``Buckets``), and merging.

A bar is ``(t, o, h, l, c, v, pv, n)``: the start of its window in Unix ms, open,
high, low, close, volume, price x volume (so merged bars keep an exact VWAP) and
the number of prints. ``Bars`` keeps them in an ``array('d')``, 64 bytes a
bar, sorted by ``t``. The live feed records its bars here (feed.py) and
the REST stand-in generates and serves its history from here (rest.py).

Days, weeks, months... are those of Massive's aggregates: Eastern Time for
stocks, options, indices and futures, UTC for forex and crypto.
"""

from __future__ import annotations

import datetime
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final, cast
from zoneinfo import ZoneInfo

Bar = tuple[float, float, float, float, float, float, float, float]
WIDTH: Final = 8  # numbers in a bar

SECOND_MS: Final = 1000
MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000

EASTERN: Final = ZoneInfo("America/New_York")
UTC: Final = datetime.UTC


def zone_of(kind: str) -> datetime.tzinfo:
    """The time zone of a market's days: UTC for forex and crypto, Eastern Time otherwise."""
    return UTC if kind in ("forex", "crypto") else EASTERN


class Bars:
    """Bars sorted by start time, interleaved in one ``array('d')``; with ``cap``, about the last ``cap``.

    One array, not eight columns: recording a live bar is one ``extend``, and
    reading a range back is a slice zipped eight by eight, both in C.
    """

    __slots__ = ("cap", "data")

    def __init__(self, cap: int = 0) -> None:
        self.cap = cap
        self.data = array("d")

    def __len__(self) -> int:
        return len(self.data) // WIDTH

    @classmethod
    def of_columns(cls, columns: Sequence[Sequence[float]]) -> Bars:
        """Bars of eight equally long columns: t, o, h, l, c, v, pv, n."""
        bars = cls()
        count = len(columns[0])
        bars.data = array("d", bytes(8 * WIDTH * count))
        for k, column in enumerate(columns):
            bars.data[k::WIDTH] = array("d", column)
        return bars

    def add(self, row: Bar) -> None:
        self.data.extend(row)

    def extend(self, rows: Iterable[Bar]) -> None:
        for row in rows:
            self.data.extend(row)

    def row(self, i: int) -> Bar:
        i %= len(self)
        return cast(Bar, tuple(self.data[i * WIDTH : (i + 1) * WIDTH]))

    def put(self, row: Bar) -> None:
        """Append ``row``, or merge it into the last bar when that one has the same start."""
        if self.data and self.data[-WIDTH] == row[0]:
            self.data[-WIDTH:] = array("d", merge(self.row(-1), row))
        else:
            self.data.extend(row)

    def trim(self, collect: bool = False) -> list[Bar]:
        """Past an eighth over ``cap``, drop the oldest down to ``cap``; with ``collect``, return them."""
        excess = len(self) - self.cap
        if not self.cap or excess <= self.cap // 8:
            return []
        dropped = list(self.rows(0, excess)) if collect else []
        del self.data[: excess * WIDTH]
        return dropped

    def span(self, lo: float, hi: float) -> tuple[int, int]:
        """Indexes of the bars that start in ``[lo, hi)``."""
        with memoryview(self.data) as view, view[::WIDTH] as starts:
            return bisect_left(starts, lo), bisect_left(starts, hi)

    def rows(self, i: int = 0, j: int | None = None) -> Iterator[Bar]:
        values = iter(self.data[i * WIDTH : None if j is None else j * WIDTH])
        return cast(Iterator[Bar], zip(*(values,) * WIDTH, strict=True))

    def between(self, lo: float, hi: float) -> Iterator[Bar]:
        return self.rows(*self.span(lo, hi))


def merge(a: Bar, b: Bar) -> Bar:
    """One bar of two consecutive ones (``a`` first), dated as ``a``."""
    return (a[0], a[1], max(a[2], b[2]), min(a[3], b[3]), b[4], a[5] + b[5], a[6] + b[6], a[7] + b[7])


def chain(*sources: Iterable[Bar]) -> Iterator[Bar]:
    """The bars of time-ordered sources in turn; two adjacent bars of the same start become one."""
    held: Bar | None = None
    for source in sources:
        for row in source:
            if held is None:
                held = row
            elif row[0] == held[0]:
                held = merge(held, row)
            else:
                yield held
                held = row
    if held is not None:
        yield held


def group(rows: Iterable[Bar], bucket: Callable[[int], tuple[int, int]]) -> Iterator[tuple[Bar, int, int]]:
    """Bars merged per bucket: ``(bar dated at the bucket's start, bucket end, bars merged)``."""
    start = end = -1
    held: list[float] = []
    count = 0
    for row in rows:
        t = int(row[0])
        if t >= end or t < start:
            if count:
                yield (start, held[1], held[2], held[3], held[4], held[5], held[6], held[7]), end, count
            start, end = bucket(t)
            held = list(row)
            count = 1
            continue
        if row[2] > held[2]:
            held[2] = row[2]
        if row[3] < held[3]:
            held[3] = row[3]
        held[4] = row[4]
        held[5] += row[5]
        held[6] += row[6]
        held[7] += row[7]
        count += 1
    if count:
        yield (start, held[1], held[2], held[3], held[4], held[5], held[6], held[7]), end, count


# --- calendars ----------------------------------------------------------------------------------

FIXED_MS: Final = {"second": SECOND_MS, "minute": MINUTE_MS, "hour": HOUR_MS}
CALENDAR: Final = ("day", "week", "month", "quarter", "year")
TIMESPANS: Final = (*FIXED_MS, *CALENDAR)
# 1970-01-04 was a Sunday: weeks start on Sundays, as Massive's weekly bars do.
_SUNDAY: Final = datetime.date(1970, 1, 4).toordinal()


def _local_midnight(day: datetime.date, zone: datetime.tzinfo) -> int:
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


def local_date(t: int, zone: datetime.tzinfo) -> datetime.date:
    return datetime.datetime.fromtimestamp(t / 1000, zone).date()


class Buckets:
    """The windows of ``multiplier`` x ``timespan`` bars in ``zone``: ``buckets(t) -> (start, end)``.

    Seconds, minutes and hours up to a day long count from the local midnight
    (a window never straddles two days); longer ones from the epoch. Days count
    from the epoch's local date, weeks start on Sundays, months, quarters and
    years on their first day; with a multiplier, every multiplier-th of them.
    """

    def __init__(self, timespan: str, multiplier: int, zone: datetime.tzinfo) -> None:
        if timespan not in TIMESPANS:
            raise ValueError(f"unknown timespan {timespan!r}")
        if multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        self.timespan = timespan
        self.multiplier = multiplier
        self.zone = zone
        self.size = FIXED_MS.get(timespan, 0) * multiplier
        self._day = (0, 0)  # the local day of the last fixed-size lookup

    def __call__(self, t: int) -> tuple[int, int]:
        if self.size:
            return self._fixed(t)
        return self._calendar(t)

    def _fixed(self, t: int) -> tuple[int, int]:
        size = self.size
        if size > DAY_MS:
            start = t - t % size
            return start, start + size
        d0, d1 = self._day
        if not d0 <= t < d1:
            if self.zone is UTC:
                d0 = t - t % DAY_MS
                d1 = d0 + DAY_MS
            else:
                day = local_date(t, self.zone)
                d0 = _local_midnight(day, self.zone)
                d1 = _local_midnight(day + datetime.timedelta(days=1), self.zone)
            self._day = (d0, d1)
        start = d0 + (t - d0) // size * size
        return start, min(start + size, d1)

    def _calendar(self, t: int) -> tuple[int, int]:
        day = local_date(t, self.zone)
        m = self.multiplier
        if self.timespan == "day":
            epoch = datetime.date(1970, 1, 1).toordinal()
            first = epoch + (day.toordinal() - epoch) // m * m
            begin, end = datetime.date.fromordinal(first), datetime.date.fromordinal(first + m)
        elif self.timespan == "week":
            first = _SUNDAY + (day.toordinal() - _SUNDAY) // (7 * m) * (7 * m)
            begin, end = datetime.date.fromordinal(first), datetime.date.fromordinal(first + 7 * m)
        else:
            months = {"month": 1, "quarter": 3, "year": 12}[self.timespan] * m
            index = (day.year * 12 + day.month - 1) // months * months
            begin = datetime.date(index // 12, index % 12 + 1, 1)
            index += months
            end = datetime.date(index // 12, index % 12 + 1, 1)
        return _local_midnight(begin, self.zone), _local_midnight(end, self.zone)

    def day_start(self, day: datetime.date) -> int:
        return _local_midnight(day, self.zone)
