"""Addresses, links and routes over netlink, with pyroute2."""

from __future__ import annotations

import ipaddress
from contextlib import suppress
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


class RouteError(Exception):
    pass


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise RouteError(f"no interface named {name}")
    return int(found[0])


def set_link(name: str, *, up: bool = True, mtu: int | None = None) -> None:
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        kwargs: dict[str, object] = {"index": idx, "state": "up" if up else "down"}
        if mtu is not None:
            kwargs["mtu"] = mtu
        ipr.link("set", **kwargs)


def disable_dad(name: str) -> None:
    """Make IPv6 addresses on ``name`` usable at once (no duplicate address detection delay)."""
    for key in ("accept_dad", "dad_transmits"):
        with suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{name}/{key}").write_text("0")


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


def delete_address(name: str, interface: str) -> None:
    iface = ipaddress.ip_interface(interface)
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        with suppress(NetlinkError):
            ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)


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
