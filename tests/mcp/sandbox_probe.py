"""A stdio MCP server for the hosted-services tests (Python standard library only): it
probes the sandbox it runs in.

Tools: `read` (a file's text, or the error opening it), `connect` (a TCP connection to
127.0.0.1:`port`), `secret_sha` (the SHA-256 of an environment variable, so a test sees the
secret arrived without it crossing back), `crash` (the process exits), `starts` (how many
times it started: a line per start in $HOME/starts, its writable home), and `version`
(PROBE_VERSION below, so a git update shows). At start it prints its TOKEN to stderr, as a
careless server would: the host must mask it in the logs it sends back.
"""

import hashlib
import json
import os
import socket
import sys

PROBE_VERSION = "1"

TOOLS = [
    {"name": n, "description": d, "inputSchema": {"type": "object", "properties": p}}
    for n, d, p in [
        ("read", "Read a file.", {"path": {"type": "string"}}),
        ("connect", "Connect to 127.0.0.1:port.", {"port": {"type": "integer"}}),
        ("secret_sha", "SHA-256 of an environment variable.", {"name": {"type": "string"}}),
        ("crash", "Exit.", {}),
        ("starts", "How many times it started.", {}),
        ("version", "The probe's version.", {}),
    ]
]


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def text(t):
    return {"content": [{"type": "text", "text": t}], "isError": False}


def call(name, args):
    if name == "read":
        try:
            with open(str(args.get("path", ""))) as f:
                return "ok:" + f.read()
        except OSError as e:
            return f"denied:{type(e).__name__}"
    if name == "connect":
        try:
            socket.create_connection(("127.0.0.1", int(args.get("port", 0))), timeout=5).close()
            return "connected"
        except OSError as e:
            return f"refused:{type(e).__name__}"
    if name == "secret_sha":
        v = os.environ.get(str(args.get("name", "")))
        return "unset" if v is None else hashlib.sha256(v.encode()).hexdigest()
    if name == "crash":
        print("probe crashing on request", file=sys.stderr, flush=True)
        os._exit(3)
    if name == "starts":
        with open(os.path.join(os.environ["HOME"], "starts")) as f:
            return str(len(f.readlines()))
    if name == "version":
        return PROBE_VERSION
    return None


def main():
    with open(os.path.join(os.environ["HOME"], "starts"), "a") as f:
        f.write(f"{os.getpid()}\n")
    print(f"probe started; token is {os.environ.get('TOKEN')}", file=sys.stderr, flush=True)
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
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "probe", "version": PROBE_VERSION}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": TOOLS}})
        elif method == "tools/call":
            out = call(params.get("name"), params.get("arguments") or {})
            if out is None:
                send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32602, "message": "no such tool"}})
            else:
                send({"jsonrpc": "2.0", "id": mid, "result": text(out)})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        else:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "method not found"}})


main()
