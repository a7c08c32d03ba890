"""ClientProtocol.receive_datagram and receive_opened: nothing may escape but a return.

The first input byte picks what the rest is (``byte % 5``):

0. a raw datagram to a client with an established session;
1. a change (``common.xor_onto``) to a valid message 2 for the client's handshake in flight;
2. a change to a valid cookie reply for it (then the retry timer fires: message 1 with mac2);
3. a plaintext the gateway seals with its real keypair; the client must return None or one
   whole IP packet;
4. a control message the compiled path opened (``receive_opened``).
"""

from __future__ import annotations

from collections.abc import Callable

from common import (
    CLIENT_ADDR,
    NOW,
    check_ip_packet,
    check_outputs,
    establish,
    new_gateway,
    pending_handshake,
    snapshot,
    xor_onto,
)

MODES = 5


def make() -> Callable[[bytes], None]:
    client, _, response = pending_handshake()
    init = client.handshake_message()
    assert init is not None
    loaded = new_gateway()
    loaded.force_under_load = True
    loaded.receive_datagram(init, CLIENT_ADDR, NOW)
    ((cookie_reply, _),) = loaded.datagrams_to_send()
    live = [establish()]

    def one(data: bytes) -> None:
        if not data:
            return
        mode, rest = data[0] % MODES, data[1:]
        if mode == 0:
            cl, _, _ = live[0]
            out = cl.receive_datagram(rest, NOW)
            check_ip_packet(out, "client raw")
            check_outputs(client=cl)
        elif mode in (1, 2):
            cl = snapshot(client)
            valid = response if mode == 1 else cookie_reply
            out = cl.receive_datagram(xor_onto(valid, rest), NOW)
            check_ip_packet(out, "client handshake")
            cl.handle_timer(NOW + 1.0)
            check_outputs(client=cl)
        elif mode == 3:
            cl, _, session = live[0]
            kp = session.current
            assert kp is not None
            out = cl.receive_datagram(kp.seal(rest), NOW)
            check_ip_packet(out, "client transport")
            check_outputs(client=cl)
        else:
            cl, _, _ = live[0]
            cl.receive_opened(rest)
            check_outputs(client=cl)
        cl, _, _ = live[0]
        if not cl.connected:
            live[0] = establish()

    return one
