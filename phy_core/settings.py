"""Settings on three levels: defaults < user-wide < experiment-wide.

- *defaults* come from the code: `Settings(defaults=...)` and plugins calling
  `add_defaults()`. They are never written to disk.
- *user-wide* settings live in `<user_dir>/settings.json` (and, read-only,
  `<user_dir>/settings.toml`; JSON wins on conflicts). The user directory is
  the `PHY_USER_DIR` environment variable if set, else
  `appdirs.user_config_dir('phy')`.
- *experiment-wide* settings live next to the dataset, in
  `<dataset dir>/.phy/settings.json`, once `on_open(path)` was called.

Keys are flat strings; dotted names (`plugins.disabled`) give them structure.
Nested JSON objects / TOML tables are flattened with dots when read, so
`{"plugins": {"disabled": []}}` and `{"plugins.disabled": []}` mean the same.
Files are written flat, with sorted keys.

Settings files are data: they are parsed (`json`, `tomllib`), never executed.
A file that cannot be read or parsed is reported through the `phy.settings`
logger and its level is treated as empty; before `save()` replaces such a
file, it moves it aside so the user's text is never silently destroyed.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import appdirs

from .atomic import atomic_write

try:
    import tomllib
except ImportError:  # Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["Settings"]

logger = logging.getLogger("phy.settings")

SETTINGS_JSON = "settings.json"
SETTINGS_TOML = "settings.toml"
_EXPERIMENT_DIR = ".phy"
_LEVELS = ("experiment", "user")


# Reading
# -----------------------------------------------------------------------------


def _flatten(mapping: Mapping, prefix: str = "", out: dict | None = None) -> dict[str, Any]:
    """Flatten nested mappings into dotted keys (`{'a': {'b': 1}}` -> `{'a.b': 1}`)."""
    out = {} if out is None else out
    for key, value in mapping.items():
        full_key = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            _flatten(value, full_key, out)
        else:
            out[full_key] = value
    return out


class _CorruptFile(Exception):
    """A settings file exists but cannot be used; the message says why."""


def _parse(path: Path) -> dict[str, Any] | None:
    """Return the flattened contents of a settings file, None if there is none.

    Raises
    ------
    _CorruptFile
        If the file exists but is unreadable, invalid, or not a mapping.
    """
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise _CorruptFile(f"it is not valid UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise _CorruptFile(f"it cannot be read ({e.strerror or e})") from e
    if path.suffix == ".toml":
        if tomllib is None:
            raise _CorruptFile("no TOML parser is available (install `tomli`)")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise _CorruptFile(f"it is not valid TOML ({e})") from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _CorruptFile(
                f"it is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
            ) from e
    if not isinstance(data, dict):
        raise _CorruptFile(
            f"its top level must be a mapping of settings, found {type(data).__name__}"
        )
    return _flatten(data)


def _read(path: Path) -> tuple[dict[str, Any], bool]:
    """Read a settings file: (settings, is_corrupt). Never raises."""
    try:
        return _parse(path) or {}, False
    except _CorruptFile as e:
        logger.warning(
            "Ignoring the settings file %s: %s. Its settings are treated as empty; "
            "fix or remove the file.",
            path,
            e,
        )
        return {}, True


# Writing
# -----------------------------------------------------------------------------


def _move_aside(path: Path) -> Path:
    """Rename a corrupt file to `<name>.corrupt-<timestamp>` (never overwriting)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    i = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{i}")
        i += 1
    os.rename(path, target)
    logger.warning(
        "The settings file %s could not be read; it was moved to %s before saving new settings.",
        path,
        target,
    )
    return target




def _check_serializable(key: str, value: Any) -> Any:
    """Return a JSON round-tripped copy of `value`, or raise TypeError naming `key`."""
    try:
        # The copy is what will be read back after a save (tuples become lists),
        # so the in-memory value matches the persisted one, and later mutation
        # of the caller's object does not leak in.
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"The value of setting {key!r} must be JSON-serializable "
            f"(str, int, float, bool, None, list, dict); got {type(value).__name__}: {e}."
        ) from None


def _user_dir_default() -> Path:
    env = os.environ.get("PHY_USER_DIR")
    if env:
        return Path(env).expanduser()
    return Path(appdirs.user_config_dir("phy"))


# Settings
# -----------------------------------------------------------------------------


