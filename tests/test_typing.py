"""The publishing API is typed: ``mypy --strict`` accepts good calls and reports exactly the bad ones.

tests/typing_examples/task_calls.py marks each line that must fail with
``# E: <code>``; mypy must report those lines with those codes and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = Path("tests") / "typing_examples" / "task_calls.py"
MARKER = re.compile(r"\S.*  # E: ([a-z][a-z-]*(?:, [a-z][a-z-]*)*)")
REPORT = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*?)  \[(?P<code>[a-z-]+)\]$")


def expected_errors() -> dict[int, set[str]]:
    expected: dict[int, set[str]] = {}
    for number, line in enumerate((ROOT / EXAMPLE).read_text().splitlines(), start=1):
        match = MARKER.search(line)
        if match:
            expected[number] = set(match.group(1).split(", "))
    return expected


def run_mypy(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # cwd = the repository, so omniq_tasks is read from source (with its py.typed)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes",
         "--cache-dir", str(tmp_path / "mypy-cache"), str(EXAMPLE)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_mypy_reports_exactly_the_bad_calls(tmp_path: Path) -> None:
    expected = expected_errors()
    assert len(expected) == 3  # one bad call per task kind: plain, JobContext first, async

    result = run_mypy(tmp_path)
    assert result.returncode in (0, 1), f"mypy crashed:\n{result.stdout}\n{result.stderr}"

    reported: dict[int, set[str]] = {}
    messages: dict[int, list[str]] = {}
    for line in result.stdout.splitlines():
        match = REPORT.match(line)
        if match is None:
            continue
        if Path(match["path"]) != EXAMPLE:
            continue  # the package's own strictness is checked elsewhere
        number = int(match["line"])
        reported.setdefault(number, set()).add(match["code"])
        messages.setdefault(number, []).append(match["message"])

    assert reported == expected, f"mypy output:\n{result.stdout}{result.stderr}"

    # the messages say what went wrong, in the task's own terms
    bad_plain, bad_ctx, bad_async = sorted(expected)
    assert any('"delay" of "Task"' in m and 'expected "int"' in m for m in messages[bad_plain])
    assert any('incompatible type "JobContext"; expected "Order"' in m for m in messages[bad_ctx])
    assert any('"url" to "apply_at"' in m and 'expected "str"' in m for m in messages[bad_async])
