"""What a gateway changes on its machine: forwarding, its TUN device's addresses, NAT and isolation.

One gateway process does it all; a many-worker gateway's supervisor does it once for its workers
(``veilgate.gateway.workers``). Undone at exit: the firewall table goes; the TUN device (and with
it its addresses) goes when its last descriptor closes; forwarding stays on (other services may
rely on it).
"""

from __future__ import annotations

import ipaddress
import logging

from veilgate.config import ConfigError
from veilgate.driver.host import Firewall, Host
from veilgate.gateway.config import GatewayConfig
from veilgate.gateway.pool import gateway_address
from veilgate.netfilter import gateway_isolation_rules, gateway_nat_rules

log = logging.getLogger("veilgate.gateway")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Machine:
    def __init__(self, host: Host, config: GatewayConfig) -> None:
        self.host = host
        self.config = config
        self._firewall: Firewall | None = None

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        """The gateway's own tunnel addresses (IPv4, and IPv6 with an IPv6 pool)."""
        cfg = self.config
        return tuple(gateway_address(n) for n in (cfg.pool_v4, cfg.pool_v6) if n is not None)

    @property
    def dns(self) -> tuple[IPAddress, ...]:
        """The DNS servers pushed to clients: as configured, else the gateway's own tunnel addresses."""
        if self.config.dns is not None:
            return tuple(self.config.dns)
        return self.addresses

    def uplink(self) -> str | None:
        """The interface NAT sends clients' traffic out of (None: no NAT), forwarding turned on."""
        cfg = self.config
        uplink = cfg.nat_interface
        if cfg.nat and uplink is None:
            uplink = self.host.default_interface()
            if uplink is None:
                raise ConfigError(
                    f"{cfg.source or 'gateway'}: gateway.nat_interface: not set, and this machine has no "
                    "default route to take it from; set it to the interface clients' traffic leaves by "
                    "(or nat = false)"
                )
        self.host.enable_forwarding(cfg.pool_v6 is not None, uplink)
        return uplink

    def setup_tun(self, name: str) -> None:
        """The gateway's tunnel addresses on its TUN device, the device up, DNS checked."""
        cfg = self.config
        for network in (cfg.pool_v4, cfg.pool_v6):
            if network is not None:
                self.host.add_address(name, f"{gateway_address(network)}/{network.prefixlen}")
        self.host.set_up(name, cfg.mtu)
        self._check_dns()

    def _check_dns(self) -> None:
        """Warn loudly when clients would get no working DNS server from this gateway."""
        cfg = self.config
        own = gateway_address(cfg.pool_v4)
        if cfg.dns == []:
            log.warning(
                "dns = []: clients get no DNS server from this gateway and keep their own, whose "
                "queries may leave outside the tunnel; set dns, or remove it to push this gateway's "
                "own tunnel address (with a resolver listening there)"
            )
        elif cfg.dns is None and self.host.serves_dns(str(own)) is False:
            log.warning(
                "clients are told to use %s for DNS, but no resolver listens on port 53 there: run one "
                "(e.g. unbound, docs/configuration.md) or set dns",
                own,
            )

    def apply_firewall(self, tun_name: str, uplink: str | None) -> None:
        """NAT out of ``uplink``, and no client-to-client traffic unless allowed."""
        cfg = self.config
        if cfg.nat or not cfg.client_to_client:
            body = "" if cfg.client_to_client else gateway_isolation_rules(tun_name)
            if cfg.nat and uplink is not None:
                pools = [str(cfg.pool_v4)] + ([str(cfg.pool_v6)] if cfg.pool_v6 else [])
                body += gateway_nat_rules(pools, uplink)
            self._firewall = self.host.firewall(f"veilgate_{tun_name}")
            self._firewall.apply(body)

    def remove_firewall(self) -> None:
        if self._firewall is not None:
            self._firewall.delete()
            self._firewall = None

    def log_up(self, tun_name: str, uplink: str | None, workers: int = 1) -> None:
        cfg = self.config
        log.info(
            "gateway up: udp %d, tls %s, tcp %s, tun %s, pools %s%s, %s, DNS pushed: %s%s",
            cfg.udp_port,
            cfg.tls_port if cfg.tls_cert_file is not None else "off",
            cfg.tcp_port or "off",
            tun_name,
            cfg.pool_v4,
            f" {cfg.pool_v6}" if cfg.pool_v6 else "",
            f"NAT out of {uplink}" if cfg.nat else "no NAT",
            " ".join(str(a) for a in self.dns) or "none",
            f", {workers} workers" if workers > 1 else "",
        )


__all__ = ["Machine"]
