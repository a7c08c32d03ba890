"""The published rules a censor applies to spot fully encrypted traffic, as a test helper.

Wu et al., "How the Great Firewall of China Detects and Blocks Fully Encrypted Traffic",
USENIX Security 2023, Algorithm 1 (section 4): the censor looks at the first data-carrying
packet a client sends on a TCP connection and lets the connection pass if any of five
exemptions holds; it blocks (with some probability, section 6.3) the connections none of them
exempts. The rules as inferred there:

- Ex1 (section 4.1): the average number of bits set per byte, popcount(pkt)/len(pkt), is at
  most 3.4 or at least 4.6. Random bytes average 4, so they fail it.
- Ex2 (section 4.2): the first six (or more) bytes are printable ASCII, 0x20 to 0x7e.
- Ex3 (section 4.2): more than half of the bytes are printable ASCII.
- Ex4 (section 4.2): more than 20 contiguous bytes are printable ASCII.
- Ex5 (section 4.3): the first bytes match the fingerprint of TLS, a record header
  ``[\\x16-\\x17]\\x03[\\x00-\\x09]`` (handshake or application data, version 3.x), or of an
  HTTP request, the method and its space: ``GET``, ``PUT``, ``POST``, ``HEAD``. The paper reports
  the method compared regardless of case; the authors' own checker compares it as written.
  Matching regardless of case exempts strictly more, so a payload this helper flags is flagged
  by both readings.

The paper measured TCP only and found UDP unaffected (section 4.4); ``verdict`` applies the
same rules to any payload, so a UDP carrier's first datagram can be judged as a TCP one would be.
"""

from __future__ import annotations

from dataclasses import dataclass

POPCOUNT_LOW, POPCOUNT_HIGH = 3.4, 4.6
"""Ex1's bounds: an average popcount at or outside them exempts."""
PRINTABLE_PREFIX = 6
"""Ex2: this many leading printable bytes exempt."""
PRINTABLE_FRACTION = 0.5
"""Ex3: more than this fraction of printable bytes exempts."""
PRINTABLE_RUN = 20
"""Ex4: a run of more than this many printable bytes exempts."""
HTTP_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ")
"""Ex5: the HTTP request prefixes the censor exempts (section 4.3)."""


def _printable(byte: int) -> bool:
    return 0x20 <= byte <= 0x7E


def popcount_per_byte(payload: bytes) -> float:
    """The average number of bits set per byte (Ex1's measure)."""
    return sum(byte.bit_count() for byte in payload) / len(payload)


def printable_prefix(payload: bytes) -> int:
    """How many bytes at the start are printable ASCII (Ex2's measure)."""
    for i, byte in enumerate(payload):
        if not _printable(byte):
            return i
    return len(payload)


def printable_fraction(payload: bytes) -> float:
    """The fraction of printable ASCII bytes (Ex3's measure)."""
    return sum(1 for byte in payload if _printable(byte)) / len(payload)


def longest_printable_run(payload: bytes) -> int:
    """The longest run of contiguous printable ASCII bytes (Ex4's measure)."""
    longest = run = 0
    for byte in payload:
        run = run + 1 if _printable(byte) else 0
        longest = max(longest, run)
    return longest


def protocol_fingerprint(payload: bytes) -> str:
    """``"TLS"`` or ``"HTTP"`` if the payload starts as Ex5's fingerprints say, else ``""``."""
    if len(payload) >= 3 and payload[0] in (0x16, 0x17) and payload[1] == 0x03 and payload[2] <= 0x09:
        return "TLS"
    head = payload[:5].upper()
    if any(head.startswith(method) for method in HTTP_METHODS):
        return "HTTP"
    return ""


@dataclass(frozen=True)
class Verdict:
    """What Algorithm 1 says about a first payload: each measure, each exemption, the outcome."""

    length: int
    popcount: float
    prefix: int
    fraction: float
    run: int
    fingerprint: str

    @property
    def ex1(self) -> bool:
        return self.popcount <= POPCOUNT_LOW or self.popcount >= POPCOUNT_HIGH

    @property
    def ex2(self) -> bool:
        return self.prefix >= PRINTABLE_PREFIX

    @property
    def ex3(self) -> bool:
        return self.fraction > PRINTABLE_FRACTION

    @property
    def ex4(self) -> bool:
        return self.run > PRINTABLE_RUN

    @property
    def ex5(self) -> bool:
        return bool(self.fingerprint)

    @property
    def exemptions(self) -> list[str]:
        """The names of the exemptions that hold (empty: flagged)."""
        held = (self.ex1, self.ex2, self.ex3, self.ex4, self.ex5)
        return [f"Ex{i}" for i, ok in enumerate(held, 1) if ok]

    @property
    def flagged(self) -> bool:
        """No exemption holds: the connection is a candidate for blocking."""
        return not self.exemptions

    def summary(self) -> str:
        what = "FLAGGED" if self.flagged else "exempt (" + ", ".join(self.exemptions) + ")"
        return (
            f"{what}; {self.length} bytes, popcount {self.popcount:.2f}/byte, printable prefix "
            f"{self.prefix}, printable {self.fraction:.0%}, longest printable run {self.run}"
            + (f", {self.fingerprint} fingerprint" if self.fingerprint else "")
        )


def verdict(payload: bytes) -> Verdict:
    """Judge a client's first data-carrying packet by the five exemptions of Algorithm 1."""
    if not payload:
        raise ValueError("the rules judge a packet that carries data: the payload is empty")
    return Verdict(
        length=len(payload),
        popcount=popcount_per_byte(payload),
        prefix=printable_prefix(payload),
        fraction=printable_fraction(payload),
        run=longest_printable_run(payload),
        fingerprint=protocol_fingerprint(payload),
    )
