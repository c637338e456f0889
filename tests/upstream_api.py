"""An upstream HTTP API for the gateway's tests: answers what it was asked, slowly or not at all on request.

Started by tests/vault.rs on loopback: `python3 upstream_api.py` prints its port and serves until killed.
  /slow...  answers after 3 s;   /drop...  closes the connection without answering;
  /__hits   how many requests it has served (not counted itself);
  anything else: 200 with JSON naming the method, path, headers and body length it saw.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

hits = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self):
        global hits
        if self.path == "/__hits":
            with lock:
                body = json.dumps({"hits": hits}).encode()
            self.send(200, body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with lock:
            hits += 1
        if self.path.startswith("/slow"):
            time.sleep(3)
        if self.path.startswith("/drop"):
            self.close_connection = True
            self.connection.close()
            return
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_length": len(body),
        }
        self.send(200, json.dumps(seen).encode())

    def send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
