"""Addresses, links and routes over netlink, with pyroute2.

pyroute2's synchronous ``IPRoute`` drives an asyncio loop of its own and so
cannot be used from inside a running loop; the daemons call these functions
from their loop, so each call runs on a worker thread when a loop is running
in the caller's thread (configuration changes are rare and take milliseconds).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import socket
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import ParamSpec, TypeVar

from pyroute2 import AsyncIPRoute, IPRoute
from pyroute2.netlink import rtnl
from pyroute2.netlink.exceptions import NetlinkError


class RouteError(Exception):
    pass


P = ParamSpec("P")
R = TypeVar("R")
_worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="veilgate-netlink")


def _off_loop(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        return _worker.submit(fn, *args, **kwargs).result()

    return wrapper


def renew_worker() -> None:
    """Start the worker thread anew: after a privilege drop, only threads started after it hold the
    kept capabilities (capabilities are per thread, and the uid change strips the older ones')."""
    global _worker
    old, _worker = (
        _worker,
        concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="veilgate-netlink"),
    )
    old.shutdown(wait=True)


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise RouteError(f"no interface named {name}")
    return int(found[0])


@_off_loop
def set_link(name: str, *, up: bool = True, mtu: int | None = None) -> None:
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        kwargs: dict[str, object] = {"index": idx, "state": "up" if up else "down"}
        if mtu is not None:
            kwargs["mtu"] = mtu
        ipr.link("set", **kwargs)


def prepare_tunnel_interface(name: str) -> None:
    """Settings a tunnel interface wants before it gets addresses.

    IPv6 addresses usable at once (no duplicate address detection delay), and an
    IPv4 address added in the same subnet as an old one survives the old one's
    removal (``promote_secondaries``), so a client can change address in place.
    """
    for key in ("accept_dad", "dad_transmits"):
        with suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{name}/{key}").write_text("0")
    with suppress(OSError):
        Path(f"/proc/sys/net/ipv4/conf/{name}/promote_secondaries").write_text("1")


@_off_loop
def add_address(name: str, interface: str) -> None:
    """Add ``interface`` (e.g. '10.201.3.4/16') to the link; adding it twice is not an error."""
    iface = ipaddress.ip_interface(interface)
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        try:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST
                raise RouteError(f"cannot add {interface} to {name}: {exc}") from exc


@_off_loop
def delete_address(name: str, interface: str) -> None:
    iface = ipaddress.ip_interface(interface)
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        with suppress(NetlinkError):
            ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)


@_off_loop
def add_route(dst: str, *, gateway: str | None = None, device: str | None = None) -> None:
    net = ipaddress.ip_network(dst)
    with IPRoute() as ipr:
        kwargs: dict[str, object] = {"dst": str(net.network_address), "dst_len": net.prefixlen}
        kwargs["family"] = 10 if net.version == 6 else 2
        if gateway:
            kwargs["gateway"] = gateway
        if device:
            kwargs["oif"] = _index(ipr, device)
        try:
            ipr.route("replace", **kwargs)
        except NetlinkError as exc:
            raise RouteError(f"cannot add route {dst}: {exc}") from exc


@_off_loop
def delete_route(dst: str, *, gateway: str | None = None, device: str | None = None) -> None:
    net = ipaddress.ip_network(dst)
    with IPRoute() as ipr:
        kwargs: dict[str, object] = {"dst": str(net.network_address), "dst_len": net.prefixlen}
        kwargs["family"] = 10 if net.version == 6 else 2
        if gateway:
            kwargs["gateway"] = gateway
        if device:
            found = ipr.link_lookup(ifname=device)
            if not found:
                return  # the device is gone, and its routes with it
            kwargs["oif"] = found[0]
        with suppress(NetlinkError):
            ipr.route("del", **kwargs)


@_off_loop
def route_to(address: str) -> tuple[str | None, str] | None:
    """The (gateway, device) the kernel uses to reach ``address`` now, or None."""
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=address)
        except NetlinkError:
            return None
        if not routes:
            return None
        route = routes[0]
        gateway = route.get_attr("RTA_GATEWAY")
        oif = route.get_attr("RTA_OIF")
        links = ipr.get_links(oif)
        if not links:
            return None
        return gateway, str(links[0].get_attr("IFLA_IFNAME"))


MAIN_TABLE = 254


