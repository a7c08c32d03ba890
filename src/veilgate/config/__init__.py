"""Configuration files (TOML) and key files, with errors that name the file, the field and the fix."""

from veilgate.config.keys import read_key_file, write_key_file
from veilgate.config.toml import ConfigError, Section, load_toml

__all__ = ["ConfigError", "Section", "load_toml", "read_key_file", "write_key_file"]
