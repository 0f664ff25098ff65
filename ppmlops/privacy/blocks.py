"""Privacy blocks: a dataset's rows divided by event time into blocks with budgets of their own.

A dataset with a window column declares `privacy.blocks` (a length, e.g. P7D) and keeps the
default `privacy.block_origin` (Monday 2000-01-03 00:00 UTC) or names another PUBLIC instant.
Block i is [origin + i * length, origin + (i + 1) * length); a row belongs to the one block its
event time falls in, whatever the data holds (the calendar is fixed by the spec, never fitted
to the rows). A block's id is its start: the ISO date when blocks start at midnight UTC, else
the ISO date-time in UTC. Ids are public: they come from the calendar alone.

Rows of different blocks are disjoint, so a run that reads some blocks costs each of them its
whole curve and the others nothing (parallel composition, as for the train/holdout split; PrivateKube
/ DPF, Luo et al. OSDI 2021). A dataset without blocks is one block, "all": today's one pot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone

from ppmlops.errors import PpmlopsError

ALL = "all"  # the one block of a dataset without blocks (and of entries made before blocks)
DEFAULT_ORIGIN = datetime(2000, 1, 3, tzinfo=timezone.utc)  # a Monday: weekly blocks start on Mondays
# A run may touch at most this many blocks: its block list is stored with every ledger entry.
MAX_BLOCKS_PER_RUN = 10_000


class BlockError(PpmlopsError):
    """A block id, calendar or window that the block calendar cannot use."""


def as_utc(t: datetime) -> datetime:
    """`t` in UTC; a naive time is taken to be UTC already (Airflow's and the specs' convention)."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _micro(d: timedelta) -> int:
    # Integer microseconds: block arithmetic must not depend on float rounding of seconds.
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


@dataclass(frozen=True)
class BlockCalendar:
    """Block length and origin (length None: one block, "all")."""

    length: timedelta | None = None
    origin: datetime = DEFAULT_ORIGIN

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", as_utc(self.origin))
        if self.length is not None and self.length <= timedelta(0):
            raise BlockError(f"privacy block length must be positive, got {self.length}")

    @property
    def blocked(self) -> bool:
        return self.length is not None

    # -- storage (the ledger keeps length in seconds and origin as ISO text) --------------------
    @property
    def seconds(self) -> float:
        return 0.0 if self.length is None else self.length.total_seconds()

    @classmethod
    def stored(cls, seconds: float | None, origin: str | None) -> "BlockCalendar | None":
        """The calendar a ledger row holds; None for a dataset registered before blocks existed."""
        if seconds is None:
            return None
        if seconds == 0:
            return cls()
        return cls(timedelta(seconds=seconds), datetime.fromisoformat(origin) if origin else DEFAULT_ORIGIN)

    def describe(self) -> str:
        if self.length is None:
            return "one block (no privacy.blocks)"
        return f"blocks of {self.length} from {self.origin.isoformat()}"

    # -- the calendar ---------------------------------------------------------------------------
    def _need_blocks(self) -> timedelta:
        if self.length is None:
            raise BlockError("this dataset has no privacy blocks (it is one block, 'all')")
        return self.length

    def index(self, t: datetime) -> int:
        """floor((t - origin) / length): the block that holds event time t."""
        return (_micro(as_utc(t) - self.origin)) // _micro(self._need_blocks())

    def start(self, index: int) -> datetime:
        return self.origin + self._need_blocks() * index

    def block_id(self, index: int) -> str:
        s = self.start(index)
        whole_days = _micro(self._need_blocks()) % _micro(timedelta(days=1)) == 0
        if whole_days and self.origin.time() == time(0):
            return s.date().isoformat()
        return s.strftime("%Y-%m-%dT%H:%M:%S") + (f".{s.microsecond:06d}" if s.microsecond else "") + "Z"

    def block_of(self, t: datetime) -> str:
        return self.block_id(self.index(t)) if self.blocked else ALL

    def parse(self, block_id: str) -> int:
        """The index of a block id; BlockError when it is not a block start of this calendar."""
        if not isinstance(block_id, str):
            raise BlockError(f"a block id is a string, got {block_id!r}")
        try:
            t = as_utc(datetime.fromisoformat(block_id.replace("Z", "+00:00")))
        except ValueError:
            raise BlockError(f"{block_id!r} is not a block id (the block's start, an ISO date or date-time)") from None
        i = self.index(t)
        if self.block_id(i) != block_id:
            raise BlockError(f"{block_id!r} is not the start of a block ({self.describe()}); "
                             f"the block holding it starts {self.block_id(i)}")
        return i

    def bounds(self, block_id: str) -> tuple[datetime, datetime]:
        i = self.parse(block_id)
        return self.start(i), self.start(i + 1)

    def touching(self, start: datetime | None, end: datetime) -> tuple[str, ...]:
        """The blocks that intersect [start, end), oldest first (("all",) without blocks)."""
        if not self.blocked:
            return (ALL,)
        if start is None:
            raise BlockError(
                "a run on a dataset with privacy blocks needs a window with a start: give "
                "dataset.window.lookback or run it with a data interval (a scheduled run, a backfill)")
        start, end = as_utc(start), as_utc(end)
        if not start < end:
            raise BlockError(f"the run's window [{start.isoformat()}, {end.isoformat()}) is empty")
        first, last = self.index(start), self.index(end - timedelta(microseconds=1))
        if last - first + 1 > MAX_BLOCKS_PER_RUN:
            raise BlockError(f"the run's window touches {last - first + 1} privacy blocks, more than "
                             f"{MAX_BLOCKS_PER_RUN}: use longer privacy.blocks or a shorter lookback")
        return tuple(self.block_id(i) for i in range(first, last + 1))

    def existed_at(self, block_id: str, when: str | datetime) -> bool:
        """Whether the block had begun at `when` (an entry's created_at): a one-pot entry made then
        could have read its rows, so it counts against it (entries from before blocks)."""
        if block_id == ALL:
            return True
        when = as_utc(datetime.fromisoformat(when) if isinstance(when, str) else when)
        return self.bounds(block_id)[0] < when

    def checked(self, blocks) -> tuple[str, ...]:
        """A charge's block list, validated: non-empty, distinct, of this calendar, oldest first."""
        blocks = tuple(blocks)
        if not blocks:
            raise BlockError("a charge must name at least one privacy block")
        if len(set(blocks)) != len(blocks):
            raise BlockError(f"a charge names a privacy block twice: {sorted(blocks)}")
        if not self.blocked:
            if blocks != (ALL,):
                raise BlockError(f"this dataset has no privacy blocks: its only block is {ALL!r}, got {list(blocks)}")
            return blocks
        return tuple(sorted(blocks, key=self.parse))


