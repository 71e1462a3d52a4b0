"""LZW exactly as Go's `compress/lzw` with order LSB and literal width 8 (cluster-wire.md §3.2).

Clear = 256, EOF = 257, the first table code is 258, codes start 9 bits wide and grow to 12;
codes are packed least significant bit first and the last byte is zero-padded. The encoder
resets the table (emitting Clear) when the next code would be 4095; the decoder accepts a Clear
anywhere and freezes the table when it is full, as Go's does. `decompress` stops with
`LimitExceeded` (a `DecodeError`) beyond `max_output` bytes, so an LZW bomb costs bounded memory.
"""

from __future__ import annotations

from typing import Final

from sidecar.cluster.errors import DecodeError, LimitExceeded

CLEAR: Final = 256
EOF: Final = 257
_LITERAL_WIDTH: Final = 8
_MAX_WIDTH: Final = 12
_MAX_CODE: Final = (1 << _MAX_WIDTH) - 1  # 4095: the encoder resets here
_LITERALS: Final = tuple(bytes([i]) for i in range(256))


def compress(data: bytes, *, leading_clear: bool = True) -> bytes:
    """Return `data` LZW-compressed as Go's writer does (Go ≥ 1.17 opens with a Clear code;
    `leading_clear=False` gives the older form, which Go decodes as well)."""
    # Codes are gathered with their widths and packed once at the end: one call per code
    # was most of the time spent here.
    codes: list[int] = []
    widths: list[int] = []
    emit_code = codes.append
    emit_width = widths.append
    width = _LITERAL_WIDTH + 1
    overflow = 1 << width
    hi = EOF
    table: dict[int, int] = {}
    lookup = table.get
    if leading_clear:
        emit_code(CLEAR)
        emit_width(width)
    if data:
        code = data[0]
        for literal in data[1:]:
            key = code << 8 | literal
            known = lookup(key)
            if known is not None:
                code = known
                continue
            emit_code(code)
            emit_width(width)
            code = literal
            hi += 1
            if hi == overflow:
                width += 1
                overflow <<= 1
            if hi == _MAX_CODE:
                emit_code(CLEAR)
                emit_width(width)
                width = _LITERAL_WIDTH + 1
                overflow = 1 << width
                hi = EOF
                table.clear()
                continue
            table[key] = hi
        emit_code(code)
        emit_width(width)
        hi += 1
        if hi == overflow:
            width += 1
        if hi == _MAX_CODE:
            emit_code(CLEAR)
            emit_width(width)
            width = _LITERAL_WIDTH + 1
    emit_code(EOF)
    emit_width(width)
    return _pack_lsb(codes, widths)


def _pack_lsb(codes: list[int], widths: list[int]) -> bytes:
    """Return `codes` of the given bit `widths` packed least significant bit first, the last
    byte zero-padded."""
    out = bytearray()
    bits = 0
    nbits = 0
    for code, width in zip(codes, widths, strict=True):
        bits |= code << nbits
        nbits += width
        if nbits >= 16:
            out += (bits & 0xFFFF).to_bytes(2, "little")
            bits >>= 16
            nbits -= 16
    while nbits > 0:
        out.append(bits & 0xFF)
        bits >>= 8
        nbits -= 8
    return bytes(out)


def decompress(data: bytes, *, max_output: int) -> bytes:
    """Return the bytes that the LZW stream `data` encodes; bytes after its EOF code are
    ignored. Raises `DecodeError` on an invalid code or a missing EOF code, and
    `LimitExceeded` beyond `max_output` bytes of output."""
    out: list[bytes] = []
    produced = 0
    table: list[bytes] = [*_LITERALS, b"", b""]
    append = table.append
    literals = _LITERALS
    width = _LITERAL_WIDTH + 1
    mask = (1 << width) - 1
    overflow = 1 << width
    hi = EOF
    last: bytes | None = None
    bits = 0
    nbits = 0
    pos = 0
    size = len(data)
    while True:
        if nbits < width:
            # Two bytes always suffice for a code of at most 12 bits.
            if pos + 1 < size:
                bits |= (data[pos] | data[pos + 1] << 8) << nbits
                pos += 2
                nbits += 16
            elif pos < size and nbits + 8 >= width:
                bits |= data[pos] << nbits
                pos += 1
                nbits += 8
            else:
                raise DecodeError(f"LZW stream of {size} bytes ends without its EOF code")
        code = bits & mask
        bits >>= width
        nbits -= width
        if code < 256:
            entry = literals[code]
            if last is not None:
                append(last + entry)
        elif code == CLEAR:
            del table[EOF + 1 :]
            width = _LITERAL_WIDTH + 1
            mask = (1 << width) - 1
            overflow = 1 << width
            hi = EOF
            last = None
            continue
        elif code == EOF:
            return b"".join(out)
        elif code < len(table):
            entry = table[code]
            if last is not None:
                append(last + literals[entry[0]])
        elif code == hi and last is not None:
            entry = last + literals[last[0]]
            append(entry)
        else:
            raise DecodeError(f"invalid LZW code {code} (next code {hi}) at byte {pos}")
        out.append(entry)
        produced += len(entry)
        if produced > max_output:
            raise LimitExceeded(f"LZW output exceeds the limit of {max_output} bytes")
        last = entry
        hi += 1
        if hi >= overflow:
            if width == _MAX_WIDTH:
                last = None
                hi -= 1
            else:
                width += 1
                mask = (1 << width) - 1
                overflow <<= 1
