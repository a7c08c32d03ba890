"""parse_credential_request: the provider's credential request body parser is total on any bytes."""

from __future__ import annotations

import base64
import json
import random

import pytest

from veilgate.provider.service import RequestError, parse_credential_request


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


GOOD_BLINDED = base64.b64encode(bytes(range(256))).decode()


def test_well_formed_requests() -> None:
    assert parse_credential_request(body(epoch=7, blinded=GOOD_BLINDED)) == (7, bytes(range(256)), None)
    assert parse_credential_request(body(epoch=0, blinded="AA==", token="t")) == (0, b"\0", "t")
    assert parse_credential_request(body(epoch=2**64 - 1, blinded="AA==", token=None))[0] == 2**64 - 1


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"{", "not JSON"),
        (b"[" * 100_000, "not JSON"),  # nesting deeper than the recursion limit
        (b'{"epoch": ' + b"9" * 5000 + b', "blinded": "AA=="}', "not JSON"),  # over int digit limit
        (b"[]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (body(blinded="AA=="), "missing epoch"),
        (body(epoch="1", blinded="AA=="), "epoch is not an integer"),
        (body(epoch=1.0, blinded="AA=="), "epoch is not an integer"),
        (body(epoch=True, blinded="AA=="), "epoch is not an integer"),
        (b'{"epoch": 1e999, "blinded": "AA=="}', "epoch is not an integer"),
        (b'{"epoch": NaN, "blinded": "AA=="}', "epoch is not an integer"),
        (body(epoch=-1, blinded="AA=="), "epoch out of range"),
        (body(epoch=2**64, blinded="AA=="), "epoch out of range"),
        (body(epoch=10**300, blinded="AA=="), "epoch out of range"),
        (body(epoch=1), "missing blinded"),
        (body(epoch=1, blinded=5), "blinded is not a string"),
        (body(epoch=1, blinded=["AA=="]), "blinded is not a string"),
        (body(epoch=1, blinded="A"), "blinded is not base64"),
        (body(epoch=1, blinded="AA==\n"), "blinded is not base64"),
        (body(epoch=1, blinded="é"), "blinded is not base64"),
        (b'{"epoch": 1, "blinded": "\\ud800"}', "blinded is not base64"),
        (body(epoch=1, blinded=""), "blinded is empty"),
        (body(epoch=1, blinded="A" * 100_000), "blinded is too long"),
        (body(epoch=1, blinded="AA==", token=5), "token is not a string"),
        (body(epoch=1, blinded="AA==", token={"a": 1}), "token is not a string"),
        (body(epoch=1, blinded="AA==", token="x" * 5000), "token is too long"),
    ],
)
def test_malformed_requests_name_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_credential_request(raw)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_random_bytes_and_mutations_raise_only_request_error() -> None:
    rng = random.Random(1234)
    seeds = [body(epoch=3, blinded=GOOD_BLINDED, token="tok"), body(epoch=3, blinded="AA==")]
    for _ in range(3000):
        if rng.random() < 0.3:
            raw = rng.randbytes(rng.randrange(64))
        else:
            buf = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                i = rng.randrange(len(buf))
                buf[i] = rng.choice(b'{}[]",:0123456789-eE.\\ntu\xff' + bytes([rng.randrange(256)]))
            raw = bytes(buf)
        try:
            epoch, blinded, token = parse_credential_request(raw)
        except RequestError as exc:
            assert exc.reason
            continue
        assert isinstance(epoch, int) and 0 <= epoch < 2**64
        assert isinstance(blinded, bytes) and blinded
        assert token is None or isinstance(token, str)
