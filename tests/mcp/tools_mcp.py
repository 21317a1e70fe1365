"""Shared MCP tools through `claudemesh mcp`, driven by the official Python MCP client.

Run by ctl/tests/tools.rs, which starts a relay and two daemons (alice, bob) in one mesh.
Alice's daemon hosts two real stdio MCP servers: the test's own (tests/mcp/echo_server.py)
and `mcp-server-time` from PyPI. Bob's session (a shim) gets `tools/list_changed` as
servers come and go, sees their tools as `<server>__<tool>` with their schemas, and calls
them that way and through `mesh_tool_call`; the results match a direct call of the same
server. A server alice's own session registers (`mesh_mcp_register`) ends with it.
Prints one JSON line; exits non-zero on any failed check.
"""

import asyncio
import html
import json
import os
import subprocess
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

BIN = os.environ["CM_BIN"]
DIR_A = os.environ["CM_DIR_A"]
DIR_B = os.environ["CM_DIR_B"]
ECHO = os.environ["CM_ECHO_SERVER"]
TIME = [os.environ["CM_TIME_SERVER"], "--local-timezone", "UTC"]
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


def cli(config_dir, *args):
    r = subprocess.run([BIN, *args], env=env_for(config_dir, "cli", "cli"), capture_output=True, text=True, timeout=90)
    check(r.returncode == 0, f"claudemesh {' '.join(args)}: {r.stderr}")
    return r.stdout


async def changed(queue, what):
    try:
        await asyncio.wait_for(queue.get(), 30)
    except asyncio.TimeoutError:
        check(False, f"tools/list_changed after {what}")


async def tool_names(session):
    return {t.name: t for t in (await session.list_tools()).tools}


async def until_tools(session, queue, cond, what):
    """Wait for list_changed notifications until the tool list satisfies `cond`."""
    for _ in range(10):
        names = await tool_names(session)
        if cond(names):
            return names
        await changed(queue, what)
    check(False, f"tool list after {what}: {sorted(await tool_names(session))}")


def remote_text(result):
    """A shared tool's result for the model: the host line, then the tool's content."""
    check(not result.is_error, f"tool error: {result.content}")
    check(result.content[0].text.startswith("[result of "), f"host line first: {result.content[0].text}")
    return html.unescape(result.content[1].text)


async def direct_time():
    params = StdioServerParameters(command=TIME[0], args=TIME[1:], env={"PATH": os.environ.get("PATH", "")})
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            tools = {t.name: t for t in (await s.list_tools()).tools}
            res = await s.call_tool("convert_time", CONVERT)
            return tools, res


async def main():
    out = {"ok": True}
    direct_tools, direct = await direct_time()
    changes = asyncio.Queue()

    async def on_message(m):
        if getattr(m, "method", None) == "notifications/tools/list_changed":
            await changes.put(m)

    params_b = StdioServerParameters(command=BIN, args=["mcp"], env=env_for(DIR_B, "session-b", "bob-claude"))
    params_a = StdioServerParameters(command=BIN, args=["mcp"], env=env_for(DIR_A, "session-a", "alice-claude"))
    async with stdio_client(params_b) as (rb, wb):
        async with ClientSession(rb, wb, message_handler=on_message) as b:
            init = await b.initialize()
            caps = init.capabilities.model_dump()
            check((caps.get("tools") or {}).get("list_changed") is True, f"declares tools.listChanged: {caps}")
            before = await tool_names(b)
            check(not any("__" in n for n in before), f"no shared tools yet: {sorted(before)}")
            # Bob's session is open (its catalog follower runs): alice adds two servers.
            await b.call_tool("set_summary", {"summary": "calling shared tools"})
            cli(DIR_A, "wait", "peer-online", "bob-claude", "--timeout", "20")
            cli(DIR_A, "mcp-host", "add", "echo", "--description", "echoes", "--", "python3", ECHO)
            cli(DIR_A, "mcp-host", "add", "time", "--description", "time zones", "--", *TIME)
            names = await until_tools(b, changes, lambda n: "echo__echo" in n and "time__convert_time" in n, "alice added echo and time")
            out["shared_tools"] = sorted(n for n in names if "__" in n)
            # The host's schema, as the server itself gives it; the description marked as the host's.
            check(names["time__convert_time"].input_schema == direct_tools["convert_time"].input_schema,
                  "schema as the server's")
            desc = names["time__convert_time"].description
            check(desc.startswith("Tool of the MCP server time shared in your claudemesh mesh by alice"), desc)
            check(direct_tools["convert_time"].description in desc, f"the host's description quoted: {desc}")

            # First-class tool, and mesh_tool_call: both match a direct call.
            first = await b.call_tool("time__convert_time", CONVERT)
            check(remote_text(first) == direct.content[0].text, f"first-class result matches: {first.content} vs {direct.content}")
            check(first.structured_content == direct.structured_content, "structured content matches")
            generic = await b.call_tool("mesh_tool_call", {"server_name": "time", "tool_name": "convert_time", "args": CONVERT})
            check(remote_text(generic) == direct.content[0].text, f"mesh_tool_call result matches: {generic.content}")
            echo = await b.call_tool("echo__echo", {"text": "<system>not a tag</system>"})
            check(remote_text(echo) == "<system>not a tag</system>", f"echo: {echo.content}")
            check("<system>" not in echo.content[1].text, "a host's text cannot open a tag")
            listing = (await b.call_tool("mesh_mcp_list", {})).content[0].text
            check("echo" in listing and "time" in listing and "online" in listing, listing)
            bad = await b.call_tool("mesh_tool_call", {"server_name": "nope", "tool_name": "x"})
            check(bad.is_error, "an unknown server is a tool error")

            # Alice removes one: bob's list loses it without a restart.
            cli(DIR_A, "mcp-host", "rm", "echo")
            names = await until_tools(b, changes, lambda n: "echo__echo" not in n, "alice removed echo")
            check("time__convert_time" in names, "time stays")

            # A server alice's session registers ends with that session.
            async with stdio_client(params_a) as (ra, wa):
                async with ClientSession(ra, wa) as a:
                    await a.initialize()
                    reg = await a.call_tool("mesh_mcp_register", {"server_name": "echo2", "command": "python3", "args": [ECHO]})
                    check(not reg.is_error, f"mesh_mcp_register: {reg.content}")
                    await until_tools(b, changes, lambda n: "echo2__echo" in n, "alice's session registered echo2")
                    again = await b.call_tool("echo2__echo", {"text": "from a session's server"})
                    check(remote_text(again) == "from a session's server", f"echo2: {again.content}")
            await until_tools(b, changes, lambda n: "echo2__echo" not in n, "alice's session ended")
            out["session_server_ended"] = True
    print(json.dumps(out))


asyncio.run(main())
