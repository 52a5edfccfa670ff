#!/usr/bin/env python3
"""A webhook endpoint for the end-to-end tests, verified with the Standard Webhooks
reference library (the `standardwebhooks` package), as a customer's server would.

    webhook_receiver.py --secret-file S --deliveries D --attempts A [--down-until F]

It listens on an ephemeral loopback port and prints `{"port": N}` as its first line
on stdout. The secret is read from the file S on every request, so the test can
start the receiver first (its URL is needed to create the webhook) and write the
secret that the server returns afterwards.

Each request is verified and answered:
- 400 when the signature (or its headers, or the timestamp) does not verify;
- 503 while S does not exist yet, or while --down-until is given and F does not exist
  (an endpoint that is down and comes back once the test creates F);
- 204 otherwise.

Every request is appended to A as one JSON line `{"webhook_id", "received_at",
"status", "verified", "error", "content_type", "body"}` (`body` is null unless the
signature verified); every accepted (204) delivery is appended to D as
`{"webhook_id", "received_at", "body"}`, where `received_at` is the wall-clock time
in milliseconds since the Unix epoch and `body` the verified, parsed JSON. Lines are
flushed one by one so that a test can poll the files.
"""

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

write_lock = threading.Lock()


def append_line(path, record):
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with write_lock:
        with open(path, "a", encoding="utf-8") as file:
            file.write(line)
            file.flush()


def read_secret(path):
    try:
        with open(path, encoding="utf-8") as file:
            secret = file.read().strip()
    except FileNotFoundError:
        return None
    return secret or None


def make_handler(options):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            received_at = time.time() * 1000.0
            body = self.read_body()
            headers = {name.lower(): value for name, value in self.headers.items()}
            webhook_id = headers.get("webhook-id")

            status, verified, error, parsed = 204, False, None, None
            secret = read_secret(options.secret_file)
            if secret is None:
                status, error = 503, "no secret yet"
            else:
                try:
                    parsed = Webhook(secret).verify(body, headers)
                    verified = True
                except Exception as failure:  # any failure to verify is a 400
                    status, error = 400, f"{type(failure).__name__}: {failure}"
                if verified and options.down_until and not os.path.exists(options.down_until):
                    status, error = 503, "endpoint down"

            append_line(
                options.attempts,
                {
                    "webhook_id": webhook_id,
                    "received_at": received_at,
                    "status": status,
                    "verified": verified,
                    "error": error,
                    "content_type": headers.get("content-type"),
                    "body": parsed,
                },
            )
            if status == 204:
                append_line(
                    options.deliveries,
                    {"webhook_id": webhook_id, "received_at": received_at, "body": parsed},
                )

            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def read_body(self):
            if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def log_message(self, format, *args):
            sys.stderr.write("webhook_receiver: " + (format % args) + "\n")

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--deliveries", required=True)
    parser.add_argument("--attempts", required=True)
    parser.add_argument("--down-until", default=None)
    options = parser.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(options))
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
