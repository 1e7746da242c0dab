"""Drives micro-gateway's /mcp with the official MCP Python SDK (`mcp` on PyPI), a client no one
here wrote. Prints one JSON object per line for the Rust test to check.

usage: mcp_client.py URL SCENARIO [TOKEN]
  basic       initialize, list tools, call greeter SayHello, call it with bad arguments
  call        call greeter SayHello (with TOKEN as a bearer token when given)
  changes     list tools, print {"ready": ...}, wait for notifications/tools/list_changed,
              list again
"""

import asyncio
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

TOOL = "greeter.Greeter.SayHello"


def emit(**fields):
    print(json.dumps(fields), flush=True)


def result_fields(result):
    return {
        "isError": bool(result.is_error),
        "text": " ".join(c.text for c in result.content if getattr(c, "type", "") == "text"),
        "structured": result.structured_content,
    }


async def main(url, scenario, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    changed = asyncio.Event()

    async def on_message(message):
        root = getattr(message, "root", message)
        if getattr(root, "method", "") == "notifications/tools/list_changed":
            changed.set()

    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write, message_handler=on_message) as session:
                init = await session.initialize()
                tools = await session.list_tools()
                names = sorted(t.name for t in tools.tools)
                if scenario == "basic":
                    emit(
                        protocol=init.protocol_version,
                        server=init.server_info.name,
                        tools=names,
                        schemas={t.name: t.input_schema for t in tools.tools},
                        descriptions={t.name: t.description for t in tools.tools},
                    )
                    emit(ok=result_fields(await session.call_tool(TOOL, {"name": "Agent"})))
                    emit(bad=result_fields(await session.call_tool(TOOL, {"nam": "Agent"})))
                elif scenario == "call":
                    emit(call=result_fields(await session.call_tool(TOOL, {"name": "Agent"})))
                elif scenario == "changes":
                    emit(ready=names)
                    await asyncio.wait_for(changed.wait(), timeout=30)
                    again = await session.list_tools()
                    emit(changed=sorted(t.name for t in again.tools))
                else:
                    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None))