@_off_loop
def local_networks(exclude: str) -> list[str]:
    """The networks of the global addresses on every link but loopback and ``exclude`` (the tunnel):
    the directly connected LAN."""
    nets: set[str] = set()
    with IPRoute() as ipr:
        names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        for addr in ipr.get_addr():
            name = names.get(int(addr["index"]), "")
            if name in ("lo", exclude) or addr["scope"] != 0:
                continue
            local = addr.get_attr("IFA_ADDRESS")
            if local:
                nets.add(str(ipaddress.ip_interface(f"{local}/{addr['prefixlen']}").network))
    return sorted(nets)


@_off_loop
def underlay_route(address: str, exclude: str) -> tuple[str | None, str, tuple[str, ...]] | None:
    """How ``address`` is reached outside the tunnel: the main table's best route that is neither on
    device ``exclude`` (the tunnel) nor the host route to ``address`` itself (the client's own pin),
    as (next hop, device, the device's global addresses of that family); None without one."""
    target = ipaddress.ip_address(address)
    family = 10 if target.version == 6 else 2
    with IPRoute() as ipr:
        names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        best: tuple[int, int, str | None, str] | None = None
        for route in ipr.get_routes(family=family, table=MAIN_TABLE):
            if route["type"] != 1:  # unicast only
                continue
            plen = int(route["dst_len"])
            if plen == target.max_prefixlen and route.get_attr("RTA_DST") == str(target):
                continue
            dst = route.get_attr("RTA_DST") or ("::" if family == 10 else "0.0.0.0")
            if target not in ipaddress.ip_network(f"{dst}/{plen}", strict=False):
                continue
            oif = route.get_attr("RTA_OIF")
            device = names.get(int(oif)) if oif is not None else None
            if device is None or device == exclude:
                continue
            metric = int(route.get_attr("RTA_PRIORITY") or 0)
            key = (-plen, metric)
            if best is None or key < best[:2]:
                best = (-plen, metric, route.get_attr("RTA_GATEWAY"), device)
        if best is None:
            return None
        device = best[3]
        index = next(i for i, n in names.items() if n == device)
        addresses = sorted(
            str(a.get_attr("IFA_ADDRESS"))
            for a in ipr.get_addr(family=family, index=index)
            if a["scope"] == 0
        )
        return best[2], device, tuple(addresses)


WATCHED_GROUPS = (
    rtnl.RTMGRP_LINK
    | rtnl.RTMGRP_IPV4_IFADDR
    | rtnl.RTMGRP_IPV6_IFADDR
    | rtnl.RTMGRP_IPV4_ROUTE
    | rtnl.RTMGRP_IPV6_ROUTE
)


def watch_network(on_event: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_event()`` for every link, address or route message (pyroute2's asyncio netlink
    socket, on the running loop); returns the function that stops it."""

    async def watch() -> None:
        ipr = AsyncIPRoute()
        try:
            await ipr.bind(groups=WATCHED_GROUPS)
            while True:
                async for _ in ipr.get():
                    on_event()
        finally:
            ipr.close()

    task = asyncio.ensure_future(watch())

    def stop() -> None:
        task.cancel()

    return stop


@_off_loop
def default_interface() -> str | None:
    """The device of the main table's IPv4 default route (the first one, by metric), or None."""
    with IPRoute() as ipr:
        routes = sorted(
            ipr.get_default_routes(family=socket.AF_INET, table=MAIN_TABLE),
            key=lambda r: r.get_attr("RTA_PRIORITY") or 0,
        )
        for route in routes:
            oif = route.get_attr("RTA_OIF")
            if oif is None:  # a multipath route: its first next hop
                hops = route.get_attr("RTA_MULTIPATH") or []
                oif = hops[0]["oif"] if hops else None
            links = ipr.get_links(oif) if oif is not None else []
            if links:
                return str(links[0].get_attr("IFLA_IFNAME"))
        return None


def enable_forwarding(ipv6: bool, uplink: str | None = None) -> None:
    """Turn on IPv4 (and IPv6) forwarding.

    With IPv6 forwarding on, Linux ignores router advertisements on interfaces left at
    ``accept_ra = 1``; the uplink is moved to ``2`` so an address and default route learnt by
    SLAAC survive.
    """
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    if ipv6:
        Path("/proc/sys/net/ipv6/conf/all/forwarding").write_text("1")
        if uplink is not None:
            accept_ra = Path(f"/proc/sys/net/ipv6/conf/{uplink}/accept_ra")
            with suppress(OSError):
                if accept_ra.read_text().strip() == "1":
                    accept_ra.write_text("2")
