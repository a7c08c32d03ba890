"""Anonymous, short-lived client credentials.

The provider's issuer signs a credential binding a client's static public
key to a validity window; a gateway holds only issuer public keys. The
specification is docs/credentials.md.
"""

from veilgate.credentials.ed25519 import (
    ALG_ED25519,
    DEFAULT_GRANULARITY,
    DEFAULT_LIFETIME,
    DEFAULT_MAX_SKEW,
    ENCODED_LEN,
    KEY_ID_CONTEXT,
    REASONS,
    SIGNING_CONTEXT,
    VERSION,
    Credential,
    CredentialVerifier,
    IssuerKey,
    IssuerPublicKey,
    issue,
    key_id_of,
)
from veilgate.protocol.errors import CredentialError

__all__ = [
    "ALG_ED25519",
    "DEFAULT_GRANULARITY",
    "DEFAULT_LIFETIME",
    "DEFAULT_MAX_SKEW",
    "ENCODED_LEN",
    "KEY_ID_CONTEXT",
    "REASONS",
    "SIGNING_CONTEXT",
    "VERSION",
    "Credential",
    "CredentialError",
    "CredentialVerifier",
    "IssuerKey",
    "IssuerPublicKey",
    "issue",
    "key_id_of",
]
