"""What several commands share: the log format and its set-up (`run`, `discover`), and
which configuration file the daemon reads (`run`, `plan`)."""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from sidecar.config import Config


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


# C0 and C1 controls, DEL, and what else Python's str.splitlines() breaks on (U+2028/2029).
_UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(character: re.Match[str]) -> str:
    text = character.group()
    if text in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[text]
    return f"\\x{ord(text):02x}" if ord(text) <= 0xFF else f"\\u{ord(text):04x}"


def escape_controls(text: str) -> str:
    """Return `text` with every control character and line break written as an escape
    (`\\n`, `\\x1b`, ...): printable, and on one line."""
    return _UNPRINTABLE.sub(_escaped, text)


class _TextFormatter(logging.Formatter):
    """One record, one line: the message is escaped, since it carries values from labels,
    files and (with the cluster) the network, and a line break in one would forge a record.

    A traceback (our own code's) stays readable on the lines below, each indented, so that
    every line that starts at column 0 is a record of its own.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.split("\n"))


def setup_logging(*, level: str, json_format: bool) -> None:
    """Send logs to stderr, as text (one line per record) or one JSON object per line, at
    `level`."""
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonFormatter() if json_format else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": logging.WARNING}.get(level, level.upper()))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def load_config(path: str | None, overrides: dict[str, object] | None = None) -> Config:
    """Return the daemon's configuration: the file at `path` (it must exist), else the one
    `SIDECAR_CONFIG_FILE` names or `sidecar.toml` (read if it exists), then the environment,
    then `overrides`. Raises `sidecar.config.ConfigError`."""
    from sidecar import config as configuration

    return configuration.load(
        path=path or configuration.config_path(), required=path is not None, overrides=overrides
    )
