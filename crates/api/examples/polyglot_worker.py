"""The Python worker of the polyglot benchmark (examples/polyglot.rs): the
W10 `increment` task on queue `w10.increment`, 16 at a time."""

import os

from cairn_client import Worker

w = Worker(os.environ["CAIRN_URL"], key=os.environ["CAIRN_WORKER_KEY"], name="bench",
           concurrency=int(os.environ.get("CONCURRENCY", "16")), poll_wait_ms=5000)


@w.task("w10.increment")
def increment(value):
    value = dict(value or {})
    value["counter"] = int(value.get("counter", 0)) + 1
    return value


w.run()
