"""UDP segmentation offload and receive coalescing: the planning on its own, then real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import time

from hypothesis import given
from hypothesis import strategies as st

from veilgate.transport.tcp import FramedConnection, connect_tcp, serve_tcp
from veilgate.transport.udp import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    UdpSender,
    enable_gro,
    plan_runs,
    recv_coalesced,
    split,
)


def runs(sizes: list[int], keys: list[object] | None = None) -> list[tuple[int, int]]:
    return list(plan_runs(sizes, keys if keys is not None else [None] * len(sizes)))


def test_equal_sizes_share_one_run_and_a_shorter_last_one_ends_it() -> None:
    assert runs([1452] * 5) == [(0, 5)]
    assert runs([1452, 1452, 100, 1452]) == [(0, 3), (3, 4)]
    assert runs([100, 1452, 1452]) == [(0, 1), (1, 3)]  # a longer one starts a new run
    assert runs([]) == []


def test_runs_break_on_destination_count_and_bytes() -> None:
    assert runs([1000] * 4, ["a", "a", "b", "a"]) == [(0, 2), (2, 3), (3, 4)]
    assert runs([10] * (GSO_MAX_SEGMENTS + 1)) == [
        (0, GSO_MAX_SEGMENTS),
        (GSO_MAX_SEGMENTS, GSO_MAX_SEGMENTS + 1),
    ]
    per_run = GSO_MAX_BYTES // 1500
    assert runs([1500] * (per_run + 1)) == [(0, per_run), (per_run, per_run + 1)]


@given(
    st.lists(
        st.tuples(st.sampled_from([32, 100, 1452, 1468]), st.sampled_from(["a", "b", None])),
        max_size=300,
    )
)
def test_runs_cover_the_queue_in_order_and_obey_every_rule(items: list[tuple[int, object]]) -> None:
    sizes = [s for s, _ in items]
    keys = [k for _, k in items]
    covered = 0
    for start, end in plan_runs(sizes, keys):
        assert start == covered and end > start
        covered = end
        seg = sizes[start]
        assert all(keys[i] == keys[start] for i in range(start, end))
        assert all(sizes[i] == seg for i in range(start, end - 1))
        assert sizes[end - 1] <= seg
        assert end - start <= GSO_MAX_SEGMENTS
        assert sum(sizes[start:end]) <= GSO_MAX_BYTES
    assert covered == len(sizes)


def test_split() -> None:
    assert split(b"abcdefg", 3) == [b"abc", b"def", b"g"]
    assert split(b"abc", 3) == [b"abc"]
    assert split(b"abc", 0) == [b"abc"]


def _pair() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    return rx, tx


def _receive_all(rx: socket.socket, want: int, gro: bool) -> tuple[list[bytes], int]:
    got: list[bytes] = []
    calls = 0
    rx.settimeout(2.0)
    while len(got) < want:
        if gro:
            data, segment, _ = recv_coalesced(rx)
            got += split(data, segment)
        else:
            got.append(rx.recv(65535))
        calls += 1
    return got, calls


def test_gso_send_then_gro_receive_on_loopback_keeps_every_datagram_in_order() -> None:
    rx, tx = _pair()
    with rx, tx:
        assert enable_gro(rx)
        sender = UdpSender(tx)
        datagrams = [bytes([i % 256]) * 1452 for i in range(100)] + [b"short tail"]
        for d in datagrams:
            sender.queue(d)
        sender.flush()
        assert sender.gso, "loopback supports UDP_SEGMENT"
        assert sender.datagrams == len(datagrams) and sender.dropped == 0
        assert sender.syscalls < 10  # 101 datagrams in a handful of sends
        got, calls = _receive_all(rx, len(datagrams), gro=True)
        assert got == datagrams
        assert calls < len(datagrams)


def test_gso_send_is_seen_as_single_datagrams_by_a_plain_receiver() -> None:
    rx, tx = _pair()
    with rx, tx:
        sender = UdpSender(tx)
        datagrams = [b"x" * 1000] * 10 + [b"y" * 10]
        for d in datagrams:
            sender.queue(d)
        sender.flush()
        got, calls = _receive_all(rx, len(datagrams), gro=False)
        assert got == datagrams and calls == len(datagrams)


def test_unconnected_sender_groups_by_destination() -> None:
    a, _ = _pair()
    b, _ = _pair()
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b, out:
        sender = UdpSender(out)
        order = [a, a, b, b, a]
        for i, dest in enumerate(order):
            sender.queue(b"%d" % i + b"." * 500, dest.getsockname())
        sender.flush()
        assert sender.syscalls == 3
        got_a, _ = _receive_all(a, 3, gro=False)
        got_b, _ = _receive_all(b, 2, gro=False)
        assert [g[:1] for g in got_a] == [b"0", b"1", b"4"]
        assert [g[:1] for g in got_b] == [b"2", b"3"]


def test_send_after_queue_keeps_the_order_and_gso_off_sends_one_by_one() -> None:
    rx, tx = _pair()
    with rx, tx:
        sender = UdpSender(tx, gso=False)
        sender.queue(b"first")
        sender.send(b"second")
        assert sender.syscalls == 2
        got, _ = _receive_all(rx, 2, gro=False)
        assert got == [b"first", b"second"]


def test_a_send_error_is_counted_not_raised() -> None:
    rx, tx = _pair()
    rx.close()
    with tx:
        sender = UdpSender(tx)
        for _ in range(3):  # the first may pass, then the port-unreachable comes back as ECONNREFUSED
            sender.send(b"x")
            time.sleep(0.05)
        for _ in range(5):
            sender.queue(b"y" * 100)
        sender.flush()
        assert sender.dropped >= 1


def test_tcp_queue_and_flush_write_frames_in_order() -> None:
    asyncio.run(_tcp_queue_and_flush())


async def _tcp_queue_and_flush() -> None:
    got: list[bytes] = []
    done = asyncio.Event()

    def on_datagrams(datagrams: list[bytes], conn: FramedConnection) -> None:
        got.extend(datagrams)
        if len(got) == 21:
            done.set()

    server = await serve_tcp("127.0.0.1", 0, on_datagrams, lambda c: None)
    port = server.sockets[0].getsockname()[1]
    conn = await connect_tcp("127.0.0.1", port, lambda d, c: None, lambda c: None)
    try:
        assert conn.queue(b"frame 0") is True
        for i in range(1, 20):
            assert conn.queue(b"frame %d" % i) is False
        conn.send(b"frame 20")  # flushes what was queued first
        await asyncio.wait_for(done.wait(), 5)
        assert got == [b"frame %d" % i for i in range(21)]
        assert conn.frames_out == 21 and conn.dropped == 0
        conn.close()
        conn.queue(b"late")
        conn.flush()
        assert conn.dropped == 1
    finally:
        server.close()
        await server.wait_closed()
