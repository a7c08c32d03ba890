"""Write the seed corpora, fuzz/corpus/<target>/: small valid inputs for each target.

Run from the repository root: ``.venv/bin/python fuzz/seeds.py``. The keys of the harnesses are
fixed (fuzz/common.py), so these seeds stay valid messages for them. The output is committed.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    CLIENT_KEY,
    CLIENT_V4,
    CLIENT_V6,
    CONFIG,
    CREDENTIAL,
    FIRST_INDEX,
    GATEWAY_KEY,
    NOW,
    pending_handshake,
)
from targets import blind_credential, credential, document  # noqa: E402

from veilgate.credentials import issue  # noqa: E402
from veilgate.protocol import control, messages  # noqa: E402
from veilgate.protocol.handshake import FinalPayload  # noqa: E402
from veilgate.provider.document import GatewayEntry, ProviderDocument  # noqa: E402


def ipv4(src: str, dst: str, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header + payload


def ipv6(src: str, dst: str, payload: bytes) -> bytes:
    header = struct.pack("!IHBB", 0x60000000, len(payload), 17, 64)
    return header + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


def wire() -> dict[str, dict[str, bytes]]:
    _, _, response = pending_handshake()
    up4 = ipv4(str(CLIENT_V4.ip), "198.51.100.1", b"ping")
    up6 = ipv6(str(CLIENT_V6.ip), "2001:db8::1", b"ping")
    down4 = ipv4("198.51.100.1", str(CLIENT_V4.ip), b"pong")
    down6 = ipv6("2001:db8::1", str(CLIENT_V6.ip), b"pong")
    probe, close = control.probe_message(42), control.close_message()
    config = control.config_message(CONFIG)
    final = FinalPayload(CREDENTIAL).encode()
    resumed = FinalPayload(CREDENTIAL, bytes(32)).encode()
    n_final = messages.HDR_FINAL + struct.pack("<I", FIRST_INDEX)
    final_len = len(n_final) + 48 + len(final) + 16
    transport = messages.pack_transport_header(FIRST_INDEX, 0) + bytes(32)
    gateway = {
        "raw-init-header": b"\x00" + messages.HDR_INIT + bytes(16),
        "raw-final": b"\x00" + n_final + bytes(64),
        "raw-transport": b"\x00" + transport,
        "init": b"\x01\x00" + bytes(messages.INIT_LEN),
        "init-under-load": b"\x01\x01" + bytes(messages.INIT_LEN),
        "final-options": b"\x02" + final,
        "final-options-resume": b"\x02" + resumed,
        "final": b"\x03" + bytes(final_len),
        "transport-ipv4": b"\x04" + up4,
        "transport-ipv6": b"\x04" + up6,
        "transport-keepalive": b"\x04",
        "transport-probe": b"\x04" + probe,
        "transport-close": b"\x04" + close,
        "opened-probe": b"\x05" + probe,
        "opened-close": b"\x05" + close,
    }
    client = {
        "raw-response-header": b"\x00" + messages.HDR_RESP + bytes(8),
        "raw-transport": b"\x00" + transport,
        "response": b"\x01" + bytes(len(response)),
        "cookie-reply": b"\x02" + bytes(messages.COOKIE_REPLY_LEN),
        "transport-ipv4": b"\x03" + down4,
        "transport-ipv6": b"\x03" + down6,
        "transport-keepalive": b"\x03",
        "transport-config": b"\x03" + config,
        "transport-probe-reply": b"\x03" + control.probe_reply_message(bytes(8)),
        "opened-config": b"\x04" + config,
        "opened-probe-reply": b"\x04" + control.probe_reply_message(bytes(8)),
    }
    control_seeds = {
        "config": config,
        "config-body": CONFIG.encode_body(),
        "probe": probe,
        "close": close,
    }
    return {"gateway": gateway, "client": client, "control": control_seeds}


def credentials() -> dict[str, dict[str, bytes]]:
    cred = issue(credential.ISSUER, CLIENT_KEY.public, NOW).encode()
    static = CLIENT_KEY.public
    blind = blind_credential.valid_credential()
    return {
        "credential": {
            "raw": b"\x00" + cred,
            "resigned": b"\x01" + cred[:58],
            "resigned-now": b"\x02" + struct.pack("<d", NOW) + static + cred[:58],
        },
        "blind_credential": {
            "raw": b"\x00" + blind,
            "changed": b"\x01" + bytes(len(blind)),
            "now": b"\x02" + struct.pack("<d", blind_credential.NOW) + static,
        },
    }


def provider() -> dict[str, dict[str, bytes]]:
    document_now = document.NOW
    doc = ProviderDocument(
        "Example VPN",
        int(document_now) - 60,
        int(document_now) + 86400,
        86400,
        (GatewayEntry("gw1", "192.0.2.1", GATEWAY_KEY.public, 51820, 443, "2001:db8::1", "Paris", 0.5),),
        (blind_credential.KEY.public,),
        "token",
    ).to_bytes()
    request = json.dumps({"epoch": 20000, "blinded": base64.b64encode(bytes(256)).decode(), "token": "t"})
    return {
        "document": {
            "envelope": b"\x00" + document.envelope(doc),
            "document": b"\x01" + doc,
            "signed": b"\x02" + doc,
        },
        "request": {
            "request": request.encode(),
            "open": json.dumps({"epoch": 0, "blinded": "AAAA"}).encode(),
        },
    }


def configs() -> dict[str, dict[str, bytes]]:
    issuer = base64.b64encode(credential.ISSUER.public_key().to_bytes()).decode()
    gateway_key = base64.b64encode(GATEWAY_KEY.public).decode()
    return {
        "config": {
            "gateway.toml": f"""[gateway]
