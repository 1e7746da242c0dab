#!/usr/bin/env python3
"""Drives a streaming call of micro's gateway over a WebSocket with the `websockets` library
(a client we did not write), step by step, and reports what happened in order.

Usage: ws_client.py URL [--header "Name: value"]... [STEP]...
Steps, run in order:
    send:<text>   send <text> as a text frame, then wait (up to 10 s) for the next frame
    push:<text>   send <text> as a text frame without waiting
    end           send an empty text frame (the gateway's end of the request stream)
    close         close from the client (code 1000)
After the steps it reads every frame until the connection closes.

Prints one JSON object per line, in the order things happened (`at`: seconds since connected):
    {"sent": "<text>", "at": 0.001}
    {"received": "<text>", "at": 0.003}
    {"closed": 1000, "reason": "", "at": 0.004}     the close frame received from the gateway
    {"timeout": "<what was awaited>"}               nothing came within 10 s (then it stops)
    {"rejected": 401, "body": "<body>"}             the upgrade was refused

Needs the pip package websockets (scripts/setup installs it).
"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

WAIT = 10.0


def say(**fields):
    print(json.dumps(fields), flush=True)


def closed(error, started):
    frame = error.rcvd
    if frame is None:
        say(closed=None, reason="no close frame", at=round(time.monotonic() - started, 3))
    else:
        say(closed=frame.code, reason=frame.reason, at=round(time.monotonic() - started, 3))


async def run(url, headers, steps):
    try:
        socket = await connect(url, additional_headers=headers, open_timeout=WAIT)
    except InvalidStatus as refused:
        response = refused.response
        say(rejected=response.status_code, body=response.body.decode("utf-8", "replace"))
        return
    started = time.monotonic()
    at = lambda: round(time.monotonic() - started, 3)  # noqa: E731
    async with socket:
        try:
            for step in steps:
                if step == "end":
                    await socket.send("")
                    say(sent="", at=at())
                elif step == "close":
                    await socket.close()
                    say(closed=socket.close_code, reason=socket.close_reason, at=at())
                    return
                else:
                    kind, _, text = step.partition(":")
                    await socket.send(text)
                    say(sent=text, at=at())
                    if kind == "send":
                        try:
                            reply = await asyncio.wait_for(socket.recv(), WAIT)
                        except asyncio.TimeoutError:
                            say(timeout=f"a reply to {text}")
                            return
                        say(received=reply, at=at())
            while True:
                try:
                    frame = await asyncio.wait_for(socket.recv(), WAIT)
                except asyncio.TimeoutError:
                    say(timeout="the end of the exchange")
                    return
                say(received=frame, at=at())
        except ConnectionClosed as error:
            closed(error, started)


def main():
    args = sys.argv[1:]
    url, rest = args[0], args[1:]
    headers, steps = [], []
    while rest:
        arg = rest.pop(0)
        if arg == "--header":
            name, _, value = rest.pop(0).partition(":")
            headers.append((name.strip(), value.strip()))
        else:
            steps.append(arg)
    asyncio.run(run(url, headers, steps))


if __name__ == "__main__":
    main()
