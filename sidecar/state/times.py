"""Go `time.Time` as nanoseconds since the Unix epoch, and its RFC 3339 text.

The core keeps every time as an `int` of nanoseconds since 1970-01-01T00:00:00Z (UTC): it
compares exactly, survives a round trip without losing the nanoseconds Go writes, and costs
nothing to add to (`+ 50` for a broadcast repeat). Python's `datetime` stops at microseconds,
so conversion is done here with integer calendar arithmetic.

Encoding matches Go's `Time.MarshalJSON` for UTC times: `2023-01-02T03:04:05.6Z` (fraction up
to nine digits, trailing zeros trimmed, no dot when zero). Decoding accepts what Go's RFC 3339
parser accepts: any number of fraction digits and `Z` or a numeric offset; the instant is kept,
the offset is not (every time we emit is UTC, as Go's Sidecar emits).
"""

from __future__ import annotations

import functools
import re
from typing import Final

NANOS_PER_SECOND: Final = 1_000_000_000
NANOS_PER_MICROSECOND: Final = 1_000
SECONDS_PER_DAY: Final = 86_400

# Go's zero `time.Time` (0001-01-01T00:00:00Z): what a missing time decodes to.
ZERO_TIME: Final = -62_135_596_800 * NANOS_PER_SECOND
# `time.Unix(0, 0)`: what Go starts a new server's and state's timestamps at.
UNIX_EPOCH: Final = 0


def seconds(value: float) -> int:
    """Return `value` seconds as nanoseconds."""
    return round(value * NANOS_PER_SECOND)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Return the days from 1970-01-01 to the given proleptic Gregorian date."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """Return (year, month, day) of the date `days` after 1970-01-01."""
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (
        day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096
    ) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + (3 if shifted_month < 10 else -9)
    return year_of_era + era * 400 + (month <= 2), month, day


@functools.lru_cache(maxsize=1024)
def _date_text(days: int) -> str:
    """Return `YYYY-MM-DD` of the date `days` after 1970-01-01 (memoized: dates repeat)."""
    year, month, day = _civil_from_days(days)
    return f"{year:04d}-{month:02d}-{day:02d}"


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


MIN_ENCODABLE: Final = _days_from_civil(0, 1, 1) * SECONDS_PER_DAY * NANOS_PER_SECOND
MAX_ENCODABLE: Final = _days_from_civil(10_000, 1, 1) * SECONDS_PER_DAY * NANOS_PER_SECOND - 1


def format_time(nanos: int) -> str:
    """Return `nanos` as Go's JSON text for a UTC time, e.g. `2023-01-02T03:04:05.6Z`.

    Raises ValueError outside years 0000-9999, as Go's `MarshalJSON` errors there.
    """
    if not MIN_ENCODABLE <= nanos <= MAX_ENCODABLE:
        raise ValueError(f"time {nanos} ns is outside years 0000-9999")
    total_seconds, fraction = divmod(nanos, NANOS_PER_SECOND)
    days, second_of_day = divmod(total_seconds, SECONDS_PER_DAY)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    text = f"{_date_text(days)}T{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:(Z)|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


@functools.lru_cache(maxsize=1024)
def _day_number(date: str) -> int:
    """Return the days since 1970-01-01 of a `YYYY-MM-DD` date (memoized: dates repeat).

    Raises ValueError for a date that does not exist.
    """
    year, month, day = int(date[:4]), int(date[5:7]), int(date[8:10])
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        raise ValueError(date)
    return _days_from_civil(year, month, day)


def parse_time(text: str) -> int:
    """Return the instant of an RFC 3339 time as nanoseconds since the Unix epoch.

    Raises ValueError, naming the text, for anything Go's RFC 3339 parser would refuse.
    Fraction digits past the ninth are dropped (truncated, as Go does).
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    date, hour_s, minute_s, second_s, fraction, zulu, sign, offset_h, offset_m = match.groups()
    hour, minute, second = int(hour_s), int(minute_s), int(second_s)
    try:
        days = _day_number(date)
    except ValueError:
        raise ValueError(f"RFC 3339 time out of range: {text!r}") from None
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"RFC 3339 time out of range: {text!r}")
    offset = 0
    if zulu is None:
        offset_hours, offset_minutes = int(offset_h), int(offset_m)
        if offset_hours > 23 or offset_minutes > 59:
            raise ValueError(f"RFC 3339 time zone offset out of range: {text!r}")
        offset = (offset_hours * 3600 + offset_minutes * 60) * (-1 if sign == "-" else 1)
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    seconds_ = days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second - offset
    return seconds_ * NANOS_PER_SECOND + nanos
