"""An MCP client (the official Python SDK) driving a real Cairn MCP server.

    mcp_client.py stdio CAIRN_BINARY     # `cairn mcp` over stdio (env: the database)
    mcp_client.py http URL KEY [VIEWER]  # `cairn serve`'s /mcp with an API key
    mcp_client.py http-anon URL KEY      # one call with a key the API refuses

It initializes, lists the tools, publishes a workflow whose run fails,
plans the resume, tries it without `confirm`, then with it, and reads a
contracts resource and a prompt; it prints what it saw as one JSON object
(the Rust test asserts on it) and exits non-zero on an unexpected error.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

FLAKY = """name: flaky
steps:
  - id: draft
    transform: { title: "Hello" }
    output_contract:
      type: object
      required: [title]
      properties: { title: { type: string }, author: { type: string } }
  - id: publish
    task: fail
    with: { succeed_on_attempt: 3, kind: cms.unavailable }
    retry: { max_attempts: 2, initial_interval: 10ms }
  - id: announce
    task: echo
    with: { text: "{{ steps.draft.output.title }}" }
"""


def data(result):
    """A tool result's structured content (or its text as JSON)."""
    if result.structured_content is not None:
        return result.structured_content
    text = "".join(c.text for c in result.content if getattr(c, "type", "") == "text")
    try:
        return json.loads(text)
    except ValueError:
        return text


def text(result):
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def status(session, run_id, want, tries=200):
    for _ in range(tries):
        run = data(await session.call_tool("get_run", {"run_id": run_id}))["run"]
        if run["status"] in want:
            return run
        await asyncio.sleep(0.05)
    raise SystemExit(f"run {run_id} never reached {want}: {run}")


async def drive(session, viewer=None):
    seen = {}
    init = await session.initialize()
    seen["server"] = init.server_info.name
    seen["protocol"] = init.protocol_version
    seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
    published = await session.call_tool("publish_workflow", {"yaml": FLAKY})
    assert not published.is_error, text(published)
    bad = await session.call_tool("validate_workflow", {"yaml": "name: x\nsteps:\n  - id: a\n    tsak: echo\n"})
    seen["validate_bad"] = text(bad)
    started = data(await session.call_tool("start_run", {"workflow": "flaky", "wait_seconds": 10}))
    run_id = started["run_id"]
    seen["run_id"] = run_id
    seen["started_status"] = (await status(session, run_id, ["failed"]))["status"]

    plan = await session.call_tool("plan_resume", {"run_id": run_id})
    seen["plan_error"] = plan.is_error
    seen["plan"] = data(plan)["plan"]["plan"]
    seen["plan_text"] = text(plan)
    before = data(await session.call_tool("get_run", {"run_id": run_id}))["run"]
    seen["status_after_plan"] = before["status"]

    unconfirmed = await session.call_tool("resume_run", {"run_id": run_id})
    seen["unconfirmed_error"] = unconfirmed.is_error
    seen["unconfirmed_text"] = text(unconfirmed)
    after = data(await session.call_tool("get_run", {"run_id": run_id}))
    seen["status_after_unconfirmed"] = after["run"]["status"]
    seen["recorded_by_unconfirmed"] = after["run"]["stream_version"] - before["stream_version"]

    if viewer is not None:
        refused = await viewer.call_tool("resume_run", {"run_id": run_id, "confirm": True})
        seen["viewer_error"] = refused.is_error
        seen["viewer_text"] = text(refused)
        seen["viewer_can_read"] = data(await viewer.call_tool("get_run", {"run_id": run_id}))["run"]["status"]

    done = await session.call_tool("resume_run", {"run_id": run_id, "confirm": True, "reason": "the CMS is back"})
    seen["resume_error"] = done.is_error
    seen["resume_text"] = text(done)
    final = await status(session, run_id, ["completed", "failed"])
    seen["final_status"] = final["status"]
    seen["final_output"] = final.get("output")

    again = await session.call_tool("resume_run", {"run_id": run_id, "confirm": True})
    seen["again_text"] = text(again)
    seen["bad_id_text"] = text(await session.call_tool("get_run", {"run_id": "not-a-run"}))

    resources = await session.list_resources()
    seen["resources"] = sorted(r.uri.__str__() for r in resources.resources)
    contracts = await session.read_resource("cairn://workflows/flaky/versions/1/contracts")
    seen["contracts"] = json.loads(contracts.contents[0].text)
    prompt = await session.get_prompt("diagnose_failed_run", {"run_id": run_id})
    seen["prompt"] = prompt.messages[0].content.text
    return seen


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        params = StdioServerParameters(command=sys.argv[2], args=["mcp", "--as", "ana"], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                seen = await drive(session)
    else:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        url, key = sys.argv[2], sys.argv[3]
        viewer_key = sys.argv[4] if len(sys.argv) > 4 else None
        if mode == "http-anon":
            # A key the API does not know: the session opens, calls are refused.
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
                async with streamable_http_client(url, http_client=http) as (read, write):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        r = await session.call_tool("list_runs", {})
                        print(json.dumps({"error": r.is_error, "text": text(r)}))
                        return

        def client(k):
            return httpx2.AsyncClient(headers={"Authorization": f"Bearer {k}"}, timeout=30)

        async with client(key) as http, streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                if viewer_key:
                    async with client(viewer_key) as vh, streamable_http_client(url, http_client=vh) as (vr, vw):
                        async with ClientSession(vr, vw) as viewer:
                            await viewer.initialize()
                            seen = await drive(session, viewer)
                else:
                    seen = await drive(session)
    print(json.dumps(seen))


asyncio.run(main())
