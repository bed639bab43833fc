"""Cairn's Python client: task workers for `queue` steps, and a small API client.

The protocol both speak is documented in Cairn's docs/api.md ("Task queues").
"""

from ._http import CairnError
from .client import Client, RunFailed
from .worker import TaskContext, TaskFailed, Worker

__all__ = ["CairnError", "Client", "RunFailed", "TaskContext", "TaskFailed", "Worker"]
__version__ = "0.1.0"
