"""A tiny MCP server for the picode-tools integration tests.

Speaks JSON-RPC 2.0 over stdio, one message per line, and offers one tool,
`add`. If PICODE_TEST_MARKER is set, it writes that file on start, so tests
can tell whether (and when) the server was launched.
"""

import json
import os
import sys


def reply(msg_id, result=None, error=None):
    message = {"jsonrpc": "2.0", "id": msg_id}
    if error is not None:
        message["error"] = error
    else:
        message["result"] = result
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


SUPPORTED = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]

ADD = {
    "name": "add",
    "description": "Add two numbers.",
    "inputSchema": {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    },
}


def main():
    marker = os.environ.get("PICODE_TEST_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write("started\n")
    print("mcp test server starting", file=sys.stderr, flush=True)
    initialized = False
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        method = msg.get("method")
        msg_id = msg.get("id")
        if msg_id is None:
            # A notification: nothing to answer.
            if method == "notifications/initialized":
                initialized = True
            continue
        if method == "initialize":
            # Version negotiation as the specification has it: the client's
            # version if this server speaks it, else the server's latest.
            asked = msg["params"]["protocolVersion"]
            version = asked if asked in SUPPORTED else SUPPORTED[-1]
            reply(msg_id, {
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "calc", "version": "1.0"},
            })
        elif method == "tools/list":
            if not initialized:
                reply(msg_id, error={"code": -32002, "message": "not initialized"})
            else:
                reply(msg_id, {"tools": [ADD]})
        elif method == "tools/call":
            params = msg["params"]
            if params["name"] != "add":
                reply(msg_id, error={"code": -32602, "message": "unknown tool"})
                continue
            args = params.get("arguments", {})
            try:
                total = args["a"] + args["b"]
            except (KeyError, TypeError) as exc:
                reply(msg_id, {"content": [{"type": "text", "text": f"bad arguments: {exc}"}], "isError": True})
                continue
            if isinstance(total, float) and total.is_integer():
                total = int(total)
            reply(msg_id, {"content": [{"type": "text", "text": str(total)}], "isError": False})
        elif method == "ping":
            reply(msg_id, {})
        else:
            reply(msg_id, error={"code": -32601, "message": f"unknown method {method}"})


if __name__ == "__main__":
    main()
