"""Control messages inside the tunnel: control.decode_control and TunnelConfig.decode_body.

Both raise RemoteProtocolError (and nothing else) on bad input. A config that decodes must
encode to a body that decodes to the same config (unknown tags aside).
"""

from __future__ import annotations

from collections.abc import Callable

from veilgate.protocol import control
from veilgate.protocol.errors import RemoteProtocolError


def make() -> Callable[[bytes], None]:
    def one(data: bytes) -> None:
        try:
            msg = control.decode_control(data)
        except RemoteProtocolError:
            msg = None
        if msg is not None and control.decode_control(msg.encode()) != msg:
            raise AssertionError("control message: does not survive encode/decode")
        body = msg.body if msg is not None and msg.type == control.CTRL_CONFIG else data
        try:
            config = control.TunnelConfig.decode_body(body)
        except RemoteProtocolError:
            return
        again = control.TunnelConfig.decode_body(config.encode_body())
        if again != config:
            raise AssertionError(f"tunnel config: {config} encodes to {again}")

    return one
