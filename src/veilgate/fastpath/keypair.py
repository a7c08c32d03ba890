"""A keypair whose keys, send counter and replay window live in the compiled data path.

A driver that runs the compiled data path hands ``CompiledKeypair`` to its core as the
``new_keypair`` factory (``protocol.keypair.KeypairFactory``); the core never chooses it itself.
Importable where the module is not built: nothing here touches it until a keypair is made.
"""

from __future__ import annotations

from typing import Final

from veilgate import fastpath
from veilgate.protocol.constants import REJECT_AFTER_MESSAGES
from veilgate.protocol.errors import DecryptError, LocalProtocolError, RemoteProtocolError
from veilgate.protocol.keypair import Keypair
from veilgate.protocol.obfs import counter_key

_REPLAYED: Final = 1
"""What ``Keys.open`` returns for a replayed or too old counter (any other int: a forgery)."""


class CompiledKeypair(Keypair):
    """A ``Keypair`` whose state is a ``fastpath.Keys`` object.

    The compiled loops seal and open with the same ``keys`` object, so packets the Python core
    handles and packets it never sees share one counter and one window.
    """

    __slots__ = ("keys",)

    def _init_keys(self, send_key: bytes, recv_key: bytes) -> None:
        self.keys = fastpath.Keys(send_key, recv_key, self.local_index, self.remote_index, self.created)

    def protect(self, header_key: bytes, send_key: bytes, recv_key: bytes) -> None:
        self.keys.protect(header_key, counter_key(send_key), counter_key(recv_key))

    def unmask_counter(self, data: bytes) -> int:
        counter = self.keys.unmask_counter(data)
        if counter is None:
            raise LocalProtocolError("header protection is off for this keypair")
        return counter

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
