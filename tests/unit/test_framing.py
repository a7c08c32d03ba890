"""TCP framing: round trips, arbitrary splits, bounds, and arbitrary input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate.transport.framing import MAX_FRAME, FrameDecoder, FramingError, encode_frame


def test_round_trip_split_at_every_byte() -> None:
    frames = [b"a", b"bc" * 100, bytes(range(256)) * 5, b"z" * MAX_FRAME]
    stream = b"".join(encode_frame(f) for f in frames)
    for cut in [*range(0, 600), len(stream) - 1]:
        d = FrameDecoder()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert got == frames
        assert d.buffered == 0


def test_byte_by_byte() -> None:
    frames = [b"x" * n for n in (1, 2, 1420, 3)]
    d = FrameDecoder()
    got: list[bytes] = []
    for b in b"".join(encode_frame(f) for f in frames):
        got += d.feed(bytes([b]))
    assert got == frames


def test_zero_length_frame_is_an_error() -> None:
    with pytest.raises(FramingError):
        FrameDecoder().feed(b"\x00\x00")
    with pytest.raises(ValueError):
        encode_frame(b"")
    with pytest.raises(ValueError):
        encode_frame(b"x" * (MAX_FRAME + 1))


def test_large_reads_are_fine_and_the_leftover_is_bounded() -> None:
    frames = [b"y" * 1400] * 400  # 560 kB in one read, as asyncio may deliver
    d = FrameDecoder()
    assert d.feed(b"".join(encode_frame(f) for f in frames) + b"\x05") == frames
    assert d.buffered == 1
    assert d.buffered <= d.max_buffer


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_arbitrary_chunks_give_frames_or_framing_error(chunks: list[bytes]) -> None:
    d = FrameDecoder()
    try:
        for c in chunks:
            for f in d.feed(c):
                assert 0 < len(f) <= MAX_FRAME
    except FramingError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=2000), max_size=20), st.integers(min_value=1, max_value=97))
def test_any_frames_any_chunking(frames: list[bytes], step: int) -> None:
    stream = b"".join(encode_frame(f) for f in frames)
    d = FrameDecoder()
    got: list[bytes] = []
    for i in range(0, len(stream), step):
        got += d.feed(stream[i : i + step])
    assert got == frames


def test_masked_frames_round_trip_byte_by_byte_and_hide_their_prefixes() -> None:
    from veilgate.transport.framing import MaskedFrameDecoder, MaskedFrameEncoder  # noqa: PLC0415

    key = bytes(range(32))
    enc = MaskedFrameEncoder(key)
    datagrams = [bytes([i]) * (100 + i) for i in range(20)]
    stream = b"".join(enc.encode(d) for d in datagrams)
    plain = b"".join(encode_frame(d) for d in datagrams)
    assert len(stream) == len(plain) + 12 and plain[:2] not in (stream[12:14],)
    dec = MaskedFrameDecoder(key)
    got = [f for i in range(len(stream)) for f in dec.feed(stream[i : i + 1])]
    assert got == datagrams
    assert MaskedFrameDecoder(bytes(32)).feed(stream) != datagrams
