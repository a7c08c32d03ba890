"""GatewayProtocol.receive_datagram and receive_opened: nothing may escape but a return.

The first input byte picks what the rest is (``byte % 5``):

0. a raw datagram to a gateway with one established session (receiver index 0x1000);
1. a change (``common.xor_onto``) to a valid message 1, whose mac1 the harness recomputes so the
   fuzzer gets past it; the second byte's low bit makes the gateway "under load" (cookies, mac2);
2. message 3's payload (options), sealed under a valid Noise state, sent twice (a resend);
3. a change to a valid message 3 (the Noise part itself);
4. a plaintext the client seals with its real keypair (an IP packet, control message, ...);
   the gateway must return None or one whole IP packet;
5. a control message the compiled path opened (``receive_opened``), for the session's index.
"""

from __future__ import annotations

from collections.abc import Callable

from common import (
    CLIENT_ADDR,
    CREDENTIAL,
    NOW,
    OTHER_ADDR,
    check_ip_packet,
    check_outputs,
    establish,
    new_gateway,
    pending_handshake,
    snapshot,
    xor_onto,
)

from veilgate.protocol import crypto, messages
from veilgate.protocol.cookie import mac1_key
from veilgate.protocol.handshake import FinalPayload, InitiatorHandshake
from veilgate.protocol.messages import INIT_LEN, INIT_MAC1_OFFSET, HandshakeFinal, HandshakeResp

MODES = 6


def make() -> Callable[[bytes], None]:
    client, gateway, response = pending_handshake()
    init = client.handshake_message()
    assert init is not None
    hs = client._handshake
    assert isinstance(hs, InitiatorHandshake)
    hs.read_response(HandshakeResp.decode(response))
    before_final = snapshot((hs, gateway))
    hs_copy, _ = snapshot(before_final)
    valid_final = HandshakeFinal(
        hs_copy.remote_index, hs_copy._hs.write_message(FinalPayload(CREDENTIAL).encode())
    ).encode()
    key1 = mac1_key(gateway.public)
    live = [establish()]

    def one(data: bytes) -> None:
        if not data:
            return
        mode, rest = data[0] % MODES, data[1:]
        if mode == 0:
            _, gw, _ = live[0]
            out = gw.receive_datagram(rest, CLIENT_ADDR, NOW)
            check_ip_packet(out, "gateway raw")
            check_outputs(gateway=gw)
        elif mode == 1:
            gw = new_gateway()
            gw.force_under_load = bool(rest[:1] and rest[0] & 1)
            msg = xor_onto(init, rest[1:])
            if len(msg) == INIT_LEN:
                mac1 = crypto.mac(key1, msg[:INIT_MAC1_OFFSET])
                msg = msg[:INIT_MAC1_OFFSET] + mac1 + msg[INIT_MAC1_OFFSET + 16 :]
            gw.receive_datagram(msg, OTHER_ADDR if gw.force_under_load else CLIENT_ADDR, NOW)
            check_outputs(gateway=gw)
        elif mode in (2, 3):
            ihs, gw = snapshot(before_final)
            if mode == 2:
                msg = HandshakeFinal(ihs.remote_index, ihs._hs.write_message(rest)).encode()
            else:
                msg = xor_onto(valid_final, rest)
            for _ in range(2):  # and once more: a client resends message 3 until it is confirmed
                out = gw.receive_datagram(msg, CLIENT_ADDR, NOW)
                check_ip_packet(out, "gateway message 3")
                check_outputs(gateway=gw)
        elif mode == 4:
            cl, gw, session = live[0]
            kp = cl.current
            assert kp is not None
            out = gw.receive_datagram(kp.seal(rest), CLIENT_ADDR, NOW)
            check_ip_packet(out, "gateway transport")
            check_outputs(gateway=gw)
        else:
            cl, gw, session = live[0]
            index = session.current.local_index if session.current is not None else 0
            gw.receive_opened(index, rest, CLIENT_ADDR, NOW)
            check_outputs(gateway=gw)
        _, gw, session = live[0]
        if session.id not in gw.sessions or session.endpoint != CLIENT_ADDR:
            live[0] = establish()  # closed or roamed by the last input: start from a fresh session

    return one


__all__ = ["messages"]
