"""Fixtures for end-to-end tests on real namespaces, veths, TUN devices and nftables (root only)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from veilgate import fastpath
from veilgate.testing import Topology, netns
from veilgate.testing.deploy import Deployment

pytestmark = pytest.mark.e2e

REQUIRE_FASTPATH_ENV = "VEILGATE_REQUIRE_FASTPATH"
"""Set to 1 (``.ci/run`` does): the "compiled" runs fail instead of skipping when the extension is missing."""


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "end-to-end tests need root (network namespaces, TUN, nftables)"
    for tool in ("ip", "nft", "ping", "curl"):
        if shutil.which(tool) is None:
            return f"end-to-end tests need {tool} (make test installs it)"
    if not Path("/dev/net/tun").exists():
        return "end-to-end tests need /dev/net/tun"
    return None


@pytest.fixture(autouse=True, params=["compiled", "python"])
def data_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every end-to-end test runs once on each data path; the daemons inherit the setting."""
    mode: str = request.param
    if mode == "compiled" and not fastpath.BUILT:
        if os.environ.get(REQUIRE_FASTPATH_ENV) == "1":
            pytest.fail(f"{REQUIRE_FASTPATH_ENV}=1 but the compiled data path is not built")
        pytest.skip("the compiled data path is not built")
    monkeypatch.setenv(fastpath.ENV, "1" if mode == "compiled" else "0")
    return mode


@pytest.fixture
def topo() -> Iterator[Topology]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    with Topology() as t:
        yield t


@pytest.fixture
def deploy(topo: Topology, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(topo, tmp_path / "vg")
    d.start_gateway()
    try:
        yield d
    finally:
        for name in list(d.clients):
            d.stop_client(name)
        if d.gateway_proc is not None:
            d.stop_gateway()


@dataclass
class WebServer:
    url4: str
    url6: str
    sha256: str
    size: int


@pytest.fixture
def web(topo: Topology, tmp_path: Path) -> WebServer:
    """An HTTP server on the internet host serving an 8 MB random file."""
    data = os.urandom(8 * 1024 * 1024)
    topo.serve_web(tmp_path / "www", "blob.bin", data)
    return WebServer(
        f"http://{netns.INTERNET_V4}:8080/blob.bin",
        f"http://[{netns.INTERNET_V6}]:8080/blob.bin",
        hashlib.sha256(data).hexdigest(),
        len(data),
    )
