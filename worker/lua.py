"""The fleet's Lua scripts, read from the `.lua` files beside the modules that run them.

A file names another path in an include line, `--! include worker/now.lua`, where that file's
text is to go; a file included twice in one script goes in once, at its first include. Paths
start with the top package's name, as in the repository, and are read with importlib.resources,
so an installed package (a wheel, an image) finds them as a checkout does. A file or an include
that does not exist raises LuaFileMissing when the module that loads it is imported.

A script takes its keys through KEYS and its arguments by name: ARGV[1] is one JSON table built by
`named()` and read as `local a = cjson.decode(ARGV[1])`. A large opaque payload that the script
stores or forwards as it is (a reply's envelope) may follow as ARGV[2], so it is not escaped twice.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

INCLUDE = "--! include "

loaded: set[str] = set()  # every path read so far, includes too (tests/worker/test_lua_files.py)


class LuaFileMissing(FileNotFoundError):
    """A Lua file, or a file one of them includes, is not in its package."""


def named(**fields: Any) -> str:
    """A script's named arguments as the one JSON table it reads with `cjson.decode(ARGV[1])`.

    None is refused: cjson decodes JSON null to `cjson.null`, which is truthy in Lua, so a script
    would take a missing value for a present one; pass '' (or leave the field out) instead. Values
    that a script writes into Redis as they are go as strings, because Redis turns a Lua number
    into text with its own float format.
    """
    missing = [name for name, value in fields.items() if value is None]
    if missing:
        raise ValueError(f"Lua arguments cannot be None: {', '.join(missing)}")
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


def load(path: str) -> str:
    """The text of the Lua file at `path` (`worker/run/finish.lua`), its includes expanded."""
    return _expand(path, set(), ())


def _expand(path: str, seen: set[str], via: tuple[str, ...]) -> str:
    seen.add(path)
    out = []
    for line in _read(path, via).splitlines(keepends=True):
        if not line.startswith(INCLUDE):
            out.append(line)
            continue
        included = line[len(INCLUDE) :].strip()
        if included in via or included == path:
            raise ValueError(f"{path} includes {included}, which includes {path}")
        if included not in seen:
            text = _expand(included, seen, (*via, path))
            out.append(text if text.endswith("\n") else text + "\n")
    return "".join(out)


def _read(path: str, via: tuple[str, ...]) -> str:
    package, _, name = path.partition("/")
    where = f" (included by {' -> '.join(via)})" if via else ""
    if not package or not name.endswith(".lua"):
        raise LuaFileMissing(f"{path!r} is not a path like 'worker/run/finish.lua'{where}")
    resource = files(package)
    for part in name.split("/"):
        resource = resource.joinpath(part)
    if not resource.is_file():
        raise LuaFileMissing(f"no Lua file {path}{where}")
    loaded.add(path)
    return resource.read_text(encoding="utf-8")
