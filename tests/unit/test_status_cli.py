"""``veilgate status``: which socket it asks, and figures grouped with their units for a person."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from veilgate.cli import status
from veilgate.cli.main import build_parser, main

GATEWAY = {
    "role": "gateway",
    "uptime": 7384.2,
    "data_path": "compiled",
    "sessions": 3,
    "sessions_by_transport": {"udp": 2, "tcp": 1},
    "pending_handshakes": 1,
    "under_load": False,
    "tcp_connections": 1,
    "pool_v4_in_use": 3,
    "pools": {"v4": {"size": 65533, "in_use": 3}},
    "totals": {
        "sessions_opened": 10,
        "sessions_ended": 7,
        "handshakes": 25,
        "transport_moves": 2,
        "rx_bytes": 1536,
        "tx_bytes": 3 * 1024 * 1024,
        "rx_packets": 12,
        "tx_packets": 2400,
    },
    "rx_bytes": 1536,
    "tx_bytes": 3 * 1024 * 1024,
    "counters": {"refused-forged": 2, "drop-replay": 4, "rekeys": 5, "roamed": 0},
    "udp": {"gso": True, "gro": True, "datagrams_out": 2400, "sends": 300, "dropped": 0},
}


def test_gateway_figures_are_grouped_with_units() -> None:
    text = status.render(GATEWAY)
    lines = dict(line.split(None, 1) for line in text.splitlines() if not line.startswith(("since", " ")))
    assert lines["gateway"].strip() == "up 2 h 03 min, compiled data path"
    assert lines["sessions"].strip() == "3 live (tcp 1, udp 2), 1 pending handshake"
    assert "10 sessions opened, 7 ended, 25 handshakes, 2 transport moves" in text
    assert lines["traffic"].strip() == "in 1.5 KiB (12 packets), out 3.0 MiB (2,400 packets)"
    assert lines["addresses"].strip() == "v4 3 of 65,533 in use"
    assert lines["refused"].strip() == "forged 2" and lines["dropped"].strip() == "replay 4"
    assert lines["counters"].strip() == "rekeys 5"  # counters at 0 are left out


def test_units() -> None:
    assert [status.size(n) for n in (0, 1023, 1024, 5 * 2**30)] == ["0 B", "1023 B", "1.0 KiB", "5.0 GiB"]
    assert [status.duration(s) for s in (2.5, 42, 303, 90000)] == ["2.5 s", "42 s", "5 min 3 s", "1 d 1 h"]
    assert status.count(1, "session") == "1 session" and status.count(1200, "packet") == "1,200 packets"


def test_provider_and_client_figures() -> None:
    text = status.render(
        {
            "role": "provider",
            "uptime": 12,
            "access": "open",
            "epoch": 480000,
            "epoch_length": 3600,
            "credentials_issued_this_epoch": 3,
            "credentials_issued": 40,
            "documents_served": 9,
            "refused": {"rate-limited": 2, "malformed": 0},
        }
    )
    assert "3 issued this epoch, 40 since start" in text and "rate-limited 2" in text
    assert "malformed" not in text
    text = status.render(
        {
            "role": "client",
            "connected": True,
            "transport": "tcp",
            "data_path": "python",
            "ipv4": "10.201.3.4/16",
            "ipv6": None,
            "last_handshake_age": 3.2,
            "totals": {
                "handshakes": 2,
                "rx_bytes": 10,
                "tx_bytes": 20,
                "fallbacks_to_tcp": 1,
                "returns_to_udp": 0,
            },
            "switches": [{"from": "udp", "to": "tcp", "why": "udp stalled", "took": 0.31, "ago": 65}],
            "counters": {},
        }
    )
    assert "connected over tcp, python data path" in text
    assert "1 fallback to tcp, 0 returns to udp, 2 handshakes" in text
    assert "udp -> tcp (udp stalled), took 0.31 s, 1 min 5 s ago" in text


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["status"], "/run/veilgate/gateway.sock"),
        (["status", "client"], "/run/veilgate/client.sock"),
        (["status", "provider"], "/run/veilgate/provider.sock"),
        (["status", "client", "--socket", "/tmp/x.sock"], "/tmp/x.sock"),
        (["status", "--socket", "/tmp/x.sock"], "/tmp/x.sock"),
    ],
)
def test_the_socket_follows_the_daemon(argv: list[str], path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "exists", lambda self: False)
    assert status.socket_path(build_parser().parse_args(argv)) == path


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Path]:
    """A status socket answering GATEWAY, in a thread."""
    path = tmp_path / "s.sock"
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps(GATEWAY).encode() + b"\n")
        await writer.drain()
        writer.close()

    async def serve() -> None:
        await asyncio.start_unix_server(answer, path=str(path))
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()))
    thread.start()
    ready.wait(5)
    yield path
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def quiet_logging() -> Iterator[None]:
    """``main`` sets up logging to standard error (pytest's capture): undo it afterwards."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_veilgate", False)]:
        root.removeHandler(handler)


@pytest.mark.usefixtures("quiet_logging")
def test_json_for_scripts_and_text_for_people(serving: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--socket", str(serving), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == GATEWAY
    assert main(["status", "gateway", "--socket", str(serving)]) == 0
    assert capsys.readouterr().out.startswith("gateway ")
    assert main(["status", "--socket", str(serving) + ".absent"]) == 1
    assert "cannot reach" in capsys.readouterr().err
