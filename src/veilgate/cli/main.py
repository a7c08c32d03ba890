"""The ``veilgate`` command: keys, issuer and credentials, gateway, connect, status."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn, Protocol

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
        out = Path(args.out)
        if out.exists() and not args.force:
            print(f"veilgate genkey: {out} exists (use --force to replace it)", file=sys.stderr)
            return 2
        write_key_file(out, keypair.private_bytes())
        print(encode_key(keypair.public))
    else:
        print(encode_key(keypair.private_bytes()))
    return 0


def cmd_pubkey(args: argparse.Namespace) -> int:
    if args.key:
        private = read_key_file(Path(args.key), "private key")
    else:
        try:
            private = decode_key(sys.stdin.read(), "private key on standard input")
        except ValueError as exc:
            print(f"veilgate pubkey: {exc} (make one with `veilgate genkey`)", file=sys.stderr)
            return 2
    print(encode_key(KeyPair.from_private_bytes(private).public))
    return 0


def cmd_tls_cert(args: argparse.Namespace) -> int:
    """A self-signed certificate for the gateway's TLS carrier; prints the name and pin for clients."""
    from veilgate.transport.tls import make_certificate, pem_pin

    cert, key = Path(args.cert), Path(args.key)
    if args.pin_only:
        try:
            print(f'tls_pin = "{pem_pin(cert.read_bytes())}"')
        except (OSError, ValueError) as exc:
            print(f"veilgate tls-cert: {cert}: not a readable PEM certificate ({exc})", file=sys.stderr)
            return 2
        return 0
    if args.name is None:
        print("veilgate tls-cert: give --name (the DNS name the certificate is for)", file=sys.stderr)
        return 2
    for out in (cert, key):
        if out.exists() and not args.force:
            print(f"veilgate tls-cert: {out} exists (use --force to replace it)", file=sys.stderr)
            return 2
    cert_pem, key_pem = make_certificate(args.name)
    key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    cert.write_bytes(cert_pem)
    print(f'tls_name = "{args.name}"')
    print(f'tls_pin = "{pem_pin(cert_pem)}"')
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


