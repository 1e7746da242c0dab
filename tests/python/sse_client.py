#!/usr/bin/env python3
"""Reads a server-streaming call of micro's gateway as Server-Sent Events, with a standard SSE
client (httpx + httpx-sse), so the test checks the framing against a parser we did not write.

Usage: sse_client.py URL [JSON]
    POSTs JSON (default `{}`) to URL with `Accept: text/event-stream` and prints one JSON
    object per line:
      {"status": 200, "content_type": "text/event-stream"}    the response head
      {"event": "message", "data": {...}, "at": 0.012}        each event, data parsed as JSON,
                                                             seconds since the request
      {"end": true, "at": 3.01}                               the stream ended
    A response that is not an event stream (an error before the first message) prints
      {"status": 400, "content_type": "application/json", "body": {...}}

Needs the pip packages httpx and httpx-sse (scripts/setup installs them).
"""

import json
import sys
import time

import httpx
from httpx_sse import connect_sse


def main() -> int:
    url = sys.argv[1]
    body = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    started = time.monotonic()
    with httpx.Client(timeout=30.0) as client:
        with connect_sse(client, "POST", url, json=body) as source:
            response = source.response
            content_type = response.headers.get("content-type", "")
            head = {"status": response.status_code, "content_type": content_type}
            if not content_type.startswith("text/event-stream"):
                head["body"] = json.loads(response.read())
                print(json.dumps(head), flush=True)
                return 0
            print(json.dumps(head), flush=True)
            for event in source.iter_sse():
                print(
                    json.dumps(
                        {
                            "event": event.event,
                            "data": json.loads(event.data),
                            "at": round(time.monotonic() - started, 3),
                        }
                    ),
                    flush=True,
                )
    print(json.dumps({"end": True, "at": round(time.monotonic() - started, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
