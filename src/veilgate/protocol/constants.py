"""Protocol constants. docs/protocol.md section "Constants" lists them with their rationale."""

from __future__ import annotations

from typing import Final

PROTOCOL_VERSION: Final = 1
NOISE_PROTOCOL_NAME: Final = b"Noise_XKhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s"
PROLOGUE: Final = b"veilgate v1"

LABEL_MAC1: Final = b"veilgate mac1----"
LABEL_COOKIE: Final = b"veilgate cookie--"
LABEL_RESUME: Final = b"veilgate resume v1"

# Data channel limits (WireGuard's values, whitepaper section 6.1).
REKEY_AFTER_MESSAGES: Final = 2**60
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
KEEPALIVE_INTERVAL: Final = 10.0
"""The client sends a keepalive after this long without sending anything."""
PASSIVE_KEEPALIVE: Final = 1.0
"""A side that received data and sent nothing back for this long answers with a keepalive."""
STALL_TIMEOUT: Final = 3.0
"""Client: data sent, nothing authenticated received for this long: the path is stalled."""

HANDSHAKE_RETRY_INITIAL: Final = 1.0
HANDSHAKE_RETRY_MAX: Final = 8.0
CONFIRM_RETRY: Final = 1.0
"""Client: message 3 is sent again at this interval until the gateway confirms the keypair."""

PENDING_HANDSHAKE_TIMEOUT: Final = 10.0
MAX_PENDING_HANDSHAKES: Final = 4096
MAX_CREDENTIAL_KEYS: Final = 8
"""A session stays bound to the credentials of this many of its latest static keys (one per rotation,
so about a week of daily epochs); older credentials have long expired and cannot open a session."""
COOKIE_SECRET_LIFETIME: Final = 120.0
COOKIE_NONCE_LEN: Final = 24
UNDER_LOAD_INITS_PER_SECOND: Final = 512
"""The gateway demands cookies when it sees more handshake initiations per second than this."""
RATELIMIT_PER_SOURCE: Final = 20.0
RATELIMIT_BURST: Final = 5.0
RATELIMIT_TABLE_MAX: Final = 65536

REPLAY_WINDOW: Final = 8192
MAX_QUEUED_PACKETS: Final = 1024
PADDING_MULTIPLE: Final = 16
MAX_PAYLOAD_3: Final = 1024
"""Largest message-3 payload (credential and options) a gateway accepts."""
