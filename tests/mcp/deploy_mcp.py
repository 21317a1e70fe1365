"""Hosted services through `claudemesh mcp`, driven by the official Python MCP client.

Run by ctl/tests/deploy.rs, which starts a relay and two daemons (alice, bob) in one mesh;
alice's daemon hosts services (`claudemesh host enable`). Bob's session deploys
`mcp-server-time` from PyPI (installed by alice's daemon inside the sandbox) with
`mesh_mcp_deploy`, gains `time__convert_time` through `tools/list_changed`, calls it (the
result matches a direct call), reads the service in `mesh_mcp_catalog`, its tools in
`mesh_mcp_schema` and its log in `mesh_mcp_logs`, narrows it with `mesh_mcp_scope` (then
its own call is refused), and takes it down with `mesh_mcp_undeploy` (the tools go).
Prints one JSON line; exits non-zero on any failed check.
"""

import asyncio
import html
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

BIN = os.environ["CM_BIN"]
DIR_B = os.environ["CM_DIR_B"]
TIME_DIRECT = [os.environ["CM_TIME_SERVER"], "--local-timezone", "UTC"]
TIME_VERSION = os.environ["CM_TIME_VERSION"]
CONVERT = {"source_timezone": "Europe/Paris", "time": "12:00", "target_timezone": "Asia/Tokyo"}


def env_for(config_dir, key, name):
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": config_dir,
        "CLAUDEMESH_CONFIG_DIR": config_dir,
        "CLAUDEMESH_SESSION_KEY": key,
        "CLAUDEMESH_DISPLAY_NAME": name,
        "CLAUDEMESH_NO_AUTOSTART": "1",
        "CLAUDEMESH_LOG": "warn",
    }


def check(cond, what):
    if not cond:
        print(json.dumps({"ok": False, "failed": what}))
        sys.exit(1)


def text(result):
    check(not result.is_error, f"tool error: {result.content}")
    return result.content[0].text


async def tool_names(session):
    return {t.name: t for t in (await session.list_tools()).tools}


async def until_tools(session, queue, cond, what, timeout=300):
    """Wait for list_changed notifications until the tool list satisfies `cond`."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while True:
        names = await tool_names(session)
        if cond(names):
            return names
        left = until - loop.time()
        check(left > 0, f"tool list after {what}: {sorted(names)}")
        try:
            await asyncio.wait_for(queue.get(), left)
        except asyncio.TimeoutError:
            pass


async def direct_time():
    params = StdioServerParameters(command=TIME_DIRECT[0], args=TIME_DIRECT[1:], env={"PATH": os.environ.get("PATH", "")})
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            return await s.call_tool("convert_time", CONVERT)


async def main():
    out = {"ok": True}
    direct = await direct_time()
    changes = asyncio.Queue()

    async def on_message(m):
        if getattr(m, "method", None) == "notifications/tools/list_changed":
            await changes.put(m)

    params = StdioServerParameters(command=BIN, args=["mcp"], env=env_for(DIR_B, "session-b", "bob-claude"))
    async with stdio_client(params) as (rb, wb):
        async with ClientSession(rb, wb, message_handler=on_message) as b:
            await b.initialize()
            await b.call_tool("set_summary", {"summary": "deploying a service"})
            dep = await b.call_tool("mesh_mcp_deploy", {
                "name": "time",
                "pypi": f"mcp-server-time=={TIME_VERSION}",
                "command": ["mcp-server-time", "--local-timezone", "UTC"],
                "description": "time zones, hosted",
            })
            check("\"version\": 1" in text(dep), f"deployed: {text(dep)}")
            names = await until_tools(b, changes, lambda n: "time__convert_time" in n, "the service started on alice's daemon")
            res = await b.call_tool("time__convert_time", CONVERT)
            check(not res.is_error, f"call: {res.content}")
            check(html.unescape(res.content[1].text) == direct.content[0].text, f"matches a direct call: {res.content} vs {direct.content}")
            check(res.structured_content == direct.structured_content, "structured content matches")

            cat = json.loads(text(await b.call_tool("mesh_mcp_catalog", {})))
            svc = [s for s in cat["services"] if s["name"] == "time"]
            check(svc and svc[0]["status"] == "running" and svc[0]["tools"] >= 2, f"catalog: {cat}")
            check(svc[0]["source"].startswith("pypi mcp-server-time"), f"catalog source: {svc[0]}")
            schema = json.loads(text(await b.call_tool("mesh_mcp_schema", {"name": "time"})))
            tools = {t["name"] for t in schema["tools"]}
            check({"convert_time", "get_current_time"} <= tools, f"schema: {schema}")
            logs = json.loads(text(await b.call_tool("mesh_mcp_logs", {"name": "time", "lines": 50})))
            check(any("started" in line for line in logs["lines"]), f"logs: {logs}")
            out["log_lines"] = len(logs["lines"])

            # Narrowed to a group bob's session is not in: its own call is refused.
            await b.call_tool("mesh_mcp_scope", {"name": "time", "scope": "@ops"})
            for _ in range(300):
                r = await b.call_tool("mesh_tool_call", {"server_name": "time", "tool_name": "convert_time", "args": CONVERT})
                if r.is_error and "not allowed" in r.content[0].text:
                    break
                await asyncio.sleep(0.1)
            else:
                check(False, "the narrowed scope never refused bob")

            await b.call_tool("mesh_mcp_undeploy", {"name": "time"})
            await until_tools(b, changes, lambda n: "time__convert_time" not in n, "the service was undeployed")
            out["undeployed"] = True
    print(json.dumps(out))


asyncio.run(main())
