"""The worker of examples/triage-ticket.yaml: two queue steps done in Python.

    pip install ./clients/python
    CAIRN_URL=http://127.0.0.1:8080 CAIRN_WORKER_KEY=cairn_... python3 examples/workers/triage.py
"""

import logging
import os

from cairn_client import TaskFailed, Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

worker = Worker(
    os.environ.get("CAIRN_URL", "http://127.0.0.1:8080"),
    key=os.environ.get("CAIRN_WORKER_KEY"),
    concurrency=int(os.environ.get("CAIRN_CONCURRENCY", "4")),
)

URGENT = {"fire", "down", "outage", "breach", "urgent"}


@worker.task("triage.clean")
def clean(input, ctx):
    text = " ".join(str(input.get("text", "")).split())
    if not text:
        raise TaskFailed("ticket.empty", "the ticket has no text", retryable=False)
    return {"text": text}


@worker.task("triage.classify")
def classify(input):
    words = input["text"].lower().split()
    priority = "urgent" if URGENT & set(words) else ("normal" if len(words) > 3 else "low")
    return {"priority": priority, "words": len(words)}


if __name__ == "__main__":
    worker.run()
