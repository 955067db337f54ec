"""Training configuration: `default.toml` beside this file, overlaid by a user file and `--set` overrides.

One nested dict {section: {key: value}}; every key a user gives must exist in the defaults (a typo is an error,
never a silently ignored setting) and keep its type.
"""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Iterable, Optional

DEFAULT_CONFIG = Path(__file__).with_name("default.toml")


class ConfigError(ValueError):
    """A configuration file or override names an unknown key or gives a value of the wrong type."""


def _merge(base: dict, overlay: dict, where: str) -> None:
    for key, value in overlay.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a table, got {value!r}")
            _merge(base[key], value, f"{where}.{key}")
            continue
        base[key] = _coerce(base[key], value, f"{where}.{key}")


def _coerce(default, value, where: str):
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, (str, list)) and isinstance(value, type(default)):
        return value
    raise ConfigError(f"{where}: expected a {type(default).__name__} like {default!r}, got {value!r}")


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. coarse.steps=200")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    return key.strip().split("."), value


def preset_path(name: str | Path) -> Path:
    """A config file path as given, or a preset shipped beside the defaults (`quick` -> capture/train/quick.toml)."""
    path = Path(name)
    if path.exists() or len(path.parts) != 1 or path.suffix:
        return path  # a file (or a path to one): never a preset name
    preset = DEFAULT_CONFIG.with_name(f"{name}.toml")
    return preset if preset.is_file() else path


def presets() -> list[str]:
    return sorted(p.stem for p in DEFAULT_CONFIG.parent.glob("*.toml") if p != DEFAULT_CONFIG)


def load_config(path: Optional[str | Path] = None, overrides: Iterable[str] = ()) -> dict:
    """Defaults <- file at `path` (or a preset name) <- overrides ("section.key=value"). Returns a fresh dict."""
    config = tomllib.loads(DEFAULT_CONFIG.read_text())
    if path is not None:
        path = preset_path(path)
        if not path.is_file():
            what = "is a folder, not a TOML file" if path.is_dir() else "no such file"
            raise ConfigError(f"--config {path}: {what} (give a TOML file or a preset: {', '.join(presets())})")
        try:
            _merge(config, tomllib.loads(path.read_text()), str(path))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the training config ({exc})") from None
    for text in overrides:
        keys, value = _parse_override(text)
        nested: dict = value  # type: ignore[assignment]
        for k in reversed(keys):
            nested = {k: nested}
        _merge(config, nested, "--set")
    return copy.deepcopy(config)
