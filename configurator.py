"""
Settings for the scripts, nanoGPT style: each script keeps its settings as module-level constants and calls
configure(globals(), keys, argv, presets). A preset (--preset NAME: the file config/NAME.py), then a config
file (--config FILE: .json, or a .py of 'key = literal' lines, read without executing anything), then flags
override the constants, in that order. Flags work as --key=value and --key value; each value is checked
against the type of the constant's default. Every setting that ends up other than its constant is printed
once at start, with the constant and where the new value came from, so an edit of a constant that a preset
overrides is never silently without effect. Each call starts from the module's constants as first read, so a
main() run twice in one process (as the tests do) never inherits the first run's flags.
"""

import ast
import math
import os
import sys

from harness.errors import ConfigError, InputError, read_json_object, read_text


TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def parse_value(key, text, default):
    if isinstance(default, bool):
        if str(text).lower() in ("1", "true", "yes"):
            return True
        if str(text).lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"--{key} expects true or false, got {text!r}")
    if isinstance(default, (int, float)):
        try:
            value = ast.literal_eval(str(text))
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            raise ConfigError(f"--{key} expects {TYPE_WORDS[type(default)]}, got {text!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(default, int) and not isinstance(value, int)):
            raise ConfigError(f"--{key} expects {TYPE_WORDS[type(default)]}, got {text!r}")
        return finite(key, type(default)(value))
    return str(text)


def finite(key, value):
    """Numbers must be finite: 1e999 parses as inf, and an inf or nan learning rate trains to NaN silently."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--{key} must be a finite number, got {value}")
    return value


def coerce(key, value, default):
    """A flag's text or a config file's literal, checked against the type of the default."""
    if isinstance(value, str):
        return parse_value(key, value, default)
    if isinstance(default, bool) and isinstance(value, bool):
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return finite(key, float(value))
    if type(default) is int and type(value) is int:
        return value
    raise ConfigError(f"{key} expects {TYPE_WORDS[type(default)]}, got {value!r}")


def parse_args(argv, settings):
    """--key=value and --key value pairs, in order; a bare --flag sets a boolean setting to true."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: flags are --key=value or --key value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = arg[2:], argv[i + 1]
            i += 2
        elif isinstance(settings.get(arg[2:].replace("-", "_")), bool):
            key, value = arg[2:], "true"
            i += 1
        else:
            raise ConfigError(f"--{arg[2:]} needs a value")
        pairs.append((key.replace("-", "_"), value))
    return pairs


def read_config_file(path):
    """[(key, value)] from a .json object or a .py of 'key = literal' lines; every error names the file and
    line."""
    if path.endswith(".json"):
        return list(read_json_object(path, "config file").items())
    text = read_text(path, "config file")
    try:
        body = ast.parse(text).body
    except SyntaxError as e:
        raise InputError(f"{path}:{e.lineno}: {e.msg}") from None
    except (RecursionError, MemoryError):  # the parser recurses once per level of nesting
        raise InputError(f"{path}: nested too deeply to read") from None
    out = []
    for node in body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise InputError(f"{path}:{node.lineno}: only 'key = literal' lines are allowed")
        try:
            out.append((node.targets[0].id, ast.literal_eval(node.value)))
        except (ValueError, RecursionError):
            raise InputError(f"{path}:{node.lineno}: the value of {node.targets[0].id} is not a literal") from None
    return out


PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")  # train.py's presets


def preset_names(folder):
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else []


def configure(settings, keys, argv, presets=None):
    """Override settings[key] for key in keys from --preset (a file of the folder `presets`), --config and
    flags, and print what changed. Returns the final values."""
    flags = parse_args(argv, settings)
    for key, _ in flags:
        if key not in keys:
            raise ConfigError(f"unknown setting --{key}; settings: {', '.join(keys)}")
    constants = settings.setdefault("_constants", {})  # each setting's value when configure first saw it
    for k in keys:
        constants.setdefault(k, settings[k])
    defaults = {k: constants[k] for k in keys}
    settings.update(defaults)  # so a second main() in one process starts from the constants, not the last flags
    layers = []
    preset = dict(flags).get("preset", settings.get("preset", ""))
    if preset:
        if not presets or preset not in preset_names(presets):
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(preset_names(presets) if presets else [])}")
        layers.append((os.path.relpath(os.path.join(presets, f"{preset}.py")), read_config_file(
            os.path.join(presets, f"{preset}.py"))))
    config_path = dict(flags).get("config", settings.get("config", ""))
    if config_path:
        from_file = read_config_file(config_path)
        for key in ("preset", "config"):  # read before the file is: set there, they would be ignored
            if key in dict(from_file):
                raise ConfigError(f"{config_path}: {key!r} cannot be set in a config file (it is read before the "
                                  f"file); pass --{key} on the command line")
        layers.append((config_path, from_file))
    layers.append(("", flags))
    origin = {}
    for source, layer in layers:
        for key, value in layer:
            if key not in keys:
                raise ConfigError(f"{source + ': ' if source else ''}unknown setting {key!r}; settings: {', '.join(keys)}")
            try:
                settings[key] = coerce(key, value, settings[key])
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}" if source else str(e)) from None
            origin[key] = source or "flag"
    announce({k: (settings[k], defaults[k], origin[k]) for k in origin if settings[k] != defaults[k]})
    return {k: settings[k] for k in keys}


def announce(changed):
    """Print each setting that differs from its constant, once (rank 0 only under torchrun)."""
    if changed and os.environ.get("RANK", "0") == "0":
        print("settings other than the script's constants:\n" + "\n".join(
            f"  {k} = {v!r} (default {d!r}; {source})" for k, (v, d, source) in changed.items()), file=sys.stderr)


SEED_RANGE = (0, 2**32 - 1)  # what every generator here takes (numpy's too) without overflowing


def check_ranges(settings, ranges):
    """Raise ConfigError naming the first setting outside its range; ranges maps a key to (low, high),
    both inclusive, None for no bound. Called before anything is loaded, so a nonsense value (a negative
    step count, a rate above 1) never reaches a model."""
    for key, (low, high) in ranges.items():
        value = settings[key]
        if (low is not None and value < low) or (high is not None and value > high):
            want = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
            raise ConfigError(f"--{key}={value} is out of range: it must be {want}")


def setting_keys(settings):
    """The names of a module's settings: its public int, float, bool and str constants."""
    return [k for k, v in settings.items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str)) and not k.isupper()]
