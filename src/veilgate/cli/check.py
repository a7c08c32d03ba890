"""``veilgate check``: read a configuration file as the daemon would, and start nothing."""

from __future__ import annotations

from pathlib import Path

from veilgate.config import ConfigError, load_toml

KINDS = ("gateway", "client", "provider")


def config_kind(path: Path) -> str:
    """Which daemon a file configures, from its top-level tables."""
    root = load_toml(path)
    found = [kind for kind in KINDS if kind in root.data]
    if len(found) != 1:
        # A provider file has [provider] and [[gateway]] tables: [provider] decides.
        if "provider" in found:
            return "provider"
        raise ConfigError(
            f"{path}: expected one [gateway], [client] or [provider] table at the top"
            + (f", found {', '.join('[' + k + ']' for k in found)}" if found else ", found none")
        )
    return found[0]


def check_config(path: Path) -> str:
    """Load ``path`` with its daemon's loader (key files read, names resolved); returns its kind."""
    kind = config_kind(path)
    if kind == "gateway":
        from veilgate.gateway.config import load_gateway_config

        load_gateway_config(path)
    elif kind == "client":
        from veilgate.client.config import load_client_config

        load_client_config(path)
    else:
        from veilgate.provider.config import load_provider_config

        load_provider_config(path)
    return kind
