"""A small client of Cairn's HTTP API: publish, start and wait, answer people's steps."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any, Dict, List, Optional

from ._http import CairnError, Transport


class RunFailed(Exception):
    """The run ended without an output (failed or cancelled); ``run`` is its view."""

    def __init__(self, run: Dict[str, Any]) -> None:
        err = run.get("error") or {}
        super().__init__(f"run {run.get('run_id')} {run.get('status')}: {err.get('kind', '')} {err.get('message', '')}".strip())
        self.run = run


class Client:
    """Calls Cairn's API with one key (``CAIRN_KEY``-style ``cairn_…``)."""

    def __init__(self, url: str = "http://127.0.0.1:8080", key: Optional[str] = None, timeout: float = 30.0) -> None:
        self.http = Transport(url, key, timeout)

    def publish(self, yaml_text: str) -> Dict[str, Any]:
        """Publishes a workflow definition (a new workflow, or a new version of one)."""
        try:
            return self.http.request("POST", "/workflows", raw=yaml_text.encode(), content_type="application/yaml")
        except CairnError as e:
            if e.code != "workflow-exists":
                raise
            name = _name_of(yaml_text)
            return self.http.request(
                "POST", f"/workflows/{_q(name)}/versions", raw=yaml_text.encode(), content_type="application/yaml"
            )

    def start(self, workflow: str, inputs: Optional[Dict[str, Any]] = None, *, idempotency_key: Optional[str] = None,
              version: Optional[int] = None) -> str:
        """Starts a run; returns its id. The same ``idempotency_key`` gives the same run."""
        body: Dict[str, Any] = {"workflow": workflow, "inputs": inputs or {}}
        if version is not None:
            body["version"] = version
        headers = {"idempotency-key": idempotency_key} if idempotency_key else None
        return self.http.request("POST", "/runs", body, headers=headers)["run_id"]

    def get(self, run_id: str) -> Dict[str, Any]:
        """The run as it is now."""
        return self.http.request("GET", f"/runs/{_q(run_id)}")

    def wait(self, run_id: str, timeout: float = 60.0) -> Dict[str, Any]:
        """Waits until the run ends (or ``timeout`` seconds pass) and returns its view."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            secs = max(1, min(25, int(left)))
            run = self.http.request("GET", f"/runs/{_q(run_id)}?wait={secs}", timeout=secs + 10)
            if run.get("ended_at") or time.monotonic() >= deadline:
                return run

    def run(self, workflow: str, inputs: Optional[Dict[str, Any]] = None, *, timeout: float = 60.0,
            idempotency_key: Optional[str] = None) -> Any:
        """Starts a run and waits for it: its output, or :class:`RunFailed`."""
        run = self.wait(self.start(workflow, inputs, idempotency_key=idempotency_key), timeout)
        if run.get("status") != "completed":
            if not run.get("ended_at"):
                raise TimeoutError(f"run {run['run_id']} has not ended after {timeout} s (status {run.get('status')})")
            raise RunFailed(run)
        return run.get("output")

    def inbox(self, mine: bool = True) -> List[Dict[str, Any]]:
        """Forms and approvals waiting (for this key's identity when ``mine``)."""
        return self.http.request("GET", "/inbox" + ("?assignee=me" if mine else ""))["items"]

    def submit(self, run_id: str, step: str, values: Dict[str, Any]) -> Dict[str, Any]:
        """Submits a form a run waits for, as this key's identity."""
        return self.http.request("POST", f"/runs/{_q(run_id)}/steps/{_q(step)}/submission", {"values": values})

    def decide(self, run_id: str, step: str, approve: bool, comment: Optional[str] = None,
               values: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Approves or rejects an approval a run waits for, as this key's identity."""
        body: Dict[str, Any] = {"approve": approve}
        if comment is not None:
            body["comment"] = comment
        if values is not None:
            body["values"] = values
        return self.http.request("POST", f"/runs/{_q(run_id)}/steps/{_q(step)}/decision", body)


def _q(s: str) -> str:
    return urllib.parse.quote(str(s), safe="")


def _name_of(yaml_text: str) -> str:
    for line in yaml_text.splitlines():
        if line.startswith("name:"):
            return line.split(":", 1)[1].strip().strip("'\"")
    raise ValueError("the definition has no top-level `name:`")
