"""LZW is Go's compress/lzw (LSB, literal width 8) byte for byte, and a bomb stays bounded."""

from __future__ import annotations

import random

import pytest

from sidecar.cluster import lzw
from sidecar.cluster.errors import DecodeError

PING = bytes.fromhex("0082a44e6f6465a7676f2d6e6f6465a55365714e6f01")
PING_GO119 = "00010822e5e40d9932a7cebc69e1c660995253cac429182020"
PING_GO113 = "00049172f2864c995367deb47063b04ca92965e2140c1010"
ABC = b"abcabcabcabcabcabcabc" * 10
ABC_GO = "00c388192390e0c082080f2a34c83061c3850e23429cf8b0a2448b142f6accc811a3c78d1f3b820c08"
LIMIT = 1 << 24


def codes(data: bytes) -> list[int]:
    """The LZW codes of `data`, read with Go's width-change timing (for the vector's list)."""
    out, bits, nbits, width, hi, pos = [], 0, 0, 9, 257, 0
    while True:
        while nbits < width:
            bits |= data[pos] << nbits
            pos, nbits = pos + 1, nbits + 8
        code, bits, nbits = bits & ((1 << width) - 1), bits >> width, nbits - width
        out.append(code)
        if code == lzw.EOF:
            return out
        if code == lzw.CLEAR:
            width, hi = 9, 257
            continue
        hi = min(hi + 1, 4095) if width == 12 else hi + 1
        if hi >= 1 << width:
            width += 1


def pack(codes_: list[int]) -> bytes:
    """The LSB bit packing of `codes_`, widths as the decoder expects them (no Clear)."""
    out, bits, nbits, width, hi = bytearray(), 0, 0, 9, 257
    for code in codes_:
        bits |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits, nbits = bits >> 8, nbits - 8
        hi = min(hi + 1, 4095) if width == 12 else hi + 1
        if hi >= 1 << width:
            width += 1
    return bytes(out) + (bytes([bits]) if nbits else b"")


def test_ping_encodes_as_go_1_19_with_a_leading_clear():
    assert lzw.compress(PING).hex() == PING_GO119
    assert codes(bytes.fromhex(PING_GO119)) == [
        256, 0, 130, 164, 78, 111, 100, 101, 167, 103, 111, 45, 110,
        262, 101, 165, 83, 101, 113, 261, 1, 257,
    ]  # fmt: skip


def test_ping_encodes_as_go_1_13_without_the_leading_clear():
    assert lzw.compress(PING, leading_clear=False).hex() == PING_GO113


@pytest.mark.parametrize("vector", [PING_GO119, PING_GO113])
def test_both_ping_vectors_decode(vector):
    assert lzw.decompress(bytes.fromhex(vector), max_output=LIMIT) == PING


def test_repetitive_input_matches_go_both_ways():
    assert lzw.compress(ABC).hex() == ABC_GO
    assert lzw.decompress(bytes.fromhex(ABC_GO), max_output=LIMIT) == ABC


def test_empty_input_is_clear_then_eof():
    assert lzw.compress(b"") == bytes.fromhex("000302")
    assert lzw.decompress(lzw.compress(b""), max_output=LIMIT) == b""
    assert lzw.decompress(lzw.compress(b"", leading_clear=False), max_output=LIMIT) == b""


@pytest.mark.parametrize("size", [1, 2, 511, 5_000, 20_000, 100_000])
def test_round_trip_through_table_resets(size):
    # A de Bruijn-ish mix: many distinct phrases fill the 4096-entry table and force Clears.
    data = random.Random(size).randbytes(size // 2) * 2
    for leading_clear in (True, False):
        packed = lzw.compress(data, leading_clear=leading_clear)
        assert lzw.decompress(packed, max_output=LIMIT) == data
    if size >= 20_000:
        assert codes(lzw.compress(data)).count(lzw.CLEAR) >= 2


def test_bytes_after_eof_are_ignored():
    assert lzw.decompress(bytes.fromhex(PING_GO119) + b"junk", max_output=LIMIT) == PING


def test_a_stream_without_eof_is_an_error():
    with pytest.raises(DecodeError, match="EOF"):
        lzw.decompress(bytes.fromhex(PING_GO119)[:-3], max_output=LIMIT)


def test_a_code_beyond_the_table_is_an_error():
    # 9-bit code 300 right after the start: nothing has been assigned yet.
    with pytest.raises(DecodeError, match="invalid LZW code 300"):
        lzw.decompress((300).to_bytes(2, "little"), max_output=LIMIT)


def test_the_bomb_helper_really_expands():
    # 0, then each new code (KwKwK) one zero longer: 1 + 2 + ... + 3839 zeros, ~7.4 MB.
    codes_ = [0, *range(258, 4096), lzw.EOF]
    assert lzw.decompress(pack(codes_), max_output=LIMIT) == bytes(3839 * 3840 // 2)


def test_a_bomb_stops_at_the_output_limit():
    # A full table, then its longest entry (3,839 zeros) repeated: ~4 KB per 12-bit code.
    bomb = pack([0, *range(258, 4096), *[4095] * 20_000, lzw.EOF])
    assert len(bomb) < 40_000
    with pytest.raises(DecodeError, match="exceeds the limit of 1048576"):
        lzw.decompress(bomb, max_output=1 << 20)
