"""The compiled data path's constants, named structures and IP header parser against their Python twins.

fastpath.h holds the wire constants and limits the C loops use; the module exports them, and each
must equal its twin in protocol/. The C IP header parser (receive.c) must answer as protocol/ip.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate import fastpath
from veilgate.protocol import constants, control, crypto, ip, messages, obfs

pytestmark = pytest.mark.skipif(not fastpath.BUILT, reason="the compiled data path is not built")


def test_every_exported_constant_equals_its_python_twin() -> None:
    from veilgate.fastpath import _fastpath  # noqa: PLC0415  (only where it is built)

    twins: dict[str, object] = {
        "REJECT_AFTER_TIME": constants.REJECT_AFTER_TIME,
        "REKEY_AFTER_MESSAGES": constants.REKEY_AFTER_MESSAGES,
        "REJECT_AFTER_MESSAGES": constants.REJECT_AFTER_MESSAGES,
        "REPLAY_WINDOW": constants.REPLAY_WINDOW,
        "PADDING_MULTIPLE": constants.PADDING_MULTIPLE,
        "PROTOCOL_VERSION": constants.PROTOCOL_VERSION,
        "TYPE_TRANSPORT": messages.TYPE_TRANSPORT,
        "TRANSPORT_HEADER_LEN": messages.TRANSPORT_HEADER_LEN,
        "TRANSPORT_MIN_LEN": messages.TRANSPORT_MIN_LEN,
        "TAGLEN": crypto.TAGLEN,
        "CONTROL_MARKER": control.CONTROL_MARKER,
        "HP_KEY_LEN": obfs.HP_KEY_LEN,
        "HP_SAMPLE_OFFSET": obfs.SAMPLE_OFFSET,
        "HP_MASKED_HEAD": obfs.MASKED_HEAD_LEN,
    }
    # The kinds have no Python twin: their values are the interface (PENDING_* and KIND_* are what
    # take() and Poller.add use; ROUTE_NONE is Peer.update's "not over UDP").
    own = {
        "PENDING_TUN": 0,
        "PENDING_DATAGRAM": 1,
        "PENDING_OPENED": 2,
        "KIND_TUN": 0,
        "KIND_UDP": 1,
        "ROUTE_NONE": -1,
    }
    exported = {name for name in dir(_fastpath) if name.isupper()}
    assert exported == set(twins) | set(own)  # a new constant gets its twin here
    for name, value in {**twins, **own}.items():
        got = getattr(_fastpath, name)
        assert got == value and type(got) is type(value), name
        assert getattr(fastpath, name) == value, name  # re-exported by veilgate.fastpath


def test_named_structures_have_the_agreed_fields_in_order() -> None:
    assert fastpath.Activity.__match_args__ == (
        "tx_packets",
        "tx_bytes",
        "last_tx",
        "first_unanswered",
        "authenticated",
        "rx_packets",
        "rx_bytes",
        "last_rx",
    )
    assert fastpath.Pending.__match_args__ == ("kind", "data", "sock", "addr", "index")


def ip_like() -> st.SearchStrategy[bytes]:
    """Bytes that are often nearly an IP header: version 4 or 6, lengths around the truth."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        version = draw(st.sampled_from([4, 6, 0, 5, 15]))
        size = draw(st.integers(0, 120))
        data = bytearray(draw(st.binary(min_size=size, max_size=size)))
        if data:
            data[0] = version << 4 | (data[0] & 0x0F)
        if draw(st.booleans()) and len(data) >= 6:
            stated = draw(st.integers(0, 130))
            if version == 4:
                data[2:4] = stated.to_bytes(2, "big")
            else:
                data[4:6] = max(0, stated - 40).to_bytes(2, "big")
        return bytes(data)

    return build()


@settings(max_examples=400, deadline=None)
@given(st.one_of(ip_like(), st.binary(max_size=80)))
def test_the_c_ip_parser_answers_as_protocol_ip(data: bytes) -> None:
    from veilgate.fastpath import _fastpath  # noqa: PLC0415  (only where it is built)

    length = ip.packet_length(data)
    assert _fastpath._ip_packet_length(data) == length
    addresses = _fastpath._ip_addresses(data)
    if length >= 0:
        assert addresses is not None
    if addresses is not None:
        assert addresses == (ip.source(data), ip.destination(data))
        assert len(addresses[0]) in (4, 16)


def test_the_c_ip_parser_on_edges() -> None:
    from veilgate.fastpath import _fastpath  # noqa: PLC0415  (only where it is built)

    v4 = bytes([0x45, 0, 0, 20]) + bytes(8) + bytes([10, 0, 0, 2]) + bytes([10, 9, 9, 9])
    v6 = bytes([0x60, 0, 0, 0, 0, 3]) + bytes(34) + b"abc"
    for data, length in (
        (b"", -1),
        (v4, 20),
        (v4 + bytes(12), 20),  # padding after the packet
        (v4[:19], -1),
        (v4[:2] + bytes([0, 19]) + v4[4:], -1),  # shorter than its header
        (v4[:2] + bytes([0, 21]) + v4[4:], -1),  # longer than the data
        (v6, 43),
        (v6[:42], -1),
    ):
        assert _fastpath._ip_packet_length(data) == ip.packet_length(data) == length, data
    assert _fastpath._ip_addresses(v4) == (bytes([10, 0, 0, 2]), bytes([10, 9, 9, 9]))
    assert _fastpath._ip_addresses(v6) == (bytes(16), bytes(16))
