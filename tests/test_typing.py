"""The publishing API is typed: ``mypy --strict`` accepts good calls and reports exactly the bad ones,
in this repository and in a user's project that only installed omniq-tasks.

tests/typing_examples/task_calls.py marks each line that must fail with
``# E: <code>``; mypy must report those lines with those codes and nothing else.
"""

from __future__ import annotations

import os
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


USER_APP = '''\
import msgspec
from omniq_tasks import App, JobContext

app = App("shop", "redis://127.0.0.1:6399/0")


class Email(msgspec.Struct):
    to: str


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(queue="emails")
def send(ctx: JobContext, company_id: int, msg: Email) -> None: ...


reveal_type(add)
reveal_type(send)
add.delay(1, 2)
send.delay(7, Email(to="a@b.c"))
add.delay(1, "two")
send.delay(7, "a@b.c")
'''


def test_an_app_outside_the_repository_sees_the_installed_types(tmp_path: Path) -> None:
    """As a user's project: mypy in its own folder, no MYPYPATH, omniq_tasks as installed.

    The install (``pip install .`` or the editable ``pip install -e .``, whose .pth
    is a plain path entry) is all mypy needs: no import error, the Task types, and
    the bad ``.delay()`` calls reported.
    """
    project = tmp_path / "user_project"
    project.mkdir()
    (project / "user_app.py").write_text(USER_APP)
    assert ROOT not in project.parents
    env = {key: value for key, value in os.environ.items() if key not in ("MYPYPATH", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes",
         "--cache-dir", str(tmp_path / "mypy-cache"), "user_app.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, f"mypy:\n{out}"
    assert "import-not-found" not in out and "import-untyped" not in out, out

    lines = USER_APP.splitlines()
    where = {text: number for number, text in enumerate(lines, start=1)}
    # the JobContext parameter is stripped; older mypy versions spell "builtins.int"
    notes = {int(m[1]): m[2].replace("builtins.", "") for m in re.finditer(r"^user_app\.py:(\d+): note: Revealed type is \"(.*)\"$",
                                                 result.stdout, re.M)}
    assert notes == {
        where["reveal_type(add)"]: "omniq_tasks.task.Task[[a: int, b: int], int]",
        where["reveal_type(send)"]: "omniq_tasks.task.Task[[company_id: int, msg: user_app.Email], None]",
    }, out
    errors: dict[int, str] = {}
    for line in result.stdout.splitlines():
        match = REPORT.match(line)
        if match is not None:
            assert match["path"] == "user_app.py", line  # nothing reported inside omniq_tasks
            errors[int(match["line"])] = match["code"]
    assert errors == {where['add.delay(1, "two")']: "arg-type", where['send.delay(7, "a@b.c")']: "arg-type"}, out
    assert '"delay" of "Task"' in result.stdout and 'expected "Email"' in result.stdout
