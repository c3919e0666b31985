"""Publish three documents (one with a torn page) and wait for each assembled result."""

from tasks import app, split

if __name__ == "__main__":
    keys = {doc: split.delay(doc, pages).get(timeout=60) for doc, pages in
            (("report", 12), ("letter", 3), ("torn", 5))}
    for doc, key in keys.items():
        document = app.fanout_handle(key).get(timeout=60)
        print(f"{doc}: {document.pages} pages, {document.words} words, failed pages {document.failed_pages}")
