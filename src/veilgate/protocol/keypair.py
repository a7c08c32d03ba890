"""The data channel: one keypair's sealing and opening of transport messages, and the rule for
when a keypair may be used (``Keypair.state``).

A transport message is ``header(4) | receiver index (4) | counter (8) | AEAD``.
The AEAD nonce is four zero bytes followed by the little-endian counter, which
is exactly bytes 8..16 of the message, so the nonce is a slice, not a packing.
The plaintext is padded with zeros to a multiple of 16 bytes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Any, Final, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from veilgate.protocol.constants import (
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
)
from veilgate.protocol.errors import DecryptError, LocalProtocolError, RemoteProtocolError
from veilgate.protocol.messages import TRANSPORT_HEADER_LEN, TYPE_TRANSPORT
from veilgate.protocol.obfs import HeaderProtection
from veilgate.protocol.replay import ReplayWindow

_HDR = struct.Struct("<BBHIQ")
_NONCE_PREFIX: Final = b"\x00\x00\x00\x00"
_ZEROS: Final = bytes(PADDING_MULTIPLE)


class KeypairState(enum.Enum):
    """What ``Keypair.state`` says a keypair may do now."""

    USABLE = "usable"
    REKEY = "rekey"
    """Still usable, but its send counter asks for a new handshake."""
    EXPIRED = "expired"
    """Refused both ways: too old, or its send counter is exhausted."""


USABLE: Final = KeypairState.USABLE
REKEY: Final = KeypairState.REKEY
EXPIRED: Final = KeypairState.EXPIRED


class Keypair:
    """Transport keys from one handshake, with their counters and replay window (pure Python).

    The cores make keypairs with the ``KeypairFactory`` their driver gives them: this class, or
    ``veilgate.fastpath.keypair.CompiledKeypair``, whose keys live in the compiled data path.
    """

    __slots__ = (
        "_open",
        "_seal",
        "created",
        "final_digest",
        "hp",
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
        self.hp: HeaderProtection | None = None
        self._init_keys(send_key, recv_key)

    def _init_keys(self, send_key: bytes, recv_key: bytes) -> None:
        """The cipher state, the send counter and the replay window."""
        self._seal = ChaCha20Poly1305(send_key).encrypt
        self._open = ChaCha20Poly1305(recv_key).decrypt
        self.send_counter = 0
        self.replay = ReplayWindow()

    def protect(self, header_key: bytes, send_key: bytes, recv_key: bytes) -> None:
        """Turn on header protection (docs/protocol.md 14): every datagram sealed from now on is
        masked, and ``unmask_counter`` reads the counter of a received one."""
        self.hp = HeaderProtection(header_key, send_key, recv_key)

    def unmask_counter(self, data: bytes) -> int:
        """The counter of a protected transport datagram addressed to this keypair."""
        hp = self.hp
        if hp is None:
            raise LocalProtocolError("header protection is off for this keypair")
        return hp.counter(data)

    def state(self, now: float) -> KeypairState:
        """The keypair rule: usable, due for a rekey by its send counter, or expired by age or counter.

        The one place the Python side writes it; the compiled data path has its C twin.
        """
        counter = self.send_counter
        if now - self.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
            return EXPIRED
        if counter >= REKEY_AFTER_MESSAGES:
            return REKEY
        return USABLE

    @property
    def expires_at(self) -> float:
        """When ``state`` turns ``EXPIRED`` by age: the deadline the cores' timers wait for."""
        return self.created + REJECT_AFTER_TIME

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
        datagram = header + self._seal(_NONCE_PREFIX + header[8:], plaintext, None)
        hp = self.hp
        return datagram if hp is None else hp.protect(datagram)

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


KeypairFactory: TypeAlias = Callable[[bytes, bytes, int, int, float, bool], Keypair]
"""Makes a core's keypairs: ``(send_key, recv_key, local_index, remote_index, created, initiator)``.

The driver chooses it (``Keypair``, or the compiled path's ``CompiledKeypair``); the core does not."""
