"""The ``veilgate`` command: keys, issuer and credentials, gateway, connect, status."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Protocol

import veilgate
from veilgate.cli import status
from veilgate.config import ConfigError, read_key_file, write_key_file
from veilgate.config.keys import decode_key, encode_key
from veilgate.monitor import logs
from veilgate.protocol.crypto import KeyPair


class LogSettings(Protocol):
    log_level: str
    log_format: str


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'90', '90s', '15m', '6h', '2d' -> seconds."""
    text = text.strip()
    unit = 1
    if text and text[-1] in DURATION_UNITS:
        unit = DURATION_UNITS[text[-1]]
        text = text[:-1]
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 15m, 6h, 2d)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return value * unit


def cmd_genkey(args: argparse.Namespace) -> int:
    keypair = KeyPair.generate()
    if args.out:
        write_key_file(Path(args.out), keypair.private_bytes())
        print(encode_key(keypair.public))
    else:
        print(encode_key(keypair.private_bytes()))
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    text = Path(args.key).read_text() if args.key else sys.stdin.read()
    try:
        private = decode_key(text, "private key")
    except ValueError as exc:
        print(f"veilgate pubkey: {exc}", file=sys.stderr)
        return 2
    print(encode_key(KeyPair.from_private_bytes(private).public))
    return 0


def cmd_issuer_init(args: argparse.Namespace) -> int:
    from veilgate.credentials import IssuerKey

    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"veilgate issuer init: {out} exists (use --force to replace it)", file=sys.stderr)
        return 2
    issuer = IssuerKey.generate()
    write_key_file(out, issuer.to_bytes())
    print(encode_key(issuer.public_key().to_bytes()))
    return 0


def cmd_issuer_pubkey(args: argparse.Namespace) -> int:
    from veilgate.credentials import IssuerKey

    issuer = IssuerKey.from_bytes(read_key_file(Path(args.key), "issuer key"))
    print(encode_key(issuer.public_key().to_bytes()))
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    from veilgate.credentials import IssuerKey, issue

    issuer = IssuerKey.from_bytes(read_key_file(Path(args.issuer_key), "issuer key"))
    try:
        client_public = decode_key(args.client_public_key, "client public key")
    except ValueError as exc:
        print(f"veilgate issue: {exc}", file=sys.stderr)
        return 2
    granularity = min(3600, args.lifetime)
    try:
        credential = issue(
            issuer, client_public, time.time(), lifetime=args.lifetime, granularity=granularity
        )
    except ValueError as exc:
        print(f"veilgate issue: {exc}", file=sys.stderr)
        return 2
    text = encode_key(credential.encode()) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def apply_logging(args: argparse.Namespace, config: LogSettings) -> None:
    """The command line's --log-level and --log-format, else the configuration file's."""
    logs.setup(args.log_level or config.log_level, args.log_format or config.log_format)


def cmd_gateway(args: argparse.Namespace) -> int:
    from veilgate.gateway.config import load_gateway_config
    from veilgate.gateway.daemon import run_gateway

    config = load_gateway_config(args.config)
    apply_logging(args, config)
    return run_gateway(config)


def cmd_connect(args: argparse.Namespace) -> int:
    from veilgate.client.config import load_client_config

    config = load_client_config(args.config)
    apply_logging(args, config)
    if config.provider_url:
        from veilgate.client.supervisor import run_provider_client

        return run_provider_client(config)
    from veilgate.client.daemon import run_client

    return run_client(config)


def cmd_provider_init(args: argparse.Namespace) -> int:
    from veilgate.provider.config import load_provider_config
    from veilgate.provider.service import init_identity

    config = load_provider_config(args.config)
    print(init_identity(config.state_dir))
    return 0


def cmd_provider_serve(args: argparse.Namespace) -> int:
    from veilgate.provider.config import load_provider_config
    from veilgate.provider.service import run_provider

    config = load_provider_config(args.config)
    apply_logging(args, config)
    return run_provider(config)


