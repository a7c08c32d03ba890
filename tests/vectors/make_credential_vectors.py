"""Regenerate tests/vectors/credentials.json (Ed25519 is deterministic, so the output never changes)."""

from __future__ import annotations

import json
from pathlib import Path

from veilgate.credentials import IssuerKey, issue


def make() -> dict[str, object]:
    issuer = IssuerKey.from_bytes(bytes(range(32)))
    cases = []
    for i, (now, lifetime, granularity) in enumerate(
        [(1_700_000_123, 6 * 3600, 3600), (1_800_000_000, 600, 60)]
    ):
        static = bytes([0x40 + i]) * 32
        cred = issue(issuer, static, now, lifetime=lifetime, granularity=granularity)
        cases.append(
            {
                "now": now,
                "lifetime": lifetime,
                "granularity": granularity,
                "static_public": static.hex(),
                "credential": cred.encode().hex(),
            }
        )
    return {
        "issuer_seed": bytes(range(32)).hex(),
        "issuer_public": issuer.public_key().to_bytes().hex(),
        "key_id": issuer.key_id.hex(),
        "cases": cases,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("credentials.json")
    out.write_text(json.dumps(make(), indent=2) + "\n")
    print(f"wrote {out}")
