"""A small OpenAI-compatible chat-completions server for Cairn's tests, for
the behaviours a third-party fake (fakellm) does not offer: it refuses
`response_format: json_schema` with HTTP 500 the way llama.cpp servers do,
answers 429 with a Retry-After header, and logs every request body.

usage: llm_server.py PORT DIR
DIR/replies.json is a list; request N (from 1) gets item N (the last repeats):
  {"content": "..."}                      a reply
  {"status": 429, "retry_after": 1}       an error status (with Retry-After)
  {"refuse": "json_schema"}               500 if the request asks for that
                                          response format, else the next item
Every request is appended to DIR/requests.jsonl.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
DIR = sys.argv[2]
REPLIES = json.load(open(f"{DIR}/replies.json"))
COUNT = [0]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        with open(f"{DIR}/requests.jsonl", "a") as log:
            log.write(json.dumps(body) + "\n")
        COUNT[0] += 1
        index = min(COUNT[0], len(REPLIES)) - 1
        reply = REPLIES[index]
        mode = (body.get("response_format") or {}).get("type", "none")
        if "refuse" in reply:
            if reply["refuse"] == mode:
                return self.answer(500, {"error": {"message": f"unsupported response_format {mode}"}})
            reply = REPLIES[min(index + 1, len(REPLIES) - 1)]
        if "status" in reply:
            headers = {}
            if "retry_after" in reply:
                headers["Retry-After"] = str(reply["retry_after"])
            return self.answer(reply["status"], {"error": {"message": "scripted error"}}, headers)
        content = reply["content"]
        self.answer(200, {
            "id": f"cmpl-{COUNT[0]}",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": len(content) // 4},
        })


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
