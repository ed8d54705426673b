"""US equity market hours (regular session, 09:30-16:00 America/New_York, Monday-Friday).

Exchange holidays are not modelled: on a holiday the producer polls at the open-market
cadence and the simulated market trades.
"""

from __future__ import annotations

from datetime import datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")  # Windows: the tzdata package provides it
OPEN, CLOSE = time(9, 30), time(16, 0)


@lru_cache(maxsize=256)  # the schedule asks about the same instant once per kind
def is_open(t: datetime) -> bool:
    local = t.astimezone(NEW_YORK)
    return local.weekday() < 5 and OPEN <= local.time() < CLOSE
