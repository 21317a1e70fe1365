"""A small stdio MCP server for the shared-tools tests (Python standard library only).

Tools: `echo` (returns its text), `add` (a + b, also as structuredContent), `fail` (a tool
error), `crash` (the process exits, so its host restarts it), `slow` (sleeps `ms`), `big` (a long text),
`grow` (adds the tool `extra` and says `notifications/tools/list_changed`), and `whoami` (the
value of an environment variable, for the vault tests). Every start appends a line to
$ECHO_STARTS when set, so a test can count restarts, and every call its tool's name to
$ECHO_CALLS, so a test can count runs.
"""

import json
import os
import sys
import time

TOOLS = [
    {"name": "echo", "description": "Echo the text back.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    {"name": "add", "description": "Add two numbers.",
     "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}},
    {"name": "fail", "description": "Always reports a tool error.", "inputSchema": {"type": "object"}},
    {"name": "crash", "description": "Exit the server process.", "inputSchema": {"type": "object"}},
    {"name": "slow", "description": "Sleep, then answer.",
     "inputSchema": {"type": "object", "properties": {"ms": {"type": "integer"}}}},
    {"name": "grow", "description": "Add the tool `extra`.", "inputSchema": {"type": "object"}},
    {"name": "big", "description": "A text of `kib` KiB.",
     "inputSchema": {"type": "object", "properties": {"kib": {"type": "integer"}}}},
    {"name": "whoami", "description": "An environment variable's value.",
     "inputSchema": {"type": "object", "properties": {"name": {"type": "string"}}}},
]
EXTRA = {"name": "extra", "description": "Added by grow.", "inputSchema": {"type": "object"}}


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def text(t, error=False):
    return {"content": [{"type": "text", "text": t}], "isError": error}


def main():
    starts = os.environ.get("ECHO_STARTS")
    if starts:
        with open(starts, "a") as f:
            f.write(f"{os.getpid()}\n")
    print("echo server started", file=sys.stderr, flush=True)
    tools = list(TOOLS)
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        method, mid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if mid is None:
            continue
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "echo", "version": "1"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": tools}})
        elif method == "tools/call":
            name, args = params.get("name"), params.get("arguments") or {}
            calls = os.environ.get("ECHO_CALLS")
            if calls:
                with open(calls, "a") as f:
                    f.write(f"{name}\n")
            if name == "echo":
                result = text(str(args.get("text", "")))
            elif name == "add":
                s = args.get("a", 0) + args.get("b", 0)
                result = text(str(s))
                result["structuredContent"] = {"sum": s}
            elif name == "fail":
                result = text("this tool always fails", error=True)
            elif name == "crash":
                print("crashing on request", file=sys.stderr, flush=True)
                os._exit(3)
            elif name == "slow":
                time.sleep(int(args.get("ms", 1000)) / 1000)
                result = text("slept")
            elif name == "grow":
                if EXTRA not in tools:
                    tools.append(EXTRA)
                send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
                result = text("grown")
            elif name == "big":
                result = text("".join(chr(97 + i % 26) for i in range(int(args.get("kib", 1)) * 1024)))
            elif name == "whoami":
                result = text(os.environ.get(str(args.get("name", "")), ""))
            elif name == "extra":
                result = text("extra")
            else:
                send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32602, "message": f"no tool {name}"}})
                continue
            send({"jsonrpc": "2.0", "id": mid, "result": result})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        else:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "method not found"}})


main()
