"""One credential, one live session, against a real gateway.

The attacker holds two valid credentials (for key 1 and key 2). It connects with key 1,
rotates the session to key 2, and connects again with key 1: each round used to leave one
more live session (and tunnel address) behind. It also tries to rotate a second session onto
a key a live session holds.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from veilgate.credentials import issue
from veilgate.protocol.crypto import KeyPair
from veilgate.testing import netns
from veilgate.testing.deploy import Deployment

pytestmark = pytest.mark.e2e

ATTACK = """
import json, sys
from veilgate.protocol.crypto import KeyPair
from veilgate.testing.rawclient import RawClient
a = json.loads(sys.argv[1])
gw = (a["host"], a["port"])
pub = bytes.fromhex(a["gateway"])
k1, k2 = (KeyPair.from_private_bytes(bytes.fromhex(k)) for k in a["keys"])
c1, c2 = (bytes.fromhex(c) for c in a["creds"])
out = {}
first = RawClient(gw, pub, k1, c1)
out["first"] = first.connect(5)
out["rotated"] = first.rotate(k2, c2, 5)
again = RawClient(gw, pub, k1, c1)  # key 1 again, from another socket: a second session?
out["again"] = again.connect(3)
first.pump(0.5)
third = RawClient(gw, pub, KeyPair.generate(), c1)  # someone else's credential: wrong key
out["third"] = third.connect(2)
thief = RawClient(gw, pub, k1, c1)
out["thief_first"] = thief.connect(2)
print(json.dumps(out))
"""


def test_a_credential_opens_one_live_session(deploy: Deployment) -> None:
    topo = deploy.topo
    now = time.time()
    keys = [KeyPair.generate(), KeyPair.generate()]
    creds = [issue(deploy.issuer, k.public, now, lifetime=3600, granularity=1).encode() for k in keys]
    args = {
        "host": netns.GATEWAY_V4,
        "port": deploy.udp_port,
        "gateway": deploy.gateway_key.public.hex(),
        "keys": [k.private_bytes().hex() for k in keys],
        "creds": [c.hex() for c in creds],
    }
    result = topo.ns_run(topo.client, sys.executable, "-c", ATTACK, json.dumps(args), timeout=60)
    out = json.loads(result.stdout)
    assert out["first"] and out["rotated"], out
    assert not out["again"], "key 1 was rotated away from: it must not open a second session"
    assert not out["third"] and not out["thief_first"]
    status = deploy.gateway_status()
    assert status["sessions"] == 1
    assert status["pool_v4_in_use"] == 1
    counters = status["counters"]
    assert counters.get("refused-credential-in-use", 0) >= 2
    assert counters.get("refused-wrong-key", 0) >= 1
    log = (deploy.dir / "gateway.log").read_text()
    assert "handshake refused: credential credential-in-use" in log
    for key in keys:  # the refusal says why, never who
        assert key.public.hex() not in log