def add_log_options(p: argparse.ArgumentParser, default: object) -> None:
    """--log-level and --log-format, before the command or after a daemon's (the latter wins)."""
    p.add_argument(
        "--log-level", choices=logs.LEVELS, default=default, help="overrides the configuration's log_level"
    )
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=default,
        help="text (default) or json lines; overrides the configuration's log_format",
    )


def cmd_install_units(args: argparse.Namespace) -> int:
    import subprocess

    from veilgate.systemd.units import ensure_user, install_units

    for path in install_units(Path(args.dir)):
        print(f"wrote {path}")
    if args.user:
        try:
            created = ensure_user(args.user)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            print(
                f"veilgate install-units: cannot create user {args.user}: {str(detail).strip()}",
                file=sys.stderr,
            )
            return 1
        print(f"{'created' if created else 'kept the existing'} system user {args.user}")
    print(
        "next: systemctl daemon-reload; systemctl enable --now veilgate-gateway@NAME"
        " (runs /etc/veilgate/NAME.toml)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="veilgate", description="veilgate VPN")
    p.add_argument("--version", action="version", version=f"veilgate {veilgate.__version__}")
    add_log_options(p, None)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("genkey", help="make an X25519 private key")
    g.add_argument("--out", help="write the private key to this file (mode 0600) and print the public key")
    g.set_defaults(func=cmd_genkey)

    g = sub.add_parser("pubkey", help="print the public key of a private key (file or stdin)")
    g.add_argument("--key", help="private key file (default: stdin)")
    g.set_defaults(func=cmd_pubkey)

    issuer = sub.add_parser("issuer", help="the credential issuer's key")
    isub = issuer.add_subparsers(dest="issuer_command", required=True)
    g = isub.add_parser("init", help="make an issuer key; prints its public key for gateways")
    g.add_argument("--out", required=True)
    g.add_argument("--force", action="store_true")
    g.set_defaults(func=cmd_issuer_init)
    g = isub.add_parser("pubkey", help="print an issuer key's public key")
    g.add_argument("--key", required=True)
    g.set_defaults(func=cmd_issuer_pubkey)

    g = sub.add_parser("issue", help="issue an anonymous credential for a client public key")
    g.add_argument("--issuer-key", required=True)
    g.add_argument("--client-public-key", required=True, help="base64 public key from `veilgate genkey`")
    g.add_argument("--lifetime", type=parse_duration, default=6 * 3600, help="e.g. 6h (default)")
    g.add_argument("--out")
    g.set_defaults(func=cmd_issue)

    g = sub.add_parser("gateway", help="run a gateway")
    g.add_argument("--config", required=True)
    add_log_options(g, argparse.SUPPRESS)
    g.set_defaults(func=cmd_gateway)

    g = sub.add_parser("connect", help="connect to a gateway")
    g.add_argument("--config", required=True)
    add_log_options(g, argparse.SUPPRESS)
    g.set_defaults(func=cmd_connect)

    provider = sub.add_parser(
        "provider", help="the provider service (document and blind credential issuance)"
    )
    psub = provider.add_subparsers(dest="provider_command", required=True)
    g = psub.add_parser("init", help="make the provider's key and certificate; prints the fingerprint to pin")
    g.add_argument("--config", required=True)
    g.set_defaults(func=cmd_provider_init)
    g = psub.add_parser("serve", help="run the provider service")
    g.add_argument("--config", required=True)
    add_log_options(g, argparse.SUPPRESS)
    g.set_defaults(func=cmd_provider_serve)

    g = sub.add_parser(
        "install-units", help="write the systemd units (veilgate-{gateway,client,provider}@.service)"
    )
    g.add_argument("--dir", default="/etc/systemd/system", help="where to write them (default: %(default)s)")
    g.add_argument(
        "--user",
        nargs="?",
        const="veilgate",
        help="also create this system user for the daemons to run as (default name: veilgate)",
    )
    g.set_defaults(func=cmd_install_units)

    status.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"veilgate: configuration error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