private_key_file = "gateway.key"
pool_v4 = "10.201.0.0/16"
pool_v6 = "fd7a:201::/64"
udp_port = 51820
dns = ["10.201.0.1"]
routes = ["0.0.0.0/0", "::/0"]
nat = true
nat_interface = "eth0"

[credentials]
issuer_public_keys = ["{issuer}"]
max_skew = 120
""".encode(),
            "client.toml": f"""[client]
gateway_host = "192.0.2.1"
gateway_public_key = "{gateway_key}"
private_key_file = "client.key"
credential_file = "credential"
transport = "auto"
udp_grace = 0.3
kill_switch = true
""".encode(),
            "client-provider.toml": b"""[client]
provider_url = "https://vpn.example"
provider_fingerprint = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
provider_token = "token-one"
failover_after = 15
""",
            "provider.toml": f"""[provider]
name = "Example VPN"
state_dir = "state"
access = "token"
tokens_file = "tokens.txt"
epoch_length = 86400

[[gateway]]
name = "gw1"
host = "192.0.2.1"
public_key = "{gateway_key}"
location = "Paris"
load = 0.5
""".encode(),
        }
    }


def main() -> None:
    corpus = HERE / "corpus"
    groups: dict[str, dict[str, bytes]] = {}
    for part in (wire(), credentials(), provider(), configs()):
        groups.update(part)
    groups["fastpath"] = fastpath_seeds()
    for target, seeds in groups.items():
        folder = corpus / target
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
    print(f"wrote {sum(len(s) for s in groups.values())} seeds for {len(groups)} targets under {corpus}")


def fastpath_seeds() -> dict[str, bytes]:
    def blob(b: bytes) -> bytes:
        return struct.pack("<H", len(b)) + b

    up = ipv4("10.0.0.2", "198.51.100.1", b"ping")
    down = ipv4("198.51.100.1", "10.0.0.2", b"pong")
    neighbour = ipv4("10.0.0.2", "10.0.0.3", b"hi")
    return {
        # op 0: open a datagram sealed at counter 5
        "open-sealed": b"\x00\x00" + struct.pack("<Q", 5) + blob(up),
        # op 1: seal at counter 9
        "seal": b"\x01" + struct.pack("<Q", 9) + blob(up),
        # op 2: the client's UDP loop, two sealed datagrams (IP and control), one GSO send
        "client-udp": b"\x02\x01\x00"
        + blob(down)
        + b"\x00"
        + blob(control.probe_reply_message(bytes(8)))
        + b"\x01",
        # op 3: the gateway's UDP loop, sealed IP packets from the assigned source and to a neighbour
        "gateway-udp": b"\x03\x02\x00" + blob(up) + b"\x00" + blob(neighbour) + b"\x00" + blob(up) + b"\x00",
        # op 4 and 5: the TUN loops
        "client-tun": b"\x04\x01" + blob(up) + blob(up),
        "gateway-tun": b"\x05\x01" + blob(down) + blob(neighbour),
    }


if __name__ == "__main__":
    main()
