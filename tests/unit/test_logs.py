"""Log lines: level and format from the command line or the configuration, the journal's priority
prefix, JSON lines that carry only the message."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from veilgate.cli.main import apply_logging, build_parser
from veilgate.monitor import logs

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("veilgate")
    levels = root.level, ours.level
    yield
    for handler in [h for h in root.handlers if getattr(h, "_veilgate", False)]:
        root.removeHandler(handler)
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[IO[str]]:
    with (tmp_path / "stderr").open("w+", buffering=1) as f:
        yield f


def journal_of(f: IO[str]) -> dict[str, str]:
    st = os.fstat(f.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def emit(f: IO[str], level: int = logging.WARNING) -> list[str]:
    log = logging.getLogger("veilgate.test")
    log.log(level, "handshake refused: credential %s", "forged")
    f.flush()
    f.seek(0)
    return f.read().splitlines()


def test_priorities_follow_sd_daemon() -> None:
    assert [logs.priority(n) for n in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]
    assert logs.priority(25) == 6 and logs.priority(5) == 7


def test_journal_stream_must_name_this_stream(stream: IO[str], tmp_path: Path) -> None:
    assert logs.under_journal(journal_of(stream), stream)
    with (tmp_path / "other").open("w") as other:
        assert not logs.under_journal(journal_of(other), stream)
    assert not logs.under_journal({}, stream)
    assert not logs.under_journal({"JOURNAL_STREAM": "garbage"}, stream)


def test_text_lines_carry_a_timestamp_off_the_journal(stream: IO[str]) -> None:
    logs.setup("info", "text", environ={}, stream=stream)
    [line] = emit(stream)
    assert TIMESTAMP.match(line)
    assert line.endswith("WARNING veilgate.test: handshake refused: credential forged")


@pytest.mark.parametrize(("level", "prefix"), [(logging.ERROR, "<3>"), (logging.WARNING, "<4>"), (20, "<6>")])
def test_under_the_journal_each_line_has_its_priority_and_no_timestamp(
    stream: IO[str], level: int, prefix: str
) -> None:
    logs.setup("debug", "text", environ=journal_of(stream), stream=stream)
    [line] = emit(stream, level)
    assert line == prefix + "veilgate.test: handshake refused: credential forged"


def test_a_traceback_under_the_journal_keeps_the_priority_on_every_line(stream: IO[str]) -> None:
    logs.setup("info", "text", environ=journal_of(stream), stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("veilgate.test").exception("failed")
    stream.seek(0)
    lines = stream.read().splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)


def test_json_lines_hold_only_time_level_logger_and_message(stream: IO[str]) -> None:
    logs.setup("info", "json", environ={}, stream=stream)
    logging.getLogger("veilgate.test").warning(
        "session ended (%s)", "closed", extra={"source": "192.0.2.1", "key": "secret"}
    )
    stream.seek(0)
    [line] = stream.read().splitlines()
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message"}
    assert entry["level"] == "warning" and entry["logger"] == "veilgate.test"
    assert entry["message"] == "session ended (closed)"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert "192.0.2.1" not in line and "secret" not in line


def test_json_lines_under_the_journal_have_the_priority_and_no_time(stream: IO[str]) -> None:
    logs.setup("info", "json", environ=journal_of(stream), stream=stream)
    [line] = emit(stream, logging.ERROR)
    assert line.startswith("<3>{")
    entry = json.loads(line[3:])
    assert set(entry) == {"level", "logger", "message"} and entry["level"] == "error"


def test_the_level_applies_to_veilgate_and_setup_replaces_its_handler(stream: IO[str]) -> None:
    logs.setup("warning", "text", environ={}, stream=stream)
    logs.setup("warning", "text", environ={}, stream=stream)
    assert emit(stream, logging.INFO) == []
    assert len(emit(stream, logging.WARNING)) == 1  # one handler, not two
    logs.setup("debug", "text", environ={}, stream=stream)
    assert logging.getLogger("veilgate.test").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("aiohttp").isEnabledFor(logging.DEBUG)


class Settings:
    def __init__(self, level: str, fmt: str) -> None:
        self.log_level, self.log_format = level, fmt


@pytest.mark.parametrize(
    ("argv", "level", "fmt"),
    [
        ([], "error", "json"),  # the configuration's
        (["--log-level", "debug"], "debug", "json"),
        (["--log-level", "warning", "--log-format", "text"], "warning", "text"),
    ],
)
@pytest.mark.parametrize("command", [["gateway"], ["connect"], ["provider", "serve"]])
def test_the_command_line_overrides_the_configuration(
    argv: list[str], level: str, fmt: str, command: list[str]
) -> None:
    parser = build_parser()
    for args in (
        parser.parse_args([*argv, *command, "--config", "x.toml"]),  # before the command
        parser.parse_args([*command, "--config", "x.toml", *argv]),  # after it
        parser.parse_args(["--log-level", "info", *command, "--config", "x.toml", *argv]),
    ):
        apply_logging(args, Settings("error", "json"))
        expected = level if argv or args.log_level is None else args.log_level
        assert logging.getLevelName(logging.getLogger("veilgate").level) == expected.upper()
        handler = next(h for h in logging.getLogger().handlers if getattr(h, "_veilgate", False))
        assert isinstance(handler.formatter, logs.JsonFormatter) == (fmt == "json")
