"""The data channel: one keypair's sealing and opening of transport messages.

A transport message is ``header(4) | receiver index (4) | counter (8) | AEAD``.
The AEAD nonce is four zero bytes followed by the little-endian counter, which
is exactly bytes 8..16 of the message, so the nonce is a slice, not a packing.
The plaintext is padded with zeros to a multiple of 16 bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from veilgate import fastpath
from veilgate.protocol.constants import (
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
)
from veilgate.protocol.errors import DecryptError, LocalProtocolError, RemoteProtocolError
from veilgate.protocol.messages import TRANSPORT_HEADER_LEN, TYPE_TRANSPORT
from veilgate.protocol.replay import ReplayWindow

_HDR = struct.Struct("<BBHIQ")
_NONCE_PREFIX: Final = b"\x00\x00\x00\x00"
_ZEROS: Final = bytes(PADDING_MULTIPLE)


class Keypair:
    """Transport keys from one handshake, with their counters and replay window (pure Python).

    A driver that runs the compiled data path makes ``CompiledKeypair`` instead (the cores take the
    class as ``new_keypair``).
    """

    __slots__ = (
        "_open",
        "_seal",
        "created",
        "final_digest",
        "initiator",
        "local_index",
        "owner",
        "remote_index",
        "replay",
        "send_counter",
    )

    def __init__(
        self,
        send_key: bytes,
        recv_key: bytes,
        local_index: int,
        remote_index: int,
        created: float,
        initiator: bool,
    ) -> None:
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.initiator = initiator
        self.final_digest = b""
        self.owner: Any = None
        """The gateway's Session this keypair belongs to."""
        self._init_keys(send_key, recv_key)

    def _init_keys(self, send_key: bytes, recv_key: bytes) -> None:
        """The cipher state, the send counter and the replay window."""
        self._seal = ChaCha20Poly1305(send_key).encrypt
        self._open = ChaCha20Poly1305(recv_key).decrypt
        self.send_counter = 0
        self.replay = ReplayWindow()

    def expired(self, now: float) -> bool:
        return now - self.created >= REJECT_AFTER_TIME or self.send_counter >= REJECT_AFTER_MESSAGES

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt one payload (IP packet, control message or empty keepalive) into a datagram."""
        counter = self.send_counter
        if counter >= REJECT_AFTER_MESSAGES:
            raise LocalProtocolError("keypair exhausted: rekey first")
        self.send_counter = counter + 1
        pad = -len(plaintext) % PADDING_MULTIPLE
        if pad:
            plaintext = plaintext + _ZEROS[:pad]
        header = _HDR.pack(TYPE_TRANSPORT, 1, 0, self.remote_index, counter)
        return header + self._seal(_NONCE_PREFIX + header[8:], plaintext, None)

    def open(self, data: bytes, counter: int) -> bytes:
        """Authenticate and decrypt a transport datagram addressed to this keypair.

        Raises ``RemoteProtocolError`` (reason ``replay``) for a counter already
        seen or older than the window, ``DecryptError`` for a forgery.
        """
        replay = self.replay
        if counter <= replay.top and not replay.check(counter):  # in-order packets skip the check
            raise RemoteProtocolError("replayed or too old counter", "replay")
        try:
            plaintext = self._open(
                _NONCE_PREFIX + data[8:TRANSPORT_HEADER_LEN], data[TRANSPORT_HEADER_LEN:], None
            )
        except InvalidTag as exc:
            raise DecryptError() from exc
        if not replay.update(counter):
            raise RemoteProtocolError("replayed counter", "replay")
        return plaintext


class CompiledKeypair(Keypair):
    """A keypair whose keys, send counter and replay window live in the compiled module.

    The compiled data path (veilgate.fastpath) seals and opens with the same ``keys`` object, so
    packets the Python core handles and packets it never sees share one counter and one window.
    """

    __slots__ = ("keys",)

    def _init_keys(self, send_key: bytes, recv_key: bytes) -> None:
        self.keys = fastpath.Keys(send_key, recv_key, self.local_index, self.remote_index, self.created)

    @property
    def send_counter(self) -> int:
        return self.keys.send_counter

    @send_counter.setter
    def send_counter(self, value: int) -> None:
        self.keys.send_counter = value

    def seal(self, plaintext: bytes) -> bytes:
        if self.keys.send_counter >= REJECT_AFTER_MESSAGES:
            raise LocalProtocolError("keypair exhausted: rekey first")
        return self.keys.seal(plaintext)

    def open(self, data: bytes, counter: int) -> bytes:
        result = self.keys.open(data)
        if isinstance(result, bytes):
            return result
        if result == _REPLAYED:
            raise RemoteProtocolError("replayed or too old counter", "replay")
        raise DecryptError()


_REPLAYED: Final = 1


KeypairFactory = Callable[[bytes, bytes, int, int, float, bool], Keypair]
"""Makes a keypair from ``(send_key, recv_key, local_index, remote_index, created, initiator)``:
``Keypair``, or the driver's choice of data path (``CompiledKeypair``)."""
