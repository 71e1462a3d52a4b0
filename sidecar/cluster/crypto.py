"""memberlist's AES-GCM encryption format (cluster-wire.md §3.4), with a keyring.

A payload is `[version][nonce 12][ciphertext + tag 16]`; version 0 pads the plaintext with
PKCS#7 to 16 bytes, version 1 does not. Packets carry no authenticated data; a stream is
`0A | u32 BE length | payload` with the first 5 bytes as authenticated data. The first key of
the keyring encrypts, any key decrypts. Nonces come in from the caller (this package draws no
randomness of its own). The `cryptography` package is imported on first use: it costs some
7 MiB of resident memory, and gossip is unencrypted unless a key is configured.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from sidecar.cluster.errors import DecodeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
_BLOCK: Final = 16
ENCRYPT_TYPE: Final = 10
MAX_STREAM_CIPHERTEXT: Final = 10 * 1024 * 1024  # Go's maxPushStateBytes
_KEY_SIZES: Final = (16, 24, 32)
_VERSIONS: Final = (0, 1)


def overhead(version: int = 1) -> int:
    """Return the bytes encryption adds to a packet at most (29 for version 1, 45 for 0)."""
    return 1 + NONCE_SIZE + TAG_SIZE + (_BLOCK if version == 0 else 0)


@dataclass(frozen=True, slots=True)
class Keyring:
    """AES keys of 16, 24 or 32 bytes; `keys[0]` encrypts, every key may decrypt."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a keyring needs at least one key")
        for key in self.keys:
            if len(key) not in _KEY_SIZES:
                raise ValueError(f"key of {len(key)} bytes; AES keys are 16, 24 or 32 bytes")


@functools.lru_cache(maxsize=16)
def _cipher(key: bytes) -> AESGCM:
    """Return the AES-GCM cipher of `key` (made once per key)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def encrypt(
    keyring: Keyring, plaintext: bytes, *, nonce: bytes, aad: bytes = b"", version: int = 1
) -> bytes:
    """Return `[version][nonce][ciphertext+tag]` of `plaintext` under the keyring's first key."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce of {len(nonce)} bytes; expected {NONCE_SIZE}")
    if version not in _VERSIONS:
        raise ValueError(f"encryption version {version}; expected 0 or 1")
    if version == 0:
        pad = _BLOCK - len(plaintext) % _BLOCK
        plaintext = plaintext + bytes([pad]) * pad
    sealed = _cipher(keyring.keys[0]).encrypt(nonce, plaintext, aad or None)
    return bytes([version]) + nonce + sealed


def decrypt(keyring: Keyring, payload: bytes, *, aad: bytes = b"") -> bytes:
    """Return the plaintext of `payload`, trying every key. Raises `DecodeError` when the
    version is unknown, the payload is too short, or no key opens it."""
    if not payload:
        raise DecodeError("empty encrypted payload")
    version = payload[0]
    if version not in _VERSIONS:
        raise DecodeError(f"unsupported encryption version {version}")
    if len(payload) < overhead(version):
        raise DecodeError(f"encrypted payload of {len(payload)} bytes is too short")
    from cryptography.exceptions import InvalidTag

    nonce = payload[1 : 1 + NONCE_SIZE]
    sealed = payload[1 + NONCE_SIZE :]
    for key in keyring.keys:
        try:
            plain = _cipher(key).decrypt(nonce, sealed, aad or None)
        except InvalidTag:
            continue
        if version == 1:
            return plain
        pad = plain[-1] if plain else 0
        if not 1 <= pad <= min(_BLOCK, len(plain)):
            raise DecodeError(f"bad PKCS#7 padding {pad} in a version 0 payload")
        return plain[:-pad]
    raise DecodeError(f"no key of {len(keyring.keys)} decrypts the payload")


def encrypt_packet(keyring: Keyring, packet: bytes, *, nonce: bytes, version: int = 1) -> bytes:
    """Return the UDP packet `packet` encrypted (outside the CRC; no authenticated data)."""
    return encrypt(keyring, packet, nonce=nonce, version=version)


def decrypt_packet(keyring: Keyring, data: bytes) -> bytes:
    """Return the plaintext packet inside the encrypted UDP packet `data`."""
    return decrypt(keyring, data)


def encrypt_stream(keyring: Keyring, stream: bytes, *, nonce: bytes, version: int = 1) -> bytes:
    """Return `0A | u32 BE length | payload` of `stream` (already compressed, if at all)."""
    length = len(stream) + overhead(version)
    if version == 0:
        length -= len(stream) % _BLOCK
    header = bytes([ENCRYPT_TYPE]) + length.to_bytes(4, "big")
    sealed = encrypt(keyring, stream, nonce=nonce, aad=header, version=version)
    assert len(sealed) == length
    return header + sealed


def stream_header_length(header: bytes) -> int:
    """Return the payload length an encrypted stream's 5-byte `header` announces."""
    length = int.from_bytes(header[1:5], "big")
    if length > MAX_STREAM_CIPHERTEXT:
        raise DecodeError(f"encrypted stream of {length} bytes exceeds {MAX_STREAM_CIPHERTEXT}")
    return length
