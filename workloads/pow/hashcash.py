"""Hashcash-style puzzles (Back 2002; version 1 stamps, as the calibrated-PoW paper's `pow/hashcash.py`).

A challenge is `1:{bits}:{YYMMDDhhmmss}:{resource}:{ext}:{salt}:` (version, required leading zero bits,
UTC issue time, the resource it is bound to, an extension field, a random salt). A client answers with a
stamp: the challenge followed by a hex counter such that SHA-1(stamp) starts with `bits` zero bits
(2^bits hashes expected). `mint` keeps the SHA-1 state of the challenge prefix and only `.copy()`s it
per attempt, so an attempt hashes the counter, not the whole prefix again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import secrets
import string
import time

VERSION = "1"
DIGEST_BITS = 160                       # SHA-1
SALT_ALPHABET = string.ascii_letters + string.digits + "+/="
MAX_STAMP_CHARS = 1024


class MalformedStamp(ValueError):
    """A stamp that does not parse as a hashcash v1 stamp."""


@dataclasses.dataclass(frozen=True)
class Stamp:
    version: str
    bits: int
    date: str
    resource: str
    ext: str
    salt: str
    counter: str

    @property
    def challenge(self) -> str:
        """The challenge this stamp answers (everything before the counter)."""
        return f"{self.version}:{self.bits}:{self.date}:{self.resource}:{self.ext}:{self.salt}:"


def challenge(bits: int, resource: str, *, now: float | None = None, ext: str = "", salt_chars: int = 16) -> str:
    """A fresh challenge for `resource` (no ':' allowed in it) with `bits` leading zero bits required."""
    if ":" in resource or ":" in ext:
        raise ValueError(f"resource/ext may not contain ':', got {resource!r}, {ext!r}")
    if not 0 <= int(bits) <= DIGEST_BITS:
        raise ValueError(f"bits: expected 0..{DIGEST_BITS}, got {bits!r}")
    date = time.strftime("%y%m%d%H%M%S", time.gmtime(time.time() if now is None else now))
    salt = "".join(secrets.choice(SALT_ALPHABET) for _ in range(salt_chars))
    return f"{VERSION}:{int(bits)}:{date}:{resource}:{ext}:{salt}:"


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def mint(challenge: str, bits: int, start: int = 0) -> tuple[str, int]:
    """Solve `challenge`: (stamp, hashes computed). Reuses the prefix's SHA-1 state for every attempt."""
    prefix = hashlib.sha1(challenge.encode())
    limit = 1 << (DIGEST_BITS - int(bits))
    counter = start
    while True:
        h = prefix.copy()
        h.update(b"%x" % counter)
        if int.from_bytes(h.digest(), "big") < limit:
            return f"{challenge}{counter:x}", counter - start + 1
        counter += 1


def parse(stamp) -> Stamp:
    """The fields of a stamp; MalformedStamp (one line) when it is not `ver:bits:date:res:ext:salt:counter`."""
    if not isinstance(stamp, str):
        raise MalformedStamp(f"expected a string, got {type(stamp).__name__}")
    if len(stamp) > MAX_STAMP_CHARS:
        raise MalformedStamp(f"longer than {MAX_STAMP_CHARS} characters")
    parts = stamp.split(":")
    if len(parts) != 7:
        raise MalformedStamp(f"expected 7 ':'-separated fields, got {len(parts)}")
    version, bits, date, resource, ext, salt, counter = parts
    if not bits.isdigit() or not date.isdigit() or len(date) != 12:
        raise MalformedStamp(f"bits and date must be digits (date YYMMDDhhmmss), got {bits!r}, {date!r}")
    if not counter or any(c not in string.hexdigits for c in counter):
        raise MalformedStamp(f"counter must be hexadecimal, got {counter!r}")
    return Stamp(version, int(bits), date, resource, ext, salt, counter)


def stamp_zero_bits(stamp: str) -> int:
    """Leading zero bits of SHA-1(stamp)."""
    return leading_zero_bits(hashlib.sha1(stamp.encode()).digest())


def mint_rate(seconds: float = 1.0, windows: int = 10) -> float:
    """Hashes per second of `mint`'s inner loop on this process's core (a puzzle it cannot solve in time):
    the median over `windows` equal slices of `seconds`, so a burst of load on a shared machine moves it little."""
    prefix = hashlib.sha1(challenge(DIGEST_BITS, "rate").encode())
    rates, counter = [], 0
    for _ in range(max(1, windows)):
        start, t0 = counter, time.perf_counter()
        while time.perf_counter() - t0 < seconds / max(1, windows):
            for _ in range(1024):
                h = prefix.copy()
                h.update(b"%x" % counter)
                if int.from_bytes(h.digest(), "big") < 1:
                    break
                counter += 1
        rates.append((counter - start) / (time.perf_counter() - t0))
    return float(sorted(rates)[len(rates) // 2])


def raw_rate(seconds: float = 0.25) -> float:
    """Hashes per second of SHA-1 over fixed 64-byte inputs in a tight hashlib loop (the hash's own speed
    from Python, without the minter's counter formatting and comparison)."""
    data, sha1, n = b"x" * 64, hashlib.sha1, 0
    t0 = time.perf_counter()
    while True:
        for _ in range(4096):
            sha1(data).digest()
        n += 4096
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n / elapsed
