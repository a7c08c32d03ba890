"""``veilgate status``: a running daemon's aggregate figures, for a person or (``--json``) a script."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from veilgate.monitor.status import query_status

SOCKETS = {
    "gateway": "/run/veilgate/gateway.sock",
    "client": "/run/veilgate/client.sock",
    "provider": "/run/veilgate/provider.sock",
}
"""Each daemon's status socket where its configuration keeps the default."""


def add_parser(sub: Any) -> None:
    g = sub.add_parser("status", help="a running daemon's aggregate status")
    g.add_argument(
        "daemon",
        nargs="?",
        choices=sorted(SOCKETS),
        help="whose default socket to ask (default: the one running, the gateway's if several)",
    )
    g.add_argument("--socket", help="the status socket's path (overrides the daemon's default)")
    g.add_argument("--json", action="store_true", help="the figures as JSON, for scripts")
    g.set_defaults(func=cmd_status)


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    if args.daemon:
        return SOCKETS[args.daemon]
    running = [path for path in SOCKETS.values() if Path(path).exists()]
    return running[0] if running else SOCKETS["gateway"]


def query(path: str) -> dict[str, Any]:
    return query_status(path)


def cmd_status(args: argparse.Namespace) -> int:
    path = socket_path(args)
    try:
        status = query(path)
    except OSError as exc:
        print(
            f"veilgate status: cannot reach {path}: {exc.strerror or exc} (is the daemon running?)",
            file=sys.stderr,
        )
        return 1
    except ValueError:
        print(f"veilgate status: {path} answered something other than a status", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render(status))
    return 0


# ---------------------------------------------------------------------- human output


def count(n: int, unit: str) -> str:
    """``1 session``, ``3 sessions``, ``12,345 packets``."""
    return f"{n:,} {unit}" + ("" if n == 1 else "s")


def size(n: float) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # not reached


def duration(seconds: float) -> str:
    """``42 s``, ``5 min 3 s``, ``2 h 05 min``, ``3 d 4 h``."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def listing(values: Mapping[str, int]) -> str:
    shown = [f"{name} {n:,}" for name, n in sorted(values.items()) if n]
    return ", ".join(shown) if shown else "none"


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(
        f"{label:<{width}}  {value}" if label else f"{'':<{width}}  {value}" for label, value in rows
    )


def render(status: Mapping[str, Any]) -> str:
    renderer: Callable[[Mapping[str, Any]], list[tuple[str, str]]] = {
        "gateway": gateway_rows,
        "client": client_rows,
        "provider": provider_rows,
    }.get(str(status.get("role")), other_rows)
    return table(renderer(status))


def gateway_rows(st: Mapping[str, Any]) -> list[tuple[str, str]]:
    totals = st.get("totals", {})
    by_transport = ", ".join(f"{t} {n}" for t, n in sorted(st.get("sessions_by_transport", {}).items()))
    udp = st.get("udp", {})
    pools = "; ".join(
        f"{name} {p['in_use']:,} of {p['size']:,} in use" for name, p in st.get("pools", {}).items()
    )
    counters = st.get("counters", {})
    return [
        ("gateway", f"up {duration(st.get('uptime', 0))}, {st.get('data_path', '?')} data path"),
        (
            "sessions",
            f"{st.get('sessions', 0):,} live"
            + (f" ({by_transport})" if by_transport else "")
            + f", {count(st.get('pending_handshakes', 0), 'pending handshake')}"
            + (", under load (cookies)" if st.get("under_load") else ""),
        ),
        (
            "since start",
            f"{count(totals.get('sessions_opened', 0), 'session')} opened, "
            f"{totals.get('sessions_ended', 0):,} ended, {count(totals.get('handshakes', 0), 'handshake')}, "
            f"{count(totals.get('transport_moves', 0), 'transport move')}",
        ),
        (
            "traffic",
            f"in {size(totals.get('rx_bytes', 0))} ({count(totals.get('rx_packets', 0), 'packet')}), "
            f"out {size(totals.get('tx_bytes', 0))} ({count(totals.get('tx_packets', 0), 'packet')})",
        ),
        ("addresses", pools or "?"),
        ("tcp", count(st.get("tcp_connections", 0), "connection")),
        (
            "udp",
            f"{count(udp.get('datagrams_out', 0), 'datagram')} out in {count(udp.get('sends', 0), 'send')}, "
            f"{udp.get('dropped', 0):,} dropped; gso {'on' if udp.get('gso') else 'off'}, "
            f"gro {'on' if udp.get('gro') else 'off'}",
        ),
        ("refused", listing({k[8:]: v for k, v in counters.items() if k.startswith("refused-")})),
        ("dropped", listing({k[5:]: v for k, v in counters.items() if k.startswith("drop-")})),
        (
            "counters",
            listing({k: v for k, v in counters.items() if not k.startswith(("refused-", "drop-"))}),
        ),
    ]


def client_rows(st: Mapping[str, Any]) -> list[tuple[str, str]]:
    totals = st.get("totals", {})
    state = f"connected over {st.get('transport')}" if st.get("connected") else "not connected"
    tunnel = ", ".join(a for a in (st.get("ipv4"), st.get("ipv6")) if a) or "none"
    age = st.get("last_handshake_age")
    rows = [
        ("client", f"{state}, {st.get('data_path', '?')} data path"),
        ("tunnel", tunnel),
        ("last handshake", f"{duration(age)} ago" if age is not None else "none yet"),
        (
            "traffic",
            f"in {size(totals.get('rx_bytes', st.get('rx_bytes', 0)))}, "
            f"out {size(totals.get('tx_bytes', st.get('tx_bytes', 0)))}",
        ),
        (
            "paths",
            f"{count(totals.get('fallbacks_to_tcp', 0), 'fallback')} to tcp, "
            f"{count(totals.get('returns_to_udp', 0), 'return')} to udp, "
            f"{count(totals.get('handshakes', 0), 'handshake')}",
        ),
    ]
    for sw in st.get("switches", [])[-5:]:
        rows.append(
            (
                "",
                f"{sw['from'] or 'start'} -> {sw['to']} ({sw['why']}), took {sw['took']:.2f} s, "
                f"{duration(sw['ago'])} ago",
            )
        )
    if "gateway" in st:  # provider mode
        rows += [
            ("gateway", str(st.get("gateway"))),
            (
                "identities",
                f"epoch {st.get('credential_epoch')}, {st.get('identity_rotations', 0)} rotations, "
                f"{st.get('identities_stashed', 0)} stashed, {st.get('identities_prefetched', 0)} fetched "
                f"ahead, {st.get('direct_fetches', 0)} fetched directly",
            ),
            (
                "failovers",
                f"{st.get('failovers', 0):,}" + (", split view seen" if st.get("split_view") else ""),
            ),
        ]
    rows.append(("counters", listing(st.get("counters", {}))))
    return rows


def provider_rows(st: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("provider", f"up {duration(st.get('uptime', 0))}, access {st.get('access')}"),
        ("epoch", f"{st.get('epoch')} (every {duration(st.get('epoch_length', 0))})"),
        (
            "credentials",
            f"{st.get('credentials_issued_this_epoch', 0):,} issued this epoch, "
            f"{st.get('credentials_issued', 0):,} since start",
        ),
        ("documents", f"{st.get('documents_served', 0):,} served"),
        ("refused", listing(st.get("refused", {}))),
    ]


def other_rows(st: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), json.dumps(v) if isinstance(v, dict | list) else str(v)) for k, v in st.items()]
