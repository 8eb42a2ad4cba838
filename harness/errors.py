"""
The project's errors and the readers of users' files: every mistake a user can make is one of these
classes, and every script's __main__ (harness/runtime.run_main) prints it as one line naming the file, line,
flag or key, and what to do, never as a traceback.

  ConfigError      a flag or setting (exit code 2)
    InputError     a file the user pointed at is malformed (names file and line)
      MissingInput     ... does not exist
      MismatchedInput  ... holds tensors that do not fit the model
  RunError         the run cannot go on: diverged, disk full, a damaged state, a stalled rank (exit code 1)
"""

import json
import os


class ConfigError(ValueError):
    """A user's mistake in the flags or settings: reported as one line, exit code 2."""


class InputError(ConfigError):
    """A file the user pointed at (data, checkpoint, config) is missing or malformed; the message names it."""


class MissingInput(InputError, FileNotFoundError):
    """A file or folder the user pointed at does not exist."""


class MismatchedInput(InputError, KeyError):
    """A checkpoint or adapter file whose tensors do not fit the model."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RunError(RuntimeError):
    """The run cannot go on (diverged, disk full, a damaged state, a stalled rank): printed as one line by
    the scripts' __main__, exit code 1."""


def read_text(path, what="file"):
    """A user's text file as a str: a missing file or bytes that are not UTF-8 are InputErrors naming the
    file (and the line of the first bad byte)."""
    if not os.path.isfile(path):
        raise MissingInput(f"missing {what} {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x})") from None


def parse_json(text, path, line=None):
    """json.loads(text); malformed text is an InputError naming the file and line (`line`: the text's line
    in a JSONL file, else the decoder's)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{line or e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:  # the decoder recurses once per level
        raise InputError(f"{path}{f':{line}' if line else ''}: JSON nested too deeply to read") from None


def read_json_object(path, what="file"):
    """A user's JSON file holding one object, as a dict; every error names the file (and line)."""
    value = parse_json(read_text(path, what), path)
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, got a {type(value).__name__}")
    return value
