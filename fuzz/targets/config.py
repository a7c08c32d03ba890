"""The TOML configuration loaders on arbitrary file contents: only ConfigError may escape.

Each input is written as a configuration file next to valid key, credential and token files
(so that seeds referring to them by relative path load), then load_toml and the gateway,
client and provider loaders read it.
"""

from __future__ import annotations

import base64
import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import CLIENT_KEY, CREDENTIAL, GATEWAY_KEY

from veilgate.client.config import load_client_config
from veilgate.config import ConfigError, load_toml
from veilgate.gateway.config import load_gateway_config
from veilgate.provider.config import load_provider_config

LOADERS = (load_toml, load_gateway_config, load_client_config, load_provider_config)


def make() -> Callable[[bytes], None]:
    folder = Path(tempfile.mkdtemp(prefix="veilgate-fuzz-config-"))
    (folder / "gateway.key").write_text(base64.b64encode(GATEWAY_KEY.private_bytes()).decode() + "\n")
    (folder / "client.key").write_text(base64.b64encode(CLIENT_KEY.private_bytes()).decode() + "\n")
    (folder / "credential").write_text(base64.b64encode(CREDENTIAL).decode() + "\n")
    (folder / "tokens.txt").write_text("# invite tokens\ntoken-one\ntoken-two\n")
    path = folder / "config.toml"

    def one(data: bytes) -> None:
        path.write_bytes(data)
        for load in LOADERS:
            with contextlib.suppress(ConfigError):
                load(path)

    return one
