"""A small omniq-tasks app: emails per company, at most two at once per company.

Run a worker:   omniq-tasks worker tasks:app        (from this folder)
Publish jobs:   python publish.py
"""

from __future__ import annotations

import logging
import time

import msgspec

from omniq_tasks import App, JobContext

app = App("emails-demo")  # OMNIQ_TASKS_REDIS_URL, else redis://localhost:6379/0
log = logging.getLogger(__name__)


class Email(msgspec.Struct):
    to: str
    subject: str
    body: str = ""


@app.task(queue="emails", gid="company:{company_id}", group_limit=2, max_attempts=5, backoff_ms=2_000)
def send_email(ctx: JobContext, company_id: int, msg: Email) -> None:
    """Pretend to send one email; FIFO per company, two companies' mails in parallel."""
    time.sleep(0.05)  # the SMTP call
    log.info("company %d: sent %r to %s (attempt %d)", company_id, msg.subject, msg.to, ctx.attempt)


@app.task(queue="emails")
def send_digest(company_ids: list[int]) -> None:
    """Fan-out: one digest email per company."""
    for company_id in company_ids:
        send_email.delay(company_id, Email(to=f"boss@company{company_id}.example", subject="Weekly digest"))
