"""Typed protocol errors, in the style of h11.

``LocalProtocolError``: this side was asked to do something the protocol does
not allow (a programming or configuration error of the caller).
``RemoteProtocolError``: the peer (or someone on the path) sent something
invalid. Drivers count and drop these; they never end a daemon.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error the protocol core raises."""


class LocalProtocolError(ProtocolError):
    """The local caller broke the protocol's rules."""


class RemoteProtocolError(ProtocolError):
    """Bytes from the network were malformed, unauthentic or unexpected.

    ``reason`` is a short stable token suited to a counter name.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class DecryptError(RemoteProtocolError):
    """An AEAD tag did not verify."""

    def __init__(self, message: str = "authentication failed") -> None:
        super().__init__(message, "decrypt")


class UnsupportedVersionError(RemoteProtocolError):
    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported protocol version {version}", "version")
        self.version = version


class CredentialError(RemoteProtocolError):
    """A credential was refused; ``reason`` says why (never who)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason)
