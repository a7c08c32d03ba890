"""veilgate's handshake: Noise XKhfs framed into messages 1-3.

::

    <- s                      (the client pins the gateway's static key)
    ...
    -> e, es, e1              message 1: HandshakeInit, with mac1/mac2
    <- e, ee, ekem1           message 2: HandshakeResp
    -> s, se                  message 3: HandshakeFinal, payload = credential and options

The ML-KEM-768 secret is mixed into the chaining key by ``ekem1`` in message 2,
before the client's static key is encrypted in message 3: recording the
handshake and later breaking X25519 (or stealing the gateway's key) reveals
neither the traffic nor the client's identity.

Message 3's payload is a list of options ``tag (1) | length (2, big-endian) | value``:
``OPT_CREDENTIAL`` (required, exactly once) and ``OPT_RESUME`` (a 32-byte token
from the previous handshake of the same session, sent when the client rotates
its static key so the gateway keeps its session and address).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from veilgate.protocol import crypto
from veilgate.protocol.constants import LABEL_RESUME, MAX_PAYLOAD_3, NOISE_PROTOCOL_NAME, PROLOGUE
from veilgate.protocol.cookie import CookieGenerator
from veilgate.protocol.crypto import KeyPair
from veilgate.protocol.errors import LocalProtocolError, RemoteProtocolError
from veilgate.protocol.messages import (
    HDR_INIT,
    HDR_RESP,
    HandshakeFinal,
    HandshakeInit,
    HandshakeResp,
)
from veilgate.protocol.noise import XKHFS, Encapsulate, HandshakeState

OPT_CREDENTIAL: Final = 1
OPT_RESUME: Final = 2
RESUME_TOKEN_LEN: Final = 32

_U32 = struct.Struct("<I")
_OPT = struct.Struct("!BH")


@dataclass(frozen=True)
class FinalPayload:
    credential: bytes
    resume: bytes | None = None

    def encode(self) -> bytes:
        out = _OPT.pack(OPT_CREDENTIAL, len(self.credential)) + self.credential
        if self.resume is not None:
            out += _OPT.pack(OPT_RESUME, len(self.resume)) + self.resume
        if len(out) > MAX_PAYLOAD_3:
            raise LocalProtocolError("message 3 payload too large")
        return out

    @classmethod
    def decode(cls, data: bytes) -> FinalPayload:
        credential: bytes | None = None
        resume: bytes | None = None
        pos = 0
        while pos < len(data):
            if pos + _OPT.size > len(data):
                raise RemoteProtocolError("truncated option in message 3", "malformed")
            tag, length = _OPT.unpack_from(data, pos)
            pos += _OPT.size
            value = data[pos : pos + length]
            if len(value) != length:
                raise RemoteProtocolError("truncated option value in message 3", "malformed")
            pos += length
            if tag == OPT_CREDENTIAL and credential is None:
                credential = value
            elif tag == OPT_RESUME and resume is None and length == RESUME_TOKEN_LEN:
                resume = value
            else:
                raise RemoteProtocolError(f"bad or repeated option {tag} in message 3", "malformed")
        if credential is None:
            raise RemoteProtocolError("message 3 carries no credential", "malformed")
        return cls(credential, resume)


@dataclass(frozen=True)
class HandshakeResult:
    """What a completed handshake leaves: transport keys and the next resumption token."""

    send_key: bytes
    recv_key: bytes
    handshake_hash: bytes
    resume_token: bytes
    remote_static: bytes


def _result(hs: HandshakeState, initiator: bool) -> HandshakeResult:
    k1, k2 = hs.symmetric.split()
    token = crypto.hmac_hash(hs.symmetric.ck, LABEL_RESUME)
    remote = hs.rs if hs.rs is not None else b""
    send, recv = (k1, k2) if initiator else (k2, k1)
    return HandshakeResult(send, recv, hs.handshake_hash, token, remote)


class InitiatorHandshake:
    """The client's side of one handshake attempt."""

    def __init__(
        self,
        static: KeyPair,
        gateway_public: bytes,
        local_index: int,
        cookies: CookieGenerator,
        now: float,
        *,
        ephemeral: KeyPair | None = None,
        kem: crypto.KemKeyPair | None = None,
    ) -> None:
        self.local_index = local_index
        self.remote_index = 0
        self.started = now
        self._hs = HandshakeState(
            NOISE_PROTOCOL_NAME, XKHFS, True, PROLOGUE, s=static, rs=gateway_public, e=ephemeral, e1=kem
        )
        body = HDR_INIT + _U32.pack(local_index) + self._hs.write_message(b"")
        self._body = body
        self.init_message = cookies.stamp(body, now)
        self._cookies = cookies

    def restamp(self, now: float) -> bytes:
        """Message 1 again, with a fresh mac2 if a cookie arrived meanwhile."""
        self.init_message = self._cookies.stamp(self._body, now)
        return self.init_message

    def read_response(self, resp: HandshakeResp) -> None:
        if resp.receiver != self.local_index:
            raise RemoteProtocolError("response for another handshake", "unknown-index")
        hs = self._hs.copy()  # a forged message 2 must not spoil the state for the genuine one
        if hs.read_message(resp.noise):
            raise RemoteProtocolError("message 2 payload must be empty", "malformed")
        self._hs = hs
        self.remote_index = resp.sender

    def write_final(self, payload: FinalPayload) -> tuple[bytes, HandshakeResult]:
        msg = HandshakeFinal(self.remote_index, self._hs.write_message(payload.encode())).encode()
        return msg, _result(self._hs, True)


class ResponderHandshake:
    """The gateway's side of one handshake, alive between messages 1 and 3."""

    __slots__ = ("_hs", "created", "local_index", "remote_index", "source")

    def __init__(
        self,
        static: KeyPair,
        init: HandshakeInit,
        local_index: int,
        now: float,
        source: object,
        *,
        ephemeral: KeyPair | None = None,
        encapsulate: Encapsulate = crypto.kem_encapsulate,
    ) -> None:
        self._hs = HandshakeState(
            NOISE_PROTOCOL_NAME, XKHFS, False, PROLOGUE, s=static, e=ephemeral, encapsulate=encapsulate
        )
        if self._hs.read_message(init.noise):
            raise RemoteProtocolError("message 1 payload must be empty", "malformed")
        self.local_index = local_index
        self.remote_index = init.sender
        self.created = now
        self.source = source

    def write_response(self) -> bytes:
        return HandshakeResp(self.local_index, self.remote_index, self._hs.write_message(b"")).encode()

    def read_final(self, final: HandshakeFinal) -> tuple[FinalPayload, HandshakeResult]:
        """Read message 3 on a copy of the state: on any failure the pending handshake is as it was,
        so the genuine message 3 still completes it after a forged or corrupted one."""
        hs = self._hs.copy()
        payload = FinalPayload.decode(hs.read_message(final.noise))
        return payload, _result(hs, False)


__all__ = [
    "HDR_RESP",
    "FinalPayload",
    "HandshakeResult",
    "InitiatorHandshake",
    "ResponderHandshake",
]
