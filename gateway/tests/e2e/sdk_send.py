#!/usr/bin/env python3
"""Sends messages to a Xeno server through the real Segment and RudderStack Python
SDKs, as a customer's backend would.

    sdk_send.py --host http://127.0.0.1:PORT --write-key KEY --messages JSON

JSON is a list of messages, each
`{"sdk": "segment"|"rudderstack", "type": "identify"|"track"|"alias", "user_id": "...",
  "anonymous_id": "...", "previous_id": "...", "traits": {...}, "event": "...",
  "properties": {...}, "timestamp": "RFC 3339"}`
(`traits` for identify; `event` and `properties` for track; `previous_id` for alias;
`user_id` and/or `anonymous_id` for identify and track; `timestamp` optional).
Both SDKs batch them to `/v1/batch` with their defaults (the Segment SDK sends plain
JSON with the write key repeated in the body; the RudderStack SDK gzips and puts the
traits of an identify in `context.traits`). Both are flushed and shut down; the
script exits 1 if either SDK reported an error through its `on_error` callback or
refused to queue a message, and prints what went wrong.
"""

import argparse
import json
import sys
import threading
from datetime import datetime

from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

errors = []
errors_lock = threading.Lock()


def on_error_for(sdk):
    def on_error(error, batch):
        status = getattr(error, "status", None)
        with errors_lock:
            errors.append(
                f"{sdk}: {type(error).__name__}: {error} (status {status}, {len(batch)} messages)"
            )

    return on_error


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--write-key", required=True)
    parser.add_argument("--messages", required=True)
    options = parser.parse_args()
    messages = json.loads(options.messages)

    # Few retries: a server that refuses or fails should fail the test quickly, not
    # after the SDKs' default of ten attempts with backoff.
    clients = {
        "segment": SegmentClient(
            write_key=options.write_key,
            host=options.host,
            on_error=on_error_for("segment"),
            max_retries=2,
            timeout=10,
        ),
        "rudderstack": RudderClient(
            write_key=options.write_key,
            host=options.host,
            on_error=on_error_for("rudderstack"),
            max_retries=2,
            timeout=10,
        ),
    }

    for message in messages:
        client = clients[message["sdk"]]
        timestamp = message.get("timestamp")
        if timestamp is not None:
            timestamp = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        ids = {"user_id": message.get("user_id"), "anonymous_id": message.get("anonymous_id")}
        if message["type"] == "identify":
            queued, _ = client.identify(
                traits=message.get("traits", {}), timestamp=timestamp, **ids
            )
        elif message["type"] == "track":
            queued, _ = client.track(
                event=message["event"],
                properties=message.get("properties", {}),
                timestamp=timestamp,
                **ids,
            )
        elif message["type"] == "alias":
            queued, _ = client.alias(
                previous_id=message["previous_id"], user_id=message["user_id"], timestamp=timestamp
            )
        else:
            raise SystemExit(f"sdk_send.py: unsupported message type {message['type']!r}")
        if not queued:
            errors.append(f"{message['sdk']}: the SDK refused to queue {message}")

    for client in clients.values():
        client.shutdown()

    if errors:
        for error in errors:
            print(f"sdk_send.py: {error}", file=sys.stderr)
        return 1
    print(f"sdk_send.py: sent {len(messages)} messages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
