"""Documents split into pages, pages processed in parallel, each document assembled once.

Run a worker:   omniq-tasks worker tasks:app        (from this folder)
Publish:        python publish.py
"""

from __future__ import annotations

import hashlib
import logging

import msgspec

from omniq_tasks import App, ChildResult, JobContext, PermanentError

app = App("documents-demo")  # OMNIQ_TASKS_REDIS_URL, else redis://localhost:6379/0
log = logging.getLogger(__name__)


class PageText(msgspec.Struct):
    page: int
    words: int
    digest: str


class Document(msgspec.Struct):
    doc_id: str
    pages: int
    words: int
    failed_pages: list[int]


@app.task(queue="documents")
def split(ctx: JobContext, doc_id: str, pages: int) -> str:
    """Fan out one job per page; assemble() runs once when every page has ended.

    Without a key, ctx.fanout() uses "<this job's id>.fo0": if this task is retried
    after the fan-out started, the retry starts nothing new.
    """
    handle = ctx.fanout([read_page.s(doc_id, n) for n in range(pages)], then=assemble.s(doc_id))
    log.info("%s: %d pages fanned out as %s", doc_id, pages, handle.key)
    return handle.key


# Pages go to their own queue, at most 3 pages of one document at once (FIFO per document).
@app.task(queue="pages", gid="doc:{doc_id}", group_limit=3, max_attempts=2, backoff_ms=500)
def read_page(doc_id: str, page: int) -> PageText:
    if doc_id == "torn" and page == 2:
        raise PermanentError("page 2 is torn")  # fails for good at once: assemble still runs
    text = f"{doc_id} page {page} " * (page + 1)
    return PageText(page, len(text.split()), hashlib.sha1(text.encode()).hexdigest()[:8])


@app.task(queue="documents")
def assemble(pages: list[ChildResult[PageText]], doc_id: str) -> Document:
    """Gets every page's outcome, in page order: values as PageText, failures with their error."""
    failed = [p.index for p in pages if not p.ok]
    words = sum(p.value.words for p in pages if p.ok and p.value is not None)
    log.info("%s: assembled %d pages (%d words), failed pages %s", doc_id, len(pages), words, failed)
    return Document(doc_id, len(pages), words, failed)