def cmd_check(args: argparse.Namespace) -> int:
    from veilgate.cli.check import check_config

    kind = check_config(Path(args.config))
    print(f"{args.config}: ok ({kind} config)")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


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


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _file(action: argparse.Action) -> argparse.Action:
    """Shell completion offers file names for this option."""
    action.complete = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}  # type: ignore[attr-defined]
    return action


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
    """The whole command line (also read by the shell completion and the manual page)."""
    p = _Parser(
        prog="veilgate",
        description="veilgate VPN: keys and credentials, the gateway, the client and the provider service",
    )
    p.add_argument("--version", action="version", version=f"veilgate {veilgate.__version__}")
    add_log_options(p, None)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("genkey", help="make an X25519 private key")
    _file(
        g.add_argument(
            "--out", help="write the private key to this file (mode 0600) and print the public key"
        )
    )
    g.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    g.set_defaults(func=cmd_genkey)

    g = sub.add_parser("pubkey", help="print the public key of a private key (file or stdin)")
    _file(g.add_argument("--key", help="private key file (default: stdin)"))
    g.set_defaults(func=cmd_pubkey)

    g = sub.add_parser(
        "tls-cert",
        help="make a self-signed certificate for the gateway's TLS carrier; prints tls_name and tls_pin",
    )
    g.add_argument("--name", help="the DNS name the certificate is for (the clients' SNI)")
    _file(g.add_argument("--cert", required=True, help="the certificate file to write (PEM)"))
    _file(g.add_argument("--key", required=True, help="the private key file to write (PEM, mode 0600)"))
    g.add_argument("--force", action="store_true", help="replace the files if they exist")
    g.add_argument(
        "--pin-only", action="store_true", help="print the pin of the existing --cert and write nothing"
    )
    g.set_defaults(func=cmd_tls_cert)

    issuer = sub.add_parser("issuer", help="the credential issuer's key")
    isub = issuer.add_subparsers(dest="issuer_command", required=True)
    g = isub.add_parser("init", help="make an issuer key; prints its public key for gateways")
    _file(g.add_argument("--out", required=True, help="the issuer key file to write (mode 0600)"))
    g.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    g.set_defaults(func=cmd_issuer_init)
    g = isub.add_parser("pubkey", help="print an issuer key's public key")
    _file(g.add_argument("--key", required=True, help="the issuer key file"))
    g.set_defaults(func=cmd_issuer_pubkey)

    g = sub.add_parser("issue", help="issue an anonymous credential for a client public key")
    _file(g.add_argument("--issuer-key", required=True, help="the issuer key file"))
    g.add_argument("--client-public-key", required=True, help="base64 public key from `veilgate genkey`")
    g.add_argument("--lifetime", type=parse_duration, default=6 * 3600, help="e.g. 6h (default)")
    _file(g.add_argument("--out", help="write the credential to this file (default: stdout)"))
    g.set_defaults(func=cmd_issue)

    g = sub.add_parser("gateway", help="run a gateway")
    _file(g.add_argument("--config", required=True, help="the configuration file (TOML)"))
    add_log_options(g, argparse.SUPPRESS)
    g.set_defaults(func=cmd_gateway)

    g = sub.add_parser("connect", help="connect to a gateway")
    _file(g.add_argument("--config", required=True, help="the configuration file (TOML)"))
    add_log_options(g, argparse.SUPPRESS)
    g.set_defaults(func=cmd_connect)

    provider = sub.add_parser(
        "provider", help="the provider service (document and blind credential issuance)"
    )
    psub = provider.add_subparsers(dest="provider_command", required=True)
    g = psub.add_parser("init", help="make the provider's key and certificate; prints the fingerprint to pin")
    _file(g.add_argument("--config", required=True, help="the configuration file (TOML)"))
    g.set_defaults(func=cmd_provider_init)
    g = psub.add_parser("serve", help="run the provider service")
    _file(g.add_argument("--config", required=True, help="the configuration file (TOML)"))
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

    g = sub.add_parser("check", help="check a configuration file (gateway, client or provider) and exit")
    _file(g.add_argument("--config", required=True, help="the configuration file (TOML)"))
    g.set_defaults(func=cmd_check)

    g = sub.add_parser("completion", help="print a shell completion script")
    g.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete for")
    g.set_defaults(func=cmd_completion)
    return p


def _describe(exc: BaseException) -> str:
    """One line for an error a person can act on."""
    if isinstance(exc, ConfigError):
        return f"configuration error: {exc}"
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.filename:
            text = f"{exc.filename}: {text}"
        hint = {
            errno.EPERM: "run as root (network devices and firewall rules need CAP_NET_ADMIN)",
            errno.EACCES: "run as root, or check the file's permissions",
            errno.EADDRINUSE: "another process holds it: stop that process or choose another port",
            errno.EADDRNOTAVAIL: "the address is not on this machine: check listen / listen6",
            errno.ENOENT: "check the path",
            errno.EISDIR: "give a file, not a folder",
        }.get(exc.errno or 0)
        return f"{text} ({hint})" if hint else text
    return str(exc) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    name = " ".join(
        part
        for part in (
            args.command,
            getattr(args, "issuer_command", None),
            getattr(args, "provider_command", None),
        )
        if part
    )
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise  # a bug: the traceback is what is needed
        logging.getLogger("veilgate").debug("%s failed", name, exc_info=True)
        print(f"veilgate {name}: {_describe(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError | ValueError) else 1
    return code


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that come from the input or the machine, not from a bug: shown as one line.

    The firewall's and netlink's errors count when their module was loaded (only then can they
    have been raised; importing netlink costs a tenth of a second)."""
    errors: list[type[Exception]] = [ConfigError, OSError, ValueError]
    for module, name in (("veilgate.netfilter.nft", "NftError"), ("veilgate.tun.netlink", "RouteError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
