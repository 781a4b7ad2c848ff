"""The SSH wire encoding (RFC 4251 section 5), just what certificates and KRLs need.

A :class:`Reader` never reads past its buffer: every length is checked, and
any malformed input raises :class:`WireError` (a ValueError), never an
IndexError or a silent truncation. This is what the fuzz tests hold it to.
"""

from __future__ import annotations

import struct


_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from


class WireError(ValueError):
    """Malformed SSH wire data."""


class Reader:
    """Sequential reader over SSH wire data."""

    def __init__(self, data: bytes):
        self.data = bytes(data)
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise WireError(f"truncated: wanted {n} bytes at offset {self.pos}, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def raw(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        return self._take(n)

    def byte(self) -> int:
        return self._take(1)[0]

    # uint32, uint64 and string are the hot path of every certificate check (the signer re-reads
    # each certificate it makes): read in place, and on any shortfall fall back to _take, whose
    # error is the one message for every truncation.

    def uint32(self) -> int:
        pos = self.pos
        if pos + 4 <= len(self.data):
            self.pos = pos + 4
            return _U32(self.data, pos)[0]
        return _U32(self._take(4))[0]

    def uint64(self) -> int:
        pos = self.pos
        if pos + 8 <= len(self.data):
            self.pos = pos + 8
            return _U64(self.data, pos)[0]
        return _U64(self._take(8))[0]

    def string(self) -> bytes:
        data, pos = self.data, self.pos
        if pos + 4 <= len(data):
            end = pos + 4 + _U32(data, pos)[0]
            if end <= len(data):
                self.pos = end
                return data[pos + 4 : end]
        return self._take(self.uint32())

    def text(self) -> str:
        """A string that must be UTF-8 (names, key IDs, principals)."""
        raw = self.string()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise WireError(f"not UTF-8 at offset {self.pos - len(raw)}") from e

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise WireError("negative mpint")
        return int.from_bytes(raw, "big")

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def rest(self) -> bytes:
        return self._take(self.remaining())

    def end(self) -> None:
        """Raise unless every byte has been read."""
        if self.pos != len(self.data):
            raise WireError(f"{len(self.data) - self.pos} trailing bytes")


def uint32(n: int) -> bytes:
    return struct.pack(">I", n)


def uint64(n: int) -> bytes:
    return struct.pack(">Q", n)


def string(b: bytes | str) -> bytes:
    if isinstance(b, str):
        b = b.encode("utf-8")
    return struct.pack(">I", len(b)) + b


def mpint(n: int) -> bytes:
    if n == 0:
        return string(b"")
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big")  # keeps a leading 0 when the top bit is set
    return string(raw)
