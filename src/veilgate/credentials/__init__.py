"""Anonymous, short-lived client credentials.

The provider's issuer signs a credential binding a client's static public
key to a validity window; a gateway holds only issuer public keys.
"""

from veilgate.credentials.ed25519 import (
    ALG_ED25519,
    DEFAULT_GRANULARITY,
    DEFAULT_LIFETIME,
    DEFAULT_MAX_SKEW,
    ENCODED_LEN,
    Credential,
    CredentialVerifier,
    IssuerKey,
    IssuerPublicKey,
    issue,
    key_id_of,
)

__all__ = [
    "ALG_ED25519",
    "DEFAULT_GRANULARITY",
    "DEFAULT_LIFETIME",
    "DEFAULT_MAX_SKEW",
    "ENCODED_LEN",
    "Credential",
    "CredentialVerifier",
    "IssuerKey",
    "IssuerPublicKey",
    "issue",
    "key_id_of",
]
