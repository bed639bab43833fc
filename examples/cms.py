"""A stand-in CMS for examples/blog-post.yaml: POST /posts stores a post and
answers 201 with its id and URL. The same Idempotency-Key gets the same post
back, as a real CMS would, so a retried publish never posts twice.

usage: python3 examples/cms.py [PORT]   (default 8787; posts go to ./cms-posts.jsonl)
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8787
LOG = sys.argv[2] if len(sys.argv) > 2 else "cms-posts.jsonl"
POSTS = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if self.path != "/posts":
            return self.answer(404, {"error": "POST /posts"})
        try:
            post = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        except ValueError:
            return self.answer(400, {"error": "the body is not JSON"})
        if not post.get("title"):
            return self.answer(422, {"error": "a post needs a title"})
        key = self.headers.get("Idempotency-Key") or str(len(POSTS))
        if key not in POSTS:
            n = len(POSTS) + 1
            POSTS[key] = {"id": n, "url": f"http://127.0.0.1:{PORT}/posts/{n}", "title": post["title"]}
            with open(LOG, "a") as f:
                f.write(json.dumps({"idempotency_key": key, **post}) + "\n")
        self.answer(201, POSTS[key])


print(f"cms listening on http://127.0.0.1:{PORT}/posts", flush=True)
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
