"""A handshake flooder in a topology, and the figures a run around it reads from the kernel.

``FloodRun`` starts the flooder of ``veilgate.testing.flood`` (``python -m veilgate.testing.flood
send``) in the namespace of a ``Topology.add_host`` host on ``FLOOD_SUBNET``, sending from that
host's addresses, and reads back its report. The other helpers are what the end-to-end
test and ``make bench-flood`` measure around a flood: the flooder and the gateway pinned to
different CPUs, a namespace's UDP counters (datagrams dropped at a full socket), a process's CPU
time and resident memory.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from veilgate.config.keys import encode_key
from veilgate.testing.flood import FloodReport
from veilgate.testing.netns import Host, Topology

FLOOD_SUBNET = 20
"""The flooder's 172.31.20.0/24 in ``Topology.add_host``."""


class FloodRun:
    """A flooder process on a ``Topology`` host (``add_host``), sending from all of its addresses."""

    def __init__(
        self,
        topo: Topology,
        host: Host,
        gateway: tuple[str, int],
        gateway_public: bytes,
        rate: float,
        duration: float,
        *,
        handshakes: int = 256,
        indices: int = 16,
        sources: Sequence[str] | None = None,
    ) -> None:
        """``sources``: the host's addresses to send from (default all of them)."""
        cmd = [sys.executable, "-m", "veilgate.testing.flood", "send"]
        cmd += ["--gateway", f"{gateway[0]}:{gateway[1]}", "--public-key", encode_key(gateway_public)]
        cmd += ["--rate", repr(rate), "--duration", repr(duration)]
        cmd += ["--handshakes", str(handshakes), "--indices", str(indices)]
        for source in host.sources if sources is None else sources:
            cmd += ["--source", source]
        self.topo = topo
        self.proc = topo.spawn(host.ns, *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started_at: float | None = None

    def wait_started(self, timeout: float = 60) -> float:
        """Wait until the pool is built and sending begins; returns that moment (``time.monotonic``)."""
        assert self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stderr], [], [], timeout)
        line = self.proc.stderr.readline() if ready else ""
        if "flooding" not in line:
            self.proc.kill()
            rest = self.proc.communicate(timeout=10)[1] if ready else ""
            raise RuntimeError(f"the flooder did not start: {line}{rest}")
        self.started_at = time.monotonic()
        return self.started_at

    def report(self, timeout: float = 30) -> FloodReport:
        """Stop the flood if it still runs, and return what it achieved."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        try:
            return FloodReport(**json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError, TypeError):
            raise RuntimeError(
                f"the flooder printed no report (exit {self.proc.returncode}): {err}"
            ) from None


def pin_apart(flooder_pid: int, gateway_pid: int) -> bool:
    """Keep the flooder and the gateway on different CPUs (the first and the last), as an attacker's
    machine is not the gateway's; the kernel's work for the flood's datagrams stays on the
    flooder's CPU, where it sends them. False (and nothing changed) on a machine with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return False
    os.sched_setaffinity(flooder_pid, {cpus[0]})
    os.sched_setaffinity(gateway_pid, {cpus[-1]})
    return True


def udp_stats(topo: Topology, ns: str) -> dict[str, int]:
    """The kernel's UDP counters in a namespace (``RcvbufErrors``: datagrams dropped at a full socket)."""
    lines = [line.split() for line in topo.ns_run(ns, "cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = (line[1:] for line in lines if line and line[0] == "Udp:")
    return dict(zip(names, map(int, values), strict=True))


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_kib(pid: int) -> int:
    """A process's resident memory, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
