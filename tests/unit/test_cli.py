"""The ``veilgate`` command: every subcommand answers a typical mistake with one line and no traceback,
``check`` validates any configuration, and the completion script and manual page come from the parser."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from veilgate.cli.main import build_parser
from veilgate.config import write_key_file
from veilgate.config.keys import encode_key
from veilgate.credentials import IssuerKey
from veilgate.protocol.crypto import KeyPair


def veilgate(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veilgate", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Good keys and configurations of each kind, and bad ones to spoil them with."""
    gateway = KeyPair.generate()
    issuer = IssuerKey.generate()
    write_key_file(tmp_path / "gw.key", gateway.private_bytes())
    write_key_file(tmp_path / "issuer.key", issuer.to_bytes())
    issuer_public = encode_key(issuer.public_key().to_bytes())
    (tmp_path / "gateway.toml").write_text(
        f'[gateway]\nprivate_key_file = "gw.key"\n[credentials]\nissuer_public_keys = ["{issuer_public}"]\n'
    )
    (tmp_path / "client.toml").write_text(
        f'[client]\ngateway_host = "192.0.2.7"\ngateway_public_key = "{encode_key(gateway.public)}"\n'
        'private_key_file = "gw.key"\ncredential_file = "c.cred"\n'
    )
    (tmp_path / "c.cred").write_text(encode_key(b"x" * 122) + "\n")
    (tmp_path / "provider.toml").write_text(
        '[provider]\nname = "p"\nstate_dir = "state"\n'
        f'[[gateway]]\nname = "g"\nhost = "localhost"\npublic_key = "{encode_key(gateway.public)}"\n'
    )
    (tmp_path / "not-a-key").write_text("hello\n")
    return tmp_path


BAD_GATEWAY = '[gateway]\nprivate_key_file = "gw.key"\nlisten = "eth0"\n[credentials]\n'


# Each subcommand with a typical mistake: (arguments, standard input, a file to write first, what the
# one line must say).
MISTAKES = [
    (["genkey", "--out", "gw.key"], "", None, "gw.key exists (use --force"),
    (["pubkey", "--key", "absent.key"], "", None, "absent.key: cannot read the private key"),
    (["pubkey"], "not a key\n", None, "not base64"),
    (["issuer", "init", "--out", "issuer.key"], "", None, "issuer.key exists (use --force"),
    (["issuer", "pubkey", "--key", "not-a-key"], "", None, "not-a-key: issuer key: not base64"),
    (["issue", "--issuer-key", "absent.key", "--client-public-key", "x"], "", None, "absent.key"),
    (["issue", "--issuer-key", "issuer.key", "--client-public-key", "x"], "", None, "client public key"),
    (
        ["issue", "--issuer-key", "issuer.key", "--client-public-key", "x", "--lifetime", "soon"],
        "",
        None,
        "soon",
    ),
    (["gateway", "--config", "absent.toml"], "", None, "absent.toml: no such file"),
    (["gateway", "--config", "bad.toml"], "", BAD_GATEWAY, "bad.toml: gateway.listen: expected an IPv4"),
    (["connect", "--config", "bad.toml"], "", "[client]\ngateway_host = 7\n", "client.gateway_host"),
    (["provider", "init", "--config", "bad.toml"], "", "[provider]\n", "provider.name: missing"),
    (["provider", "serve", "--config", "bad.toml"], "", "[provider\n", "not valid TOML"),
    (["status", "--socket", "absent.sock"], "", None, "absent.sock: No such file"),
    (["check", "--config", "bad.toml"], "", "[nothing]\n", "one [gateway], [client] or [provider] table"),
    (["check", "--config", "."], "", None, "cannot read"),
    (["install-units", "--dir", "not-a-key"], "", None, "not-a-key: File exists"),
    (["completion", "fish"], "", None, "invalid choice: 'fish'"),
    (["issuer"], "", None, "required: issuer_command"),
    (
        ["tls-cert", "--cert", "gw.key", "--key", "tls.key", "--name", "www.example.org"],
        "",
        None,
        "gw.key exists",
    ),
    (["tls-cert", "--cert", "gw.key", "--key", "tls.key", "--pin-only"], "", None, "not a readable PEM"),
]


