"""The one error of the cluster codec: any malformed input raises `DecodeError`."""

from __future__ import annotations


class DecodeError(ValueError):
    """Bytes that are not a valid message, packet or stream (the message names what and why)."""


class LimitExceeded(DecodeError):
    """Input that would make the decoder exceed one of its limits (size, depth, count): a
    compound refuses the whole packet for it, not just the part."""
