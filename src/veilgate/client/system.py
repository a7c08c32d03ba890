"""What the client changes on the system, and how it is undone, also after a crash.

It brings up the TUN with the pushed addresses, sends the default routes (v4 and v6) through the
tunnel while pinning a host route to the gateway outside it, applies the pushed DNS servers, and
records each change in a state file, so that exit, SIGTERM and, after a crash, the next start
restore everything.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from pathlib import Path

from veilgate.driver.host import Host, LinuxHost
from veilgate.protocol.control import TunnelConfig

log = logging.getLogger("veilgate.client")


class SystemState:
    """What the client changed on the system, recorded in a state file so a crash can be undone."""

    def __init__(self, path: Path, host: Host | None = None) -> None:
        self.path = path
        self.host: Host = host or LinuxHost()
        self.routes: list[tuple[str, str | None, str | None]] = []  # (dst, gateway, device)
        self.dns_applied = False
        self.nft_table: str | None = None

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"routes": self.routes, "dns_applied": self.dns_applied, "nft_table": self.nft_table})
        )
        os.replace(tmp, self.path)

    def undo(self, dns_state: Path) -> None:
        for dst, gateway, device in reversed(self.routes):
            with contextlib.suppress(Exception):
                self.host.delete_route(dst, gateway, device)
        self.routes.clear()
        if self.dns_applied:
            with contextlib.suppress(Exception):
                self.host.restore_dns(dns_state)
            self.dns_applied = False
        if self.nft_table:
            with contextlib.suppress(Exception):
                self.host.firewall(self.nft_table).delete()
            self.nft_table = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @classmethod
    def recover(cls, path: Path, dns_state: Path, host: Host | None = None) -> bool:
        """Undo what a crashed client left behind; True if there was something."""
        host = host or LinuxHost()
        if not path.exists():
            if dns_state.exists():
                with contextlib.suppress(Exception):
                    host.restore_dns(dns_state)
                return True
            return False
        state = cls(path, host)
        try:
            data = json.loads(path.read_text())
            state.routes = [tuple(r) for r in data.get("routes", [])]
            state.dns_applied = bool(data.get("dns_applied"))
            state.nft_table = data.get("nft_table")
        except (OSError, ValueError):
            log.warning("unreadable state file %s; removing it", path)
        state.dns_applied = state.dns_applied or dns_state.exists()
        state.undo(dns_state)
        return True


class TunnelSetup:
    """Applies pushed tunnel configurations to the TUN device, the routes and DNS, recording each."""

    def __init__(self, state: SystemState, dns_state: Path, gateway_host: str, apply_dns: bool) -> None:
        self.state = state
        self.host = state.host
        self.dns_state = dns_state
        self.gateway_host = gateway_host
        self.apply_dns = apply_dns
        self.applied: TunnelConfig | None = None
        self._pin: tuple[str, str | None, str | None] | None = None

    def apply(self, tun: str, config: TunnelConfig) -> None:
        old = self.applied
        self.host.set_up(tun, config.mtu)
        # New addresses first: removing a device's last address makes the kernel drop its routes.
        for iface in (config.ipv4, config.ipv6):
            if iface is not None:
                self.host.add_address(tun, str(iface))
        if old is not None:
            for iface in (old.ipv4, old.ipv6):
                if iface is not None and iface not in (config.ipv4, config.ipv6):
                    with contextlib.suppress(Exception):
                        self.host.delete_address(tun, str(iface))
        if old is None:
            self._pin_gateway_route()
        for net in config.routes:
            for half in _halves(net):
                self._add_route(half, None, tun)
        if self.apply_dns and config.dns and not self.state.dns_applied:
            how = self.host.apply_dns([str(a) for a in config.dns], self.dns_state, tun)
            self.state.dns_applied = True
            log.info("DNS through the tunnel (%s)", how)
        self.state.save()
        self.applied = config
        log.info(
            "tunnel up: %s%s, mtu %d, lease %d s",
            config.ipv4,
            f" {config.ipv6}" if config.ipv6 else "",
            config.mtu,
            config.lease,
        )

    def _pin_gateway_route(self) -> None:
        route = self.host.route_to(self.gateway_host)
        if route is None:
            log.warning("no route to the gateway found; not pinning one")
            return
        via, device = route
        host = ipaddress.ip_address(self.gateway_host)
        self._pin = (f"{host}/{host.max_prefixlen}", via, device)
        self._add_route(*self._pin)

    def repin_gateway(self, via: str | None, device: str) -> None:
        """The network changed: the host route to the gateway (maybe at a new address) goes by the new
        next hop and device. Before the tunnel is up there is none to move (nothing is routed into it)."""
        if self.applied is None:
            return
        if self._pin is not None:
            old, self._pin = self._pin, None
            with contextlib.suppress(Exception):
                self.host.delete_route(*old)
            if old in self.state.routes:
                self.state.routes.remove(old)
            self.state.save()
        host = ipaddress.ip_address(self.gateway_host)
        self._pin = (f"{host}/{host.max_prefixlen}", via, device)
        self._add_route(*self._pin)

    def _add_route(self, dst: str, gateway: str | None, device: str | None) -> None:
        try:
            self.host.add_route(dst, gateway, device)
        except Exception as exc:
            log.warning("could not add route %s: %s", dst, exc)
            return
        if (dst, gateway, device) not in self.state.routes:
            self.state.routes.append((dst, gateway, device))
            self.state.save()


def _halves(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str]:
    """A default route as two halves, so it wins over the existing default without replacing it."""
    if net.prefixlen == 0:
        return [str(n) for n in net.subnets(prefixlen_diff=1)]
    return [str(net)]


__all__ = ["SystemState", "TunnelSetup"]
