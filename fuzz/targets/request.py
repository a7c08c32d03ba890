"""The provider's POST /v1/credential body: parse_credential_request raises only RequestError."""

from __future__ import annotations

from collections.abc import Callable

from veilgate.provider.service import MAX_BLINDED_BYTES, MAX_EPOCH, RequestError, parse_credential_request


def make() -> Callable[[bytes], None]:
    def one(data: bytes) -> None:
        try:
            epoch, blinded, token = parse_credential_request(data)
        except RequestError as exc:
            if not exc.reason:
                raise AssertionError("credential request: refused without a reason") from exc
            return
        if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
            raise AssertionError(f"credential request: epoch {epoch!r} accepted")
        if not isinstance(blinded, bytes) or not 0 < len(blinded) <= MAX_BLINDED_BYTES + 2:
            raise AssertionError(f"credential request: blinded message of {len(blinded)} bytes accepted")
        if token is not None and not isinstance(token, str):
            raise AssertionError("credential request: token is not a string")

    return one
