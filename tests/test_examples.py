"""The examples in examples/ run as their READMEs say, on a real redis-server and a real CLI worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from cli_worker import CliWorker
from redis_server import RedisServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_documents_example_assembles_each_document_once(redis_server: RedisServer, r: redis.Redis,
                                                        tmp_path: Path) -> None:
    folder = EXAMPLES / "documents"
    worker = CliWorker(folder, redis_server.url, "tasks:app", ["--poll-interval", "0.2"], tmp_path / "worker.log",
                       ready_text="worker for app documents-demo").wait_ready(20)
    try:
        done = subprocess.run([sys.executable, "publish.py"], cwd=folder, capture_output=True, text=True, timeout=90,
                              env={**os.environ, "OMNIQ_TASKS_REDIS_URL": redis_server.url})
    finally:
        worker.kill()
    assert done.returncode == 0, done.stderr[-3000:] + worker.log()[-3000:]
    # the README's expected output, line for line
    readme = (folder / "README.md").read_text()
    for line in done.stdout.splitlines():
        assert f"    {line}\n" in readme, line
    assert len(done.stdout.splitlines()) == 3
    assembled = [line for line in worker.log().splitlines() if "assembled" in line]
    assert len(assembled) == 3, worker.log()[-3000:]  # each document's callback ran once
    assert "torn: assembled 5 pages (36 words), failed pages [2]" in worker.log()
