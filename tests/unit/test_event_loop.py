"""The daemons' event loop: asyncio on a DispatchSelector, data-path readers called from the poll."""

from __future__ import annotations

import asyncio
import selectors
import socket
from typing import Any

import pytest

from veilgate.transport import loop as event_loop
from veilgate.transport.loop import DispatchSelector, add_data_reader, remove_data_reader


def test_selector_reports_registered_events_like_the_stdlib_one() -> None:
    a, b = socket.socketpair()
    sel = DispatchSelector()
    try:
        key = sel.register(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "data")
        assert sel.get_key(a) == key and key.data == "data"
        assert sel.select(0) == [(key, selectors.EVENT_WRITE)]
        b.send(b"x")
        assert sel.select(0) == [(key, selectors.EVENT_READ | selectors.EVENT_WRITE)]
        key = sel.modify(a, selectors.EVENT_READ, "other")
        assert sel.select(0) == [(key, selectors.EVENT_READ)] and key.data == "other"
        assert len(sel.get_map()) == 1 and list(sel.get_map()) == [a.fileno()]
        with pytest.raises(KeyError):
            sel.register(a, selectors.EVENT_READ)
        with pytest.raises(ValueError):
            sel.register(b, 0)
        sel.unregister(a)
        with pytest.raises(KeyError):
            sel.unregister(a)
        with pytest.raises(KeyError):
            sel.get_key(a)
        assert sel.select(0) == []
    finally:
        sel.close()
        a.close()
        b.close()


def test_direct_reader_runs_inside_select_and_is_not_returned() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    sel = DispatchSelector()
    got: list[bytes] = []
    try:
        sel.add_direct_reader(a.fileno(), lambda tag: got.append(tag + a.recv(100)), b"seen:")
        with pytest.raises(KeyError):
            sel.register(a, selectors.EVENT_READ)
        assert sel.select(0) == [] and got == []
        b.send(b"ping")
        assert sel.select(1) == [] and got == [b"seen:ping"]
        assert sel.remove_direct_reader(a.fileno())
        assert not sel.remove_direct_reader(a.fileno())
        b.send(b"again")
        assert sel.select(0) == [] and got == [b"seen:ping"]
    finally:
        sel.close()
        a.close()
        b.close()


def test_an_error_in_a_direct_reader_is_reported_and_the_others_still_run() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    sel = DispatchSelector()
    errors: list[BaseException] = []
    sel.on_error = lambda exc, _cb: errors.append(exc)
    got: list[bytes] = []

    def broken() -> None:
        a.recv(10)
        raise RuntimeError("bad packet")

    try:
        sel.add_direct_reader(a.fileno(), broken)
        sel.add_direct_reader(c.fileno(), lambda: got.append(c.recv(10)))
        b.send(b"1")
        d.send(b"2")
        sel.select(1)
        assert [str(e) for e in errors] == ["bad packet"] and got == [b"2"]
    finally:
        sel.close()
        for s in (a, b, c, d):
            s.close()


def test_asyncio_runs_streams_timers_and_direct_readers_on_one_loop() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        events: list[Any] = []
        a, b = socket.socketpair()
        a.setblocking(False)
        arrived = asyncio.Event()

        def on_datagram() -> None:
            events.append(("direct", a.recv(100)))
            arrived.set()

        add_data_reader(loop, a.fileno(), on_datagram)
        loop.call_later(0.01, events.append, ("timer",))
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        events.append(("stream", await reader.readline()))
        b.send(b"packet")
        await asyncio.wait_for(arrived.wait(), 5)
        await asyncio.sleep(0.02)
        assert remove_data_reader(loop, a.fileno())
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        a.close()
        b.close()
        return events

    events = event_loop.run(main())
    assert ("stream", b"hello\n") in events and ("direct", b"packet") in events and ("timer",) in events


def test_errors_in_direct_readers_reach_the_loops_exception_handler() -> None:
    async def main() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        seen: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        a, b = socket.socketpair()

        def broken() -> None:
            a.recv(10)
            raise ValueError("malformed")

        add_data_reader(loop, a.fileno(), broken)
        b.send(b"x")
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        remove_data_reader(loop, a.fileno())
        a.close()
        b.close()
        return seen

    seen = event_loop.run(main())
    assert len(seen) == 1 and isinstance(seen[0]["exception"], ValueError)
    assert "broken" in seen[0]["message"]


def test_on_a_plain_asyncio_loop_data_readers_fall_back_to_add_reader() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        fut: asyncio.Future[bytes] = loop.create_future()

        def on_readable() -> None:
            if not fut.done():
                fut.set_result(a.recv(10))

        add_data_reader(loop, a.fileno(), on_readable)
        b.send(b"plain")
        data = await asyncio.wait_for(fut, 5)
        assert remove_data_reader(loop, a.fileno())
        a.close()
        b.close()
        return data

    assert asyncio.run(main()) == b"plain"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()


def test_what_a_direct_reader_makes_ready_is_served_in_the_same_select() -> None:
    # A writes to B's socket pair (as a packet written to the TUN is answered on it at once):
    # B's reader runs in the same select call, without a trip back through the event loop.
    a1, a2 = socket.socketpair()
    b1, b2 = socket.socketpair()
    sel = DispatchSelector()
    order: list[str] = []

    def on_a() -> None:
        a1.recv(10)
        order.append("a")
        b2.send(b"answer")

    def on_b() -> None:
        b1.recv(10)
        order.append("b")

    try:
        sel.add_direct_reader(a1.fileno(), on_a)
        sel.add_direct_reader(b1.fileno(), on_b)
        a2.send(b"q")
        assert sel.select(1) == []
        assert order == ["a", "b"]
    finally:
        sel.close()
        for s in (a1, a2, b1, b2):
            s.close()


def test_asyncio_events_end_the_extra_looks() -> None:
    # Once an ordinary registration is ready, select returns it rather than serving more.
    a1, a2 = socket.socketpair()
    c1, c2 = socket.socketpair()
    sel = DispatchSelector()
    served: list[int] = []

    def on_a() -> None:
        a1.recv(10)
        served.append(1)
        a2.send(b"again")  # keeps itself ready: only REPOLL_ROUNDS more looks may serve it

    try:
        sel.add_direct_reader(a1.fileno(), on_a)
        key = sel.register(c1, selectors.EVENT_READ)
        a2.send(b"x")
        assert sel.select(1) == []
        assert len(served) == 1 + event_loop.REPOLL_ROUNDS
        c2.send(b"y")
        ready = sel.select(1)
        assert ready == [(key, selectors.EVENT_READ)]
    finally:
        sel.close()
        for s in (a1, a2, c1, c2):
            s.close()
