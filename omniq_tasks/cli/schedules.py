"""``omniq-tasks schedules APP``: the app's schedules, their next run and last published tick."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from ..ops.formatting import duration

if TYPE_CHECKING:
    from ..app import App


def _when(ms: int, tz_name: str | None) -> str:
    """``2026-12-01 03:00:00 UTC`` (and the schedule's own zone's clock when it has one)."""
    from zoneinfo import ZoneInfo

    moment = datetime.fromtimestamp(ms / 1000, timezone.utc)
    text = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if tz_name:
        text += moment.astimezone(ZoneInfo(tz_name)).strftime(" (%H:%M %Z)")
    return text


def print_schedules(app: App, console: Console | None = None) -> None:
    """One row per schedule; "now" is the Redis server's clock, as the schedulers see it."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or logged: wide enough that nothing is cut
            console = Console(width=200)
    if not app.schedules:
        console.print(f"app {app.name} has no schedules (@app.periodic, app.add_periodic)")
        return
    now = app.client.server_now_ms()
    table = Table(title=f"schedules of app {app.name}")
    for column in ("schedule", "task", "queue", "when", "catch_up", "next run", "last published"):
        table.add_column(column)
    for schedule in app.schedules.values():
        upcoming = schedule.next_after(now)
        last = app.client.last_tick(schedule.queue, schedule.name)
        table.add_row(
            schedule.name, schedule.task.name, schedule.queue, schedule.describe(), str(schedule.catch_up),
            f"{_when(upcoming, schedule.tz)}, in {duration(upcoming - now)}",
            "never" if last is None else f"{_when(last, schedule.tz)}, {duration(now - last)} ago")
    console.print(table)
