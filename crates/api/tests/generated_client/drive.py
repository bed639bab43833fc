"""Drives a real `cairn serve` through a client generated from its OpenAPI
document by openapi-python-client (the package `cairn_client`): publishes a
workflow, starts a run, answers its approval from the inbox as the approver,
and waits for the run's end. Prints the ended run as JSON; exits non-zero
with the answer on any refusal.

Environment: CAIRN_URL, CAIRN_OPS_KEY (operator), CAIRN_BOSS_KEY (an
approver whose identity is `boss`), CAIRN_WORKFLOW (the definition as JSON).
"""

import json
import os
import sys
import time

from cairn_client import AuthenticatedClient
from cairn_client.api.people import decide_approval, inbox
from cairn_client.api.runs import get_run, start_run
from cairn_client.api.workflows import create_workflow
from cairn_client.models import CreateWorkflowJsonBody, Decide, Problem, RunView, StartRun


def ok(answer, what):
    if answer is None or isinstance(answer, Problem):
        sys.exit(f"{what}: {answer.to_dict() if answer is not None else 'no answer'}")
    return answer


url = os.environ["CAIRN_URL"]
ops = AuthenticatedClient(base_url=url, token=os.environ["CAIRN_OPS_KEY"])
boss = AuthenticatedClient(base_url=url, token=os.environ["CAIRN_BOSS_KEY"])

body = CreateWorkflowJsonBody.from_dict(json.loads(os.environ["CAIRN_WORKFLOW"]))
ok(create_workflow.sync(client=ops, body=body), "publish")

start = StartRun.from_dict({"workflow": "approve-payment", "inputs": {"amount": 120, "payee": "ACME"}})
run = ok(start_run.sync(client=ops, body=start, idempotency_key="generated-client-1"), "start")
assert isinstance(run, RunView), run
run_id = run.run_id

item = None
for _ in range(300):
    box = ok(inbox.sync(client=boss), "inbox")
    item = next((i for i in box.items if i.run_id == str(run_id)), None)
    if item is not None:
        break
    time.sleep(0.05)
if item is None:
    sys.exit(f"run {run_id} never reached the approver's inbox")
assert item.kind == "approval" and item.assignees == ["boss"], item.to_dict()

decision = Decide(approve=True, comment="paid from the generated client")
ok(decide_approval.sync(id=run_id, step=item.step_id, client=boss, body=decision), "approve")

ended = ok(get_run.sync(id=run_id, client=ops, wait=30), "wait")
print(json.dumps(ended.to_dict()))