class Settings:
    """Manage default, user-wide and experiment-wide settings.

    Parameters
    ----------
    defaults : mapping or None
        Default settings (nested mappings are flattened with dots).
    user_dir : str, Path or None
        Directory of the user-wide settings files. Defaults to the
        `PHY_USER_DIR` environment variable, else `appdirs.user_config_dir('phy')`.

    Examples
    --------
    >>> import tempfile
    >>> s = Settings({'plugins': {'disabled': []}}, user_dir=tempfile.mkdtemp())
    >>> s['plugins.disabled']
    []
    >>> s['plugins.disabled'] = ['stats']
    >>> s.get('plugins.disabled'), s.get('missing', 0)
    (['stats'], 0)
    """

    def __init__(self, defaults: Mapping | None = None, user_dir: str | os.PathLike | None = None):
        self._user_dir = Path(user_dir) if user_dir is not None else _user_dir_default()
        self._defaults: dict[str, Any] = {}
        if defaults:
            self.add_defaults(defaults)
        # The TOML file is read-only for phy: it is kept apart from the JSON
        # contents so that saving never copies TOML values into the JSON file
        # (where they would then shadow later edits of the TOML file).
        self._user_toml, _ = _read(self._user_dir / SETTINGS_TOML)
        self._user, user_corrupt = _read(self.user_path)
        self._experiment: dict[str, Any] = {}
        self._experiment_path: Path | None = None
        self._corrupt = {"user": user_corrupt, "experiment": False}
        self._dirty: set[str] = set()

    # Paths
    # -------------------------------------------------------------------------

    @property
    def user_dir(self) -> Path:
        """Directory of the user-wide settings."""
        return self._user_dir

    @property
    def user_path(self) -> Path:
        """Path of the user-wide JSON settings file (the one `save()` writes)."""
        return self._user_dir / SETTINGS_JSON

    @property
    def experiment_path(self) -> Path | None:
        """Path of the experiment-wide settings file, None before `on_open()`."""
        return self._experiment_path

    def on_open(self, path: str | os.PathLike) -> None:
        """Load the experiment-wide settings of the dataset at `path`.

        Parameters
        ----------
        path : str or Path
            The dataset: a directory, or a file whose parent directory holds
            the experiment settings (in `.phy/settings.json`).

        Notes
        -----
        Unsaved experiment-wide changes of a previously opened dataset are
        discarded: call `save()` first.
        """
        path = Path(path)
        dataset_dir = path if path.is_dir() else path.parent
        self._experiment_path = dataset_dir / _EXPERIMENT_DIR / SETTINGS_JSON
        self._experiment, self._corrupt["experiment"] = _read(self._experiment_path)
        self._dirty.discard("experiment")

    # Reading
    # -------------------------------------------------------------------------

    def _layers(self) -> tuple[dict[str, Any], ...]:
        """The levels from highest to lowest precedence."""
        return (self._experiment, self._user, self._user_toml, self._defaults)

    def get(self, key: str, default: Any = None) -> Any:
        """Return a setting's value from the highest level that has it, or `default`."""
        for layer in self._layers():
            if key in layer:
                return layer[key]
        return default

    def __getitem__(self, key: str) -> Any:
        for layer in self._layers():
            if key in layer:
                return layer[key]
        close = difflib.get_close_matches(str(key), self.keys(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"Unknown setting {key!r}: it is in neither the experiment, the user "
            f"nor the default settings.{hint}"
        )

    def __contains__(self, key: object) -> bool:
        return any(key in layer for layer in self._layers())

    def keys(self) -> list[str]:
        """Return the sorted keys of all levels."""
        return sorted(set().union(*self._layers()))

    # Writing
    # -------------------------------------------------------------------------

    def add_defaults(self, defaults: Mapping) -> None:
        """Add default settings (e.g. a plugin's); nested mappings are flattened.

        Defaults never override user or experiment settings, whatever the order.
        """
        if not isinstance(defaults, Mapping):
            raise TypeError(f"Default settings must be a mapping, got {type(defaults).__name__}.")
        for key, value in _flatten(defaults).items():
            self._defaults[key] = _check_serializable(key, value)

    def set(self, key: str, value: Any, level: str | None = None) -> None:
        """Set a setting at one level (in memory; see `save()`).

        Parameters
        ----------
        key : str
            The setting's (dotted) name.
        value : JSON-serializable
            A mapping value is stored as dotted sub-keys (`key.sub`), which
            is how it would read back from a file. Tuples become lists.
        level : str or None
            `'experiment'` or `'user'`. By default, `'experiment'` once a
            dataset was opened with `on_open()`, else `'user'`.

        Raises
        ------
        TypeError
            If the key is not a non-empty string or the value is not
            JSON-serializable.
        ValueError
            If the level is unknown, or `'experiment'` before `on_open()`.
        """
        if not isinstance(key, str) or not key:
            raise TypeError(f"A setting's key must be a non-empty string, got {key!r}.")
        if level is None:
            level = "experiment" if self._experiment_path is not None else "user"
        if level not in _LEVELS:
            raise ValueError(f"Unknown settings level {level!r}: expected one of {_LEVELS}.")
        if level == "experiment" and self._experiment_path is None:
            raise ValueError(
                f"Cannot set {key!r} at the experiment level: no dataset was opened "
                "(call `on_open(path)` first)."
            )
        items = _flatten(value, key) if isinstance(value, Mapping) else {key: value}
        # Validate everything before changing anything.
        items = {k: _check_serializable(k, v) for k, v in items.items()}
        store = self._experiment if level == "experiment" else self._user
        for k, v in items.items():
            if k not in store or store[k] != v:
                store[k] = v
                self._dirty.add(level)

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value)

    def save(self) -> None:
        """Write every level that changed since it was read or saved, atomically.

        A settings file that was found corrupt (or is corrupt now) is first
        moved aside to `settings.json.corrupt-<timestamp>`.
        """
        for level in _LEVELS:
            if level not in self._dirty:
                continue
            path = self.user_path if level == "user" else self._experiment_path
            assert path is not None  # `set` refuses experiment settings before on_open.
            store = self._user if level == "user" else self._experiment
            if path.exists():
                corrupt = self._corrupt[level]
                if not corrupt:
                    try:
                        _parse(path)
                    except _CorruptFile:
                        corrupt = True
                if corrupt:
                    _move_aside(path)
            text = json.dumps(store, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            atomic_write(path, text)
            self._corrupt[level] = False
            self._dirty.discard(level)
            logger.debug("Saved %s settings to %s.", level, path)

    def __repr__(self) -> str:
        return (
            f"<Settings user={str(self.user_path)!r} "
            f"experiment={str(self._experiment_path) if self._experiment_path else None!r}>"
        )