@pytest.mark.parametrize(("args", "stdin", "bad", "says"), MISTAKES, ids=[" ".join(m[0]) for m in MISTAKES])
def test_every_subcommand_answers_a_mistake_with_one_line(
    work: Path, args: list[str], stdin: str, bad: str | None, says: str
) -> None:
    if bad is not None:
        (work / "bad.toml").write_text(bad)
    result = veilgate(*args, cwd=work, stdin=stdin)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("veilgate") and says in lines[0], lines[0]


def test_every_subcommand_is_in_the_mistakes_above() -> None:
    tried = {m[0][0] for m in MISTAKES} | {" ".join(m[0][:2]) for m in MISTAKES}

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    for name, sub in subcommands(build_parser()).items():
        names = [f"{name} {n}" for n in subcommands(sub)] or [name]
        assert set(names) <= tried, f"no mistake tried for {set(names) - tried}"


def test_genkey_replaces_a_file_only_with_force(work: Path) -> None:
    before = (work / "gw.key").read_text()
    assert veilgate("genkey", "--out", "gw.key", cwd=work).returncode == 2
    assert (work / "gw.key").read_text() == before
    result = veilgate("genkey", "--out", "gw.key", "--force", cwd=work)
    assert result.returncode == 0 and (work / "gw.key").read_text() != before
    assert veilgate("pubkey", "--key", "gw.key", cwd=work).stdout == result.stdout


@pytest.mark.parametrize("kind", ["gateway", "client", "provider"])
def test_check_names_the_kind_of_a_good_file(work: Path, kind: str) -> None:
    result = veilgate("check", "--config", f"{kind}.toml", cwd=work)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"{kind}.toml: ok ({kind} config)\n"


def test_completion_scripts_parse(tmp_path: Path) -> None:
    bash = veilgate("completion", "bash", cwd=tmp_path)
    assert bash.returncode == 0 and "check" in bash.stdout and "completion" in bash.stdout
    script = tmp_path / "veilgate.bash"
    script.write_text(bash.stdout)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    # Loaded into a shell, it completes the subcommands.
    completed = subprocess.run(
        [
            "bash",
            "-c",
            f'source {script}; COMP_WORDS=(veilgate ch); COMP_CWORD=1; COMP_LINE="veilgate ch"; '
            'COMP_POINT=${#COMP_LINE}; _shtab_veilgate; echo "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.stdout.split() == ["check"], completed.stderr
    zsh = veilgate("completion", "zsh", cwd=tmp_path)
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef veilgate")
    if shutil.which("zsh"):
        (tmp_path / "_veilgate").write_text(zsh.stdout)
        assert subprocess.run(["zsh", "-n", str(tmp_path / "_veilgate")], check=False).returncode == 0


def test_the_manual_page_has_every_subcommand_and_renders(tmp_path: Path) -> None:
    page = tmp_path / "veilgate.1"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from argparse_manpage.cli import main; sys.exit(main())",
            "--module",
            "veilgate.cli.main",
            "--function",
            "build_parser",
            "--project-name",
            "veilgate",
            "--prog",
            "veilgate",
            "--output",
            str(page),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    text = page.read_text()
    assert text.startswith(".TH VEILGATE")
    for command in ("genkey", "pubkey", "issuer init", "issuer pubkey", "issue", "gateway", "connect"):
        assert f"veilgate {command}" in text
    for command in ("provider init", "provider serve", "status", "check", "completion"):
        assert f"veilgate {command}" in text
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed: the page was not rendered")
    rendered = subprocess.run(
        ["groff", "-man", "-Tutf8", "-P-cbou", "-ww", str(page)], capture_output=True, text=True, check=False
    )
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    assert "veilgate check" in rendered.stdout and "SYNOPSIS" in rendered.stdout
