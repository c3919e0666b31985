"""Build the self-contained protocol scripts in omniq_tasks/lua/ from lua_src/.

Redis cannot `require` shared Lua, and an OmniQ SDK loads each script file as it
is, so the shared helpers in lua_src/include/ are pasted where a source says
``--@include <name>``. Run ``python tools/build_lua.py`` after editing lua_src/;
``python tools/build_lua.py --check`` (used by the tests) fails when the shipped
files are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT / "lua_src"
INCLUDE_DIR = SOURCE_DIR / "include"
OUTPUT_DIR = ROOT / "omniq_tasks" / "lua"
INCLUDE_MARK = "--@include "


def render(source: Path) -> str:
    """Return the self-contained text of one script source."""
    lines = source.read_text(encoding="utf-8").splitlines()
    header = []
    while lines and lines[0].startswith("--") and not lines[0].startswith(INCLUDE_MARK):
        header.append(lines.pop(0))
    out = header + [
        f"-- Generated from lua_src/{source.name} by tools/build_lua.py: edit the source, not this file.",
        "",
    ]
    for line in lines:
        if line.startswith(INCLUDE_MARK):
            name = line[len(INCLUDE_MARK):].strip()
            out.extend((INCLUDE_DIR / f"{name}.lua").read_text(encoding="utf-8").splitlines())
            out.append("")
        else:
            out.append(line)
    return "\n".join(out).rstrip("\n") + "\n"


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
