"""Page through long shared-state lists with the official Python MCP client.

Run by ctl/tests/lists.rs, which filled alice's mesh with many keys and tasks. Calls
`list_state` and `list_tasks` page by page (`cursor` = the previous `next_cursor`) and
prints one JSON line: the keys and task ids seen, in order, and how many pages it took;
exits non-zero on any failed check.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

BIN = os.environ["CM_BIN"]
DIR = os.environ["CM_DIR"]
LIMIT = int(os.environ.get("CM_LIMIT", "1000"))


def check(cond, what):
    if not cond:
        print(json.dumps({"ok": False, "failed": what}))
        sys.exit(1)


def text(result):
    check(not result.is_error, f"tool error: {result.content}")
    return json.loads(result.content[0].text)


async def pages(session, tool, key, field, limit):
    seen, cursor, n = [], None, 0
    while True:
        args = {"limit": limit}
        if cursor is not None:
            args["cursor"] = cursor
        page = text(await session.call_tool(tool, args))
        items = page[key]
        check(len(items) <= limit, f"{tool}: a page holds {len(items)} > limit {limit}")
        seen.extend(i[field] for i in items)
        n += 1
        cursor = page.get("next_cursor")
        if cursor is None:
            return seen, n
        check(len(items) > 0, f"{tool}: an empty page with a next_cursor")


async def main():
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": DIR,
        "CLAUDEMESH_CONFIG_DIR": DIR,
        "CLAUDEMESH_SESSION_KEY": "lists",
        "CLAUDEMESH_DISPLAY_NAME": "alice-claude",
        "CLAUDEMESH_NO_AUTOSTART": "1",
        "CLAUDEMESH_LOG": "warn",
    }
    params = StdioServerParameters(command=BIN, args=["mcp"], env=env)
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            # The default page is small (100) and says where to go on.
            first = text(await s.call_tool("list_state", {}))
            check(len(first["entries"]) == 100, f"default page: {len(first['entries'])}")
            check("next_cursor" in first, "a first page of many says where to go on")
            keys, key_pages = await pages(s, "list_state", "entries", "key", LIMIT)
            tasks, task_pages = await pages(s, "list_tasks", "tasks", "id", LIMIT)
            bad = await s.call_tool("list_tasks", {"cursor": "not-a-cursor"})
            check(bad.is_error, "a made-up cursor is refused")
    print(json.dumps({"ok": True, "keys": keys, "key_pages": key_pages,
                      "tasks": tasks, "task_pages": task_pages}))


asyncio.run(main())
