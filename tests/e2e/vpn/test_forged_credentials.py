"""Forged credentials under a trusted key id, against a real gateway: refused as `forged`, no session,
and nothing in the gateway's log that identifies the client."""

from __future__ import annotations

import base64
import os
import sys
import time
from pathlib import Path

import pytest

from veilgate.config.keys import decode_key, encode_key
from veilgate.credentials import Credential
from veilgate.credentials.epochs import BlindCredential
from veilgate.testing import netns
from veilgate.testing.deploy import Deployment, wait_for

pytestmark = pytest.mark.e2e

# Run in the client's namespace: a real credential from the real provider for a fresh key, written
# to the given key and credential files (the provider listens in the gateway's namespace).
OBTAIN = """
import asyncio, sys, time
from pathlib import Path
from veilgate.config.keys import encode_key, write_key_file
from veilgate.credentials.epochs import epoch_of
from veilgate.protocol.crypto import KeyPair
from veilgate.provider.client import ProviderClient

async def main() -> None:
    url, pin, key_file, cred_file = sys.argv[1:]
    client = ProviderClient(url, pin)
    doc = (await client.fetch_document(time.time())).document
    epoch_key = doc.epoch_key(epoch_of(time.time(), doc.epoch_length))
    key = KeyPair.generate()
    cred = await client.obtain_credential(epoch_key, key.public)
    write_key_file(Path(key_file), key.private_bytes())
    Path(cred_file).write_text(encode_key(cred.encode()) + "\\n")

asyncio.run(main())
"""


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _assert_refused_as_forged(d: Deployment, static_public: bytes) -> None:
    wait_for(
        lambda: d.gateway_status()["counters"].get("refused-forged", 0) > 0,
        15,
        "the gateway to refuse the forged credential",
        d.dir / "gateway.log",
    )
    time.sleep(1.0)  # the client keeps retrying: none of its attempts may become a session
    status = d.gateway_status()
    assert status["sessions"] == 0
    assert status["counters"].get("sessions-established", 0) == 0
    assert not d.client_status("bad")["connected"]
    log = (d.dir / "gateway.log").read_text()
    assert "handshake refused: credential forged" in log
    for identity in (
        netns.CLIENT_V4,
        static_public.hex(),
        base64.b64encode(static_public).decode(),
        base64.b64encode(static_public).decode().rstrip("="),
    ):
        assert identity not in log, identity
        assert identity not in str(status), identity


@pytest.mark.parametrize("how", ["altered", "garbage"])
def test_forged_ed25519_credential_under_the_trusted_issuer_is_refused(deploy: Deployment, how: str) -> None:
    d = deploy
    d.make_client("bad")  # a genuine credential from the issuer the gateway trusts...
    cred_file = d.dir / "bad.cred"
    genuine = decode_key(cred_file.read_text().strip(), "credential", length=122)
    cred = Credential.decode(genuine)
    # ...with one bit of its signature's S changed, or its signature replaced by random bytes
    forged = _flip(genuine, len(genuine) - 2) if how == "altered" else genuine[:-64] + os.urandom(64)
    assert Credential.decode(forged).key_id == cred.key_id
    cred_file.write_text(encode_key(forged) + "\n")
    d.start_client("bad")
    _assert_refused_as_forged(d, cred.static_public)


def test_forged_blind_credential_under_the_current_epoch_key_is_refused(deploy: Deployment) -> None:
    d = deploy
    d.stop_gateway()
    d.start_provider()
    d.start_gateway()  # now trusting the provider's epoch keys
    wait_for(
        lambda: "issuer epoch keys loaded" in (d.dir / "gateway.log").read_text(),
        15,
        "the gateway to load the epoch keys",
        d.dir / "gateway.log",
    )
    d.make_client("bad")
    key_file, cred_file = d.dir / "bad.key", d.dir / "bad.cred"
    d.topo.ns_run(
        d.topo.client,
        sys.executable,
        "-c",
        OBTAIN,
        d.provider_url,
        d.provider_fingerprint or "",
        str(key_file),
        str(cred_file),
        timeout=60,
    )
    genuine = _read_credential(cred_file)
    cred = BlindCredential.decode(genuine)
    forged = _flip(genuine, len(genuine) - 1)  # the signature's last byte: a trusted key id, a bad signature
    assert BlindCredential.decode(forged).key_id == cred.key_id
    cred_file.write_text(encode_key(forged) + "\n")
    d.start_client("bad")
    _assert_refused_as_forged(d, cred.static_public)


def _read_credential(path: Path) -> bytes:
    return base64.b64decode(path.read_text().strip(), validate=True)
