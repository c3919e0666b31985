"""Build the self-contained protocol scripts in omniq_tasks/lua/ from lua_src/.

Redis cannot `require` shared Lua, and an OmniQ SDK loads each script file as it
is, so the shared parts in lua_src/include/ are pasted where a source says
``--@include <name>``. Only the ``local function``s a script reaches (from its own
body, through the functions it calls) are pasted: every function costs a closure
on every call of the script. Other top-level lines (constants, state) always go in.

Run ``python tools/build_lua.py`` after editing lua_src/;
``python tools/build_lua.py --check`` (used by the tests) fails when the shipped
files are stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT / "lua_src"
INCLUDE_DIR = SOURCE_DIR / "include"
OUTPUT_DIR = ROOT / "omniq_tasks" / "lua"
INCLUDE_MARK = "--@include "
FUNCTION = re.compile(r"^local function (\w+)\(")


def chunks(lines: list[str]) -> list[tuple[str | None, list[str]]]:
    """Split an include into (function name or None, lines): a function runs from its
    leading comment block to the ``end`` at column 0; everything else is one line each."""
    out: list[tuple[str | None, list[str]]] = []
    pending_comments: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = FUNCTION.match(line)
        if match:
            body = [line]
            i += 1
            while i < len(lines) and lines[i] != "end":
                body.append(lines[i])
                i += 1
            body.append("end")
            out.append((match.group(1), pending_comments + body))
            pending_comments = []
        elif line.startswith("--"):
            pending_comments.append(line)
        else:
            out.append((None, pending_comments + [line]))
            pending_comments = []
        i += 1
    if pending_comments:
        out.append((None, pending_comments))
    return out


def words(lines: list[str]) -> set[str]:
    text = "\n".join(line.split("--", 1)[0] for line in lines)
    return set(re.findall(r"\b\w+\b", text))


def render(source: Path) -> str:
    """Return the self-contained text of one script source."""
    lines = source.read_text(encoding="utf-8").splitlines()
    header = []
    while lines and lines[0].startswith("--") and not lines[0].startswith(INCLUDE_MARK):
        header.append(lines.pop(0))
    included = [line[len(INCLUDE_MARK):].strip() for line in lines if line.startswith(INCLUDE_MARK)]
    body = [line for line in lines if not line.startswith(INCLUDE_MARK)]
    parts = [(name, chunk) for inc in included
             for name, chunk in chunks((INCLUDE_DIR / f"{inc}.lua").read_text(encoding="utf-8").splitlines())]
    functions = {name: chunk for name, chunk in parts if name}
    # Everything that is not a function is always pasted, so what it names is reached too.
    needed: set[str] = set()
    frontier = words(body) | words([line for name, chunk in parts if not name for line in chunk])
    while frontier:
        name = frontier.pop()
        if name in functions and name not in needed:
            needed.add(name)
            frontier |= words(functions[name][1:])
    out = header + [
        f"-- Generated from lua_src/{source.name} by tools/build_lua.py: edit the source, not this file.",
        "",
    ]
    for name, chunk in parts:
        if name is None or name in needed:
            out.extend(chunk)
    out.append("")
    out.extend(body)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip("\n") + "\n"


def build() -> dict[Path, str]:
    """Map every output path to the text it should have."""
    return {OUTPUT_DIR / src.name: render(src) for src in sorted(SOURCE_DIR.glob("*.lua"))}


def main(argv: list[str]) -> int:
    wanted = build()
    if "--check" in argv:
        stale = [p.name for p, text in wanted.items()
                 if not p.exists() or p.read_text(encoding="utf-8") != text]
        extra = [p.name for p in OUTPUT_DIR.glob("*.lua") if p not in wanted]
        if stale or extra:
            print(f"stale: {stale} extra: {extra}; run python tools/build_lua.py")
            return 1
        return 0
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in wanted.items():
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(wanted)} scripts to {OUTPUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
