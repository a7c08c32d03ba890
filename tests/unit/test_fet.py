"""The fully-encrypted-traffic rules (veilgate.testing.fet) against inputs built by hand from them.

Each vector isolates one exemption: bytes 0x0f ("\\x0f", four bits set, not printable) and "U"/"Z"
(0x55/0x5a, four bits set, printable) keep the popcount at exactly 4.0, so only the rule a vector
is about can exempt it.
"""

from __future__ import annotations

import os
import random
import ssl

import pytest

from veilgate.testing import fet

NP = b"\x0f"  # 4 bits set, not printable
P = b"U"  # 4 bits set, printable


def test_random_payloads_are_flagged_with_high_probability() -> None:
    rng = random.Random(20231)
    flagged = sum(fet.verdict(rng.randbytes(100)).flagged for _ in range(2000))
    # Over 100 random bytes the popcount averages 4.0 (sd 0.14: Ex1 needs 4 sd), 37% are printable
    # (sd 4.8 points: Ex3 needs 2.7 sd), six printable first bytes happen 0.26% of the time: about
    # 99.3% are flagged.
    assert flagged > 0.97 * 2000
    assert fet.verdict(os.urandom(100)).popcount == pytest.approx(4.0, abs=0.7)


def test_four_bits_a_byte_and_nothing_printable_is_flagged() -> None:
    v = fet.verdict(NP * 100)
    assert (v.popcount, v.prefix, v.fraction, v.run, v.fingerprint) == (4.0, 0, 0.0, 0, "")
    assert v.flagged and v.exemptions == []


def test_ex1_popcount_bounds_are_inclusive() -> None:
    # 0x07 has 3 bits set, 0x0f 4, 0x1f 5; none is printable.
    assert fet.verdict(b"\x07" * 6 + b"\x0f" * 4).exemptions == ["Ex1"]  # 34/10 = 3.4
    assert fet.verdict(b"\x07" * 5 + b"\x0f" * 5).flagged  # 3.5
    assert fet.verdict(b"\x1f" * 6 + b"\x0f" * 4).exemptions == ["Ex1"]  # 46/10 = 4.6
    assert fet.verdict(b"\x1f" * 5 + b"\x0f" * 5).flagged  # 4.5
    assert fet.verdict(b"\x00" * 100).exemptions == ["Ex1"]
    assert fet.verdict(b"\xff" * 100).exemptions == ["Ex1"]


def test_ex2_six_printable_bytes_first() -> None:
    assert fet.verdict(P * 6 + NP * 94).exemptions == ["Ex2"]
    assert fet.verdict(P * 5 + NP * 95).flagged


def test_ex3_more_than_half_printable() -> None:
    assert fet.verdict(NP + b"UZ\x0f" * 33).exemptions == ["Ex3"]  # 66 of 100, runs of 2
    assert fet.verdict(b"\x0fU" * 50).flagged  # exactly half is not more than half


def test_ex4_more_than_twenty_contiguous_printable() -> None:
    assert fet.verdict(NP * 40 + P * 21 + NP * 39).exemptions == ["Ex4"]
    assert fet.verdict(NP * 40 + P * 20 + NP * 40).flagged


def test_ex5_tls_record_headers() -> None:
    # 0x16 0x03 0x01 then 97 bytes of 0x0f: popcount (3+2+1+388)/100 = 3.94, only Ex5 can exempt.
    for head in (b"\x16\x03\x01", b"\x16\x03\x03", b"\x17\x03\x03", b"\x16\x03\x00", b"\x17\x03\x09"):
        assert fet.verdict(head + NP * 97).exemptions == ["Ex5"], head
    for head in (b"\x15\x03\x03", b"\x16\x03\x0a", b"\x16\x02\x01", b"\x18\x03\x03"):
        assert fet.verdict(head + NP * 97).flagged, head


def test_ex5_http_methods_with_their_space() -> None:
    for method in (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"get ", b"Post "):
        assert fet.verdict(method + NP * 96).exemptions == ["Ex5"], method
    for method in (b"GETX", b"DELETE", b"GET\x0f"):
        assert fet.verdict(method[:5] + NP * 96).flagged, method


def test_a_real_tls_client_hello_is_exempt() -> None:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="example.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and hello[5:6] == b"\x01"  # a handshake record holding a ClientHello
    v = fet.verdict(hello)
    assert not v.flagged and "Ex5" in v.exemptions and v.fingerprint == "TLS"


def test_an_http_get_and_printable_text_are_exempt() -> None:
    get = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\n\r\n"
    v = fet.verdict(get)
    assert v.fingerprint == "HTTP" and {"Ex2", "Ex3", "Ex4", "Ex5"} <= set(v.exemptions)
    text = b"It is a truth universally acknowledged, that a single man in possession of a fortune"
    v = fet.verdict(text)
    assert not v.flagged and {"Ex2", "Ex3", "Ex4"} <= set(v.exemptions) and v.fingerprint == ""


def test_an_empty_payload_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        fet.verdict(b"")
