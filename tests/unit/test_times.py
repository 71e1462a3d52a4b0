"""RFC 3339 times with nanoseconds, as Go writes and reads them."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.state import times


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (times.ZERO_TIME, "0001-01-01T00:00:00Z"),
        (0, "1970-01-01T00:00:00Z"),
        (1_672_628_645_600_000_000, "2023-01-02T03:04:05.6Z"),
        (1_425_431_566_669_648_453, "2015-03-04T01:12:46.669648453Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
        (951_782_400 * times.NANOS_PER_SECOND, "2000-02-29T00:00:00Z"),
        (times.MIN_ENCODABLE, "0000-01-01T00:00:00Z"),
        (times.MAX_ENCODABLE, "9999-12-31T23:59:59.999999999Z"),
    ],
)
def test_format_and_parse_agree_with_go(nanos, text):
    assert times.format_time(nanos) == text
    assert times.parse_time(text) == nanos


def test_parse_keeps_the_instant_of_an_offset_time():
    assert times.parse_time("2023-01-02T05:04:05.6+02:00") == times.parse_time(
        "2023-01-02T03:04:05.6Z"
    )
    assert times.parse_time("2023-01-01T23:34:05-03:30") == times.parse_time("2023-01-02T03:04:05Z")


def test_parse_truncates_fraction_digits_past_nanoseconds():
    assert times.parse_time("1970-01-01T00:00:00.1234567899Z") == 123_456_789


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2023-01-02",
        "2023-01-02 03:04:05Z",
        "2023-01-02T03:04:05",
        "2023-13-01T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2023-01-01T24:00:00Z",
        "2023-01-01T00:60:00Z",
        "2023-01-01T00:00:60Z",
        "2023-01-01T00:00:00.Z",
        "2023-01-01T00:00:00+24:00",
        "٢٠٢٣-01-01T00:00:00Z",
    ],
)
def test_parse_refuses_what_go_refuses(text):
    with pytest.raises(ValueError, match="RFC 3339"):
        times.parse_time(text)


def test_format_refuses_years_go_cannot_marshal():
    with pytest.raises(ValueError, match="outside years"):
        times.format_time(times.MAX_ENCODABLE + 1)


@given(st.integers(min_value=times.MIN_ENCODABLE, max_value=times.MAX_ENCODABLE))
def test_every_encodable_time_round_trips(nanos):
    assert times.parse_time(times.format_time(nanos)) == nanos


@given(
    st.datetimes(
        min_value=dt.datetime(1, 1, 1),  # noqa: DTZ001 - naive on purpose, read as UTC
        max_value=dt.datetime(9999, 12, 31),  # noqa: DTZ001
    )
)
def test_calendar_arithmetic_agrees_with_the_standard_library(moment):
    text = moment.isoformat(timespec="microseconds") + "Z"
    since_epoch = moment.replace(tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    expected = (since_epoch // dt.timedelta(microseconds=1)) * 1000
    assert times.parse_time(text) == expected
