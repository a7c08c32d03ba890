"""Deploy a gateway and clients into a Topology, from freshly generated keys and credentials.

Used by the end-to-end tests and by ``make demo``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from veilgate.config.keys import encode_key, write_key_file
from veilgate.credentials import IssuerKey, issue
from veilgate.protocol.crypto import KeyPair
from veilgate.testing import netns
from veilgate.testing.netns import Topology
from veilgate.transport.tls import make_certificate, pem_pin


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _toml(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for name, fields in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in fields.items()]
        out.append("")
    return "\n".join(out)


class Deployment:
    def __init__(
        self,
        topo: Topology,
        workdir: Path,
        *,
        udp_port: int = 51820,
        tcp_port: int = 8443,
        veilgate: list[str] | None = None,
    ) -> None:
        self.topo = topo
        self.veilgate = veilgate or [sys.executable, "-m", "veilgate"]
        """The command that runs veilgate (default: this interpreter's package; e.g. an installed
        ``veilgate`` executable instead)."""
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.issuer = IssuerKey.generate()
        self.gateway_keys: dict[str, KeyPair] = {}
        self.gateway_public("gateway")
        self.gateway_key = self.gateway_keys["gateway"]
        self.gateway_proc: subprocess.Popen[Any] | None = None
        self.gateways: dict[str, subprocess.Popen[Any]] = {}
        self.provider_port = 9443
        self.provider_url = ""
        self.provider_fingerprint: str | None = None
        self.provider_proc: subprocess.Popen[Any] | None = None
        self.provider_on_internet = False
        self.spy_records: dict[str, Path] = {}
        self.clients: dict[str, subprocess.Popen[Any]] = {}
        self.gateway_tun = f"vgt{topo.tag}"
        self.user = "root"
        """The ``user`` every daemon's configuration names (the tests' daemons keep root unless told)."""
        self.env: dict[str, str] | None = None
        """The environment daemons started from now on get (None: this process's)."""
        self.tls: tuple[str, str] | None = None
        """The gateway's TLS name and pin, once ``enable_tls`` made its certificate."""

    def enable_tls(self, name: str = "www.example.org") -> tuple[str, str]:
        """Give the gateway a TLS carrier (a self-signed certificate for ``name``) and the clients
        made from now on its name and pin; returns them. Call before starting the gateway."""
        cert, key = make_certificate(name)
        (self.dir / "tls.crt").write_bytes(cert)
        (self.dir / "tls.key").write_bytes(key)
        self.tls = (name, pem_pin(cert))
        return self.tls

    # ---- gateway

    @property
    def gateway_socket(self) -> Path:
        return self.gateway_sock("gateway")

    def gateway_sock(self, name: str) -> Path:
        return self.dir / f"{name}.sock"

    def gateway_public(self, name: str = "gateway") -> bytes:
        if name not in self.gateway_keys:
            key = KeyPair.generate()
            write_key_file(self.dir / f"{name}.key", key.private_bytes())
            self.gateway_keys[name] = key
        return self.gateway_keys[name].public

    def gateway_config(self, name: str = "gateway", *, minimal: bool = False, **overrides: object) -> Path:
        """Gateway ``name``'s configuration file. ``minimal``: the documented minimum (key file and
        issuer keys) and the two settings two tests on one machine cannot share, the TUN device's
        name and the status socket; everything else is left to the defaults."""
        self.gateway_public(name)
        gw: dict[str, object] = {
            "private_key_file": str(self.dir / f"{name}.key"),
            "listen": netns.GATEWAY_V4,
            "listen6": "",
            "udp_port": self.udp_port,
            "tcp_port": self.tcp_port,
            "tun_name": self.gateway_tun,
            "pool_v4": netns.TUNNEL_POOL_V4,
            "pool_v6": netns.TUNNEL_POOL_V6,
            "dns": ["10.201.0.1"],
            # The internet host routes the tunnel pools back to the gateway: no NAT needed.
            "nat": False,
            "status_socket": str(self.gateway_sock(name)),
            "log_level": "info",
            "user": self.user,
        }
        if self.tls is not None:
            gw.update(
                tls_cert_file=str(self.dir / "tls.crt"),
                tls_key_file=str(self.dir / "tls.key"),
                tls_name=self.tls[0],
            )
        if minimal:
            gw = {k: v for k, v in gw.items() if k in ("private_key_file", "tun_name", "status_socket")}
        elif self.provider_on_internet:
            # Through-the-tunnel traffic to the provider must reach it from the gateway's egress
            # address, never from the client's tunnel address (docs/provider.md, "Deployment").
            gw.update(nat=True, nat_interface=self.gateway_internet_interface)
        gw.update(overrides)
        cred: dict[str, object] = {"issuer_public_keys": [encode_key(self.issuer.public_key().to_bytes())]}
        if self.provider_fingerprint is not None:
            cred["provider_url"] = self.provider_url
            cred["provider_fingerprint"] = self.provider_fingerprint
        path = self.dir / f"{name}.toml"
        path.write_text(_toml({"gateway": gw, "credentials": cred}))
        return path

    @property
    def gateway_internet_interface(self) -> str:
        """The gateway's interface toward the internet host."""
        return f"vg{self.topo.tag}g1"

    def start_gateway(
        self, name: str = "gateway", *, spy: bool = False, journal: bool = False, **overrides: object
    ) -> subprocess.Popen[Any]:
        """Start gateway ``name``; with ``spy``, as ``veilgate.testing.spy`` records every credential it
        checks to ``<name>-spy.jsonl`` (what a hostile provider could keep); with ``journal``, with
        JOURNAL_STREAM naming its log file, as systemd sets it for a service that logs to the journal.
        ``minimal=True`` among the overrides: see ``gateway_config``."""
        minimal = bool(overrides.pop("minimal", False))
        if spy:
            overrides.setdefault("workers", 1)  # the spy instruments the one gateway process
        config = self.gateway_config(name, minimal=minimal, **overrides)
        log = (self.dir / f"{name}.log").open("a")
        env = self.env
        if journal:
            st = os.fstat(log.fileno())
            env = dict(self.env or os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        command = [*self.veilgate, "gateway"]
        if spy:
            self.spy_records[name] = self.dir / f"{name}-spy.jsonl"
            command = [
                sys.executable,
                "-m",
                "veilgate.testing.spy",
                "gateway",
                "--record",
                str(self.spy_records[name]),
            ]
        proc = self.topo.spawn(
            self.topo.gateway,
            *command,
            "--config",
            str(config),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.gateways[name] = proc
        if name == "gateway":
            self.gateway_proc = proc
        wait_for(self.gateway_sock(name).exists, 15, f"{name} to start", self.dir / f"{name}.log")
        return proc

    def start_second_gateway(self, *, spy: bool = False, **overrides: object) -> subprocess.Popen[Any]:
        """Gateway "gw2" beside the first: the next ports, its own TUN and pools (10.202.0.0/16)."""
        settings: dict[str, object] = {
            "udp_port": self.udp_port + 1,
            "tcp_port": self.tcp_port + 1,
            "tun_name": f"vgt{self.topo.tag}b",
            "pool_v4": "10.202.0.0/16",
            "pool_v6": "fd7a:202::/64",
            "dns": ["10.202.0.1"],
        }
        settings.update(overrides)
        return self.start_gateway("gw2", spy=spy, journal=False, **settings)

    def stop_gateway(self, name: str = "gateway") -> int:
        proc = self.gateways.pop(name)
        code = self.topo.stop(proc)
        if name == "gateway":
            self.gateway_proc = None
        return code

    # ---- provider

    def start_provider(
        self,
        gateways: list[tuple[str, int, int, str, float]] | None = None,
        *,
        epoch_length: int = 3600,
        access: str = "open",
        tokens: list[str] | None = None,
        on_internet: bool = False,
        spy: bool = False,
        **overrides: object,
    ) -> str:
        """The provider service; returns its certificate fingerprint.

        ``gateways``: (name, udp port, tcp port, location, load) of gateways started later with those names.
        By default the provider listens on the gateway's address, in its namespace. With ``on_internet``
        it runs on the internet host, behind the gateway, and gateways started afterwards NAT their
        clients' traffic toward it (how a provider deploys it, docs/provider.md). With ``spy`` it runs as
        ``veilgate.testing.spy`` and records every request to ``provider-spy.jsonl``.
        ``overrides``: more ``[provider]`` settings.
        """
        gateways = gateways or [("gateway", self.udp_port, self.tcp_port, "here", 0.0)]
        self.provider_on_internet = on_internet
        if on_internet:
            # A provider on the internet is reachable from the clients' own addresses (the bootstrap
            # fetch): the internet host routes the underlay back through the gateway.
            self.topo.ns_run(
                self.topo.internet, "ip", "route", "add", "172.31.0.0/16", "via", netns.GATEWAY_I_V4
            )
            self.topo.ns_run(
                self.topo.internet, "ip", "-6", "route", "add", "fd00:31::/32", "via", netns.GATEWAY_I_V6
            )
        host = netns.INTERNET_V4 if on_internet else netns.GATEWAY_V4
        namespace = self.topo.internet if on_internet else self.topo.gateway
        provider: dict[str, object] = {
            "name": "veilgate test provider",
            "listen": host,
            "port": self.provider_port,
            "state_dir": str(self.dir / "provider-state"),
            "epoch_length": epoch_length,
            "access": access,
            "rsa_bits": 2048,
            "status_socket": str(self.dir / "provider.sock"),
            "log_level": "info",
            "user": self.user,
        }
        provider.update(overrides)
        if tokens is not None:
            (self.dir / "tokens.txt").write_text("\n".join(tokens) + "\n")
            provider["tokens_file"] = str(self.dir / "tokens.txt")
        lines = [_toml({"provider": provider})]
        for name, udp, tcp, location, load in gateways:
            entry = {
                "name": name,
                "host": netns.GATEWAY_V4,
                "public_key": encode_key(self.gateway_public(name)),
                "udp_port": udp,
                "tcp_port": tcp,
                "location": location,
                "load": load,
            }
            if self.tls is not None and name == "gateway":
                entry.update(tls_port=443, tls_name=self.tls[0], tls_pin=self.tls[1])
            lines.append("[[gateway]]\n" + _toml({"x": entry}).split("\n", 1)[1])
        config = self.dir / "provider.toml"
        config.write_text("\n".join(lines))
        init = self.topo.ns_run(namespace, *self.veilgate, "provider", "init", "--config", str(config))
        self.provider_fingerprint = init.stdout.strip()
        self.provider_url = f"https://{host}:{self.provider_port}"
        log = (self.dir / "provider.log").open("a")
        command = [*self.veilgate, "provider", "serve"]
        if spy:
            self.spy_records["provider"] = self.dir / "provider-spy.jsonl"
            command = [
                sys.executable,
                "-m",
                "veilgate.testing.spy",
                "provider",
                "--record",
                str(self.spy_records["provider"]),
            ]
        self.provider_proc = self.topo.spawn(
            namespace,
            *command,
            "--config",
            str(config),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        wait_for(
            lambda: "provider up" in (self.dir / "provider.log").read_text(),
            20,
            "the provider to start",
            self.dir / "provider.log",
        )
        return self.provider_fingerprint

    def stop_provider(self) -> int:
        assert self.provider_proc is not None
        code = self.topo.stop(self.provider_proc)
        self.provider_proc = None
        return code

    def make_provider_client(self, name: str = "c1", **overrides: object) -> Path:
        """A client configured with only the provider's URL and fingerprint."""
        assert self.provider_fingerprint is not None
        client: dict[str, object] = {
            "provider_url": self.provider_url,
            "provider_fingerprint": self.provider_fingerprint,
            "tun_name": f"vgu{self.topo.tag}{name}"[:15],
            "state_dir": str(self.dir / f"{name}-state"),
            "status_socket": str(self.client_socket(name)),
            "reprobe_interval": 2.0,
            "failover_after": 6.0,
            "log_level": "info",
            "user": self.user,
        }
        client.update(overrides)
        path = self.dir / f"{name}.toml"
        path.write_text(_toml({"client": client}))
        return path

    # ---- clients

    def make_client(
        self,
        name: str = "c1",
        *,
        lifetime: int = 3600,
        now: float | None = None,
        forged: bool = False,
        **overrides: object,
    ) -> Path:
        key = KeyPair.generate()
        write_key_file(self.dir / f"{name}.key", key.private_bytes())
        issuer = IssuerKey.generate() if forged else self.issuer
        credential = issue(
            issuer, key.public, time.time() if now is None else now, lifetime=lifetime, granularity=1
        )
        (self.dir / f"{name}.cred").write_text(encode_key(credential.encode()) + "\n")
        client: dict[str, object] = {
            "gateway_host": netns.GATEWAY_V4,
            "gateway_public_key": encode_key(self.gateway_key.public),
            "private_key_file": str(self.dir / f"{name}.key"),
            "credential_file": str(self.dir / f"{name}.cred"),
            "udp_port": self.udp_port,
            "tcp_port": self.tcp_port,
            "tun_name": f"vgu{self.topo.tag}{name}"[:15],
            "state_dir": str(self.dir / f"{name}-state"),
            "status_socket": str(self.client_socket(name)),
            "reprobe_interval": 2.0,
            "log_level": "info",
            "user": self.user,
        }
        if self.tls is not None and not forged:
            client.update(tls_name=self.tls[0], tls_pin=self.tls[1])
        client.update(overrides)
        path = self.dir / f"{name}.toml"
        path.write_text(_toml({"client": client}))
        return path

    def client_socket(self, name: str) -> Path:
        return self.dir / f"{name}.sock"

    def start_client(
        self,
        name: str = "c1",
        ns: str | None = None,
        *,
        prefix: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[Any]:
        """Start client ``name`` (made with ``make_client`` first, or with its defaults); ``prefix``
        runs it through a command (e.g. nsenter into a mount namespace), ``env`` replaces its environment."""
        config = self.dir / f"{name}.toml"
        if not config.exists():
            config = self.make_client(name)
        log = (self.dir / f"{name}.log").open("a")
        proc = self.topo.spawn(
            ns or self.topo.client,
            *prefix,
            *self.veilgate,
            "connect",
            "--config",
            str(config),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env if env is not None else self.env,
        )
        self.clients[name] = proc
        wait_for(
            lambda: self.client_socket(name).exists(), 10, f"client {name} to start", self.dir / f"{name}.log"
        )
        return proc

    def stop_client(self, name: str = "c1") -> int:
        return self.topo.stop(self.clients.pop(name))

    # ---- status

    def status(self, sock: Path) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        result: dict[str, Any] = json.loads(data)
        return result

    def client_status(self, name: str = "c1") -> dict[str, Any]:
        return self.status(self.client_socket(name))

    def gateway_status(self) -> dict[str, Any]:
        return self.status(self.gateway_socket)

    def wait_client(
        self, name: str = "c1", *, transport: str | None = None, timeout: float = 15
    ) -> dict[str, Any]:
        """Wait until the client is connected with an address (on ``transport`` if given)."""
        last: dict[str, Any] = {}

        def ready() -> bool:
            nonlocal last
            try:
                last = self.client_status(name)
            except OSError:
                return False
            return bool(last.get("connected") and last.get("ipv4")) and (
                transport is None or last.get("transport") == transport
            )

        wait_for(
            ready,
            timeout,
            f"client {name} connected{' on ' + transport if transport else ''}",
            self.dir / f"{name}.log",
        )
        return last


def wait_for(predicate: Any, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = ""
    if log is not None and log.exists():
        tail = "\n--- " + str(log) + " ---\n" + "\n".join(log.read_text().splitlines()[-30:])
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}{tail}")
