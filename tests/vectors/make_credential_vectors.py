"""Regenerate tests/vectors/credentials.json.

Ed25519 is deterministic and every key comes from a fixed seed, so the output
never changes: ``python tests/vectors/make_credential_vectors.py`` followed by
``git diff`` must show nothing. The file is meant for a second implementation
too: ``cases`` must issue byte for byte, and every entry of ``verify`` must give
its ``expect`` (a refusal reason, or "ok") with only the pinned issuer trusted.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from veilgate.credentials import DEFAULT_MAX_SKEW, Credential, IssuerKey, issue

ISSUER_SEED = bytes(range(32))
OTHER_SEED = bytes(range(32, 64))  # an issuer the verifier does not trust
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19

# Encodings of the 8 Ed25519 points of small order; each accepts forged
# signatures, so none may be loaded as an issuer key. Then aliases of some:
# the sign bit set on x = 0, and non-canonical y >= p.
SMALL_ORDER_KEYS = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0100000000000000000000000000000000000000000000000000000000000080",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    P.to_bytes(32, "little").hex(),
    (P + 1).to_bytes(32, "little").hex(),
]


def _signed(issuer: IssuerKey, cred: Credential) -> Credential:
    return replace(cred, signature=issuer.sign(cred.signed_message()))


def make() -> dict[str, object]:
    issuer = IssuerKey.from_bytes(ISSUER_SEED)
    other = IssuerKey.from_bytes(OTHER_SEED)
    cases: list[dict[str, object]] = []
    issued: list[Credential] = []
    for i, (now, lifetime, granularity) in enumerate(
        [(1_700_000_123, 6 * 3600, 3600), (1_800_000_000, 600, 60)]
    ):
        static = bytes([0x40 + i]) * 32
        cred = issue(issuer, static, now, lifetime=lifetime, granularity=granularity)
        issued.append(cred)
        cases.append(
            {
                "now": now,
                "lifetime": lifetime,
                "granularity": granularity,
                "static_public": static.hex(),
                "not_before": cred.not_before,
                "not_after": cred.not_after,
                "signed_message": cred.signed_message().hex(),
                "credential": cred.encode().hex(),
            }
        )

    base = issued[0]
    data = base.encode()
    static = base.static_public
    nb, na, skew = base.not_before, base.not_after, DEFAULT_MAX_SKEW
    inside = nb + 60
    s = int.from_bytes(base.signature[32:], "little")
    malleated = base.signature[:32] + (s + ED25519_ORDER).to_bytes(32, "little")
    bit_flipped = bytearray(data)
    bit_flipped[-1] ^= 0x01

    def entry(
        name: str, cred: bytes, expect: str, now: int = inside, key: bytes = static
    ) -> dict[str, object]:
        return {
            "name": name,
            "credential": cred.hex(),
            "static_public": key.hex(),
            "now": now,
            "max_skew": skew,
            "expect": expect,
        }

    verify = [
        entry("valid", data, "ok"),
        entry("empty", b"", "malformed"),
        entry("truncated", data[:-1], "malformed"),
        entry("extended", data + b"\x00", "malformed"),
        entry("version 0", b"\x00" + data[1:], "unsupported"),
        entry("version 2", b"\x02" + data[1:], "unsupported"),
        entry("version 2 alone", b"\x02", "unsupported"),
        entry("version 1 alone", b"\x01", "malformed"),
        entry("alg 2 (refused before the length is checked)", data[:1] + b"\x02" + data[2:80], "unsupported"),
        entry("alg 0", data[:1] + b"\x00" + data[2:], "unsupported"),
        entry(
            "empty window, validly signed",
            _signed(issuer, replace(base, not_after=nb)).encode(),
            "malformed",
        ),
        entry("unknown issuer", issue(other, static, inside).encode(), "unknown-issuer"),
        entry(
            "unknown issuer, expired (issuer checked first)",
            issue(other, static, inside).encode(),
            "unknown-issuer",
            now=na + 10 * skew,
        ),
        entry("signature bit flipped", bytes(bit_flipped), "forged"),
        entry("signature S + L (malleated)", base.body() + malleated, "forged"),
        entry("not_after extended, signature kept", replace(base, not_after=na + 3600).encode(), "forged"),
        entry(
            "static key replaced, signature kept (forged, not wrong-key)",
            replace(base, static_public=bytes(32)).encode(),
            "forged",
            key=bytes(32),
        ),
        entry(
            "signed by another key under the trusted key id",
            _signed(other, replace(base, not_after=2**40)).encode(),
            "forged",
        ),
        entry(
            "forged and expired (signature checked first)", bytes(bit_flipped), "forged", now=na + 10 * skew
        ),
        entry("not yet valid, one second short of the skew", data, "not-yet-valid", now=nb - skew - 1),
        entry("valid at not_before - max_skew", data, "ok", now=nb - skew),
        entry("valid one second before not_after + max_skew", data, "ok", now=na + skew - 1),
        entry("expired at not_after + max_skew", data, "expired", now=na + skew),
        entry("wrong static key", data, "wrong-key", key=bytes([0x41]) * 32),
        entry(
            "expired and wrong static key (window checked first)",
            data,
            "expired",
            now=na + skew,
            key=bytes([0x41]) * 32,
        ),
    ]
    return {
        "description": "veilgate credential v1, see docs/credentials.md; made by make_credential_vectors.py",
        "issuer_seed": ISSUER_SEED.hex(),
        "issuer_public": issuer.public_key().to_bytes().hex(),
        "key_id": issuer.key_id.hex(),
        "cases": cases,
        "verify": verify,
        "small_order_issuer_keys": SMALL_ORDER_KEYS,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("credentials.json")
    out.write_text(json.dumps(make(), indent=2) + "\n")
    print(f"wrote {out}")