def length_text(length: timedelta) -> str:
    """ISO 8601 duration of a block length (P7D, PT6H) for messages."""
    days, rest = length.days, length - timedelta(days=length.days)
    secs = rest.total_seconds()
    out = "P" + (f"{days}D" if days else "")
    if secs:
        out += "T" + (f"{int(secs)}S" if math.isclose(secs, round(secs)) else f"{secs}S")
    return out if out != "P" else "PT0S"


def calendar_of(privacy) -> BlockCalendar:
    """The block calendar of a spec's privacy section (ppmlops.spec.Privacy)."""
    if privacy.blocks is None:
        return BlockCalendar()
    return BlockCalendar(privacy.blocks, privacy.block_origin)


def unlock_horizon(calendar: BlockCalendar, lookback: timedelta | None) -> timedelta | None:
    """The span of run ends over which a block's budget unlocks (None: unlocked at once).

    A run ending at t with lookback H reads [t - H, t), so runs ending in (start, start + length
    + H) read a block; with H a multiple of the length and runs every block length, exactly
    N = H / length of them. Unlocking over max(H, length) gives those runs 1/N each (the brief's
    b * (reads + 1) / N) and, with a lookback shorter than a block, spreads the block over the
    runs inside it. Without a lookback a run reads only its own data interval: each block is read
    about once and is unlocked at once (today's behaviour)."""
    if not calendar.blocked or lookback is None:
        return None
    return max(lookback, calendar._need_blocks())


def unlocked_fraction(calendar: BlockCalendar, block: str, end: datetime, horizon: timedelta | None) -> float:
    """The share of a block's lifetime budget unlocked for a run whose window ends at `end`:
    min(1, (end - block start) / horizon), DPF's unlocking (Luo et al. OSDI 2021) by time.

    By time rather than by the count of earlier reads: the count rises with every run, so a burst
    of manual runs (or an adversary who can trigger them) would unlock a block as fast as it ran;
    the calendar and the run's window end are public and only advance with the data. Unlocking is
    a scheduling rule (the plan sizes the run to it); the ledger's per-block lifetime filter is
    what the guarantee rests on, whatever is unlocked."""
    if not calendar.blocked or horizon is None or block == ALL:
        return 1.0
    elapsed = _micro(as_utc(end) - calendar.bounds(block)[0])
    if elapsed <= 0:
        return 0.0
    # A block that has begun unlocks at least its first share (length / horizon, as DPF unlocks a
    # share when a block arrives): a manual run whose window ends inside the newest block (now)
    # would otherwise find almost nothing unlocked there and be sized to zero.
    first = _micro(calendar.length) / _micro(horizon)
    return min(1.0, max(first, elapsed / _micro(horizon)))
