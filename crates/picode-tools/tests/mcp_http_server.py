"""A streamable-HTTP MCP server for the picode-tools tests, made with the
official MCP Python SDK (FastMCP). Usage: mcp_http_server.py PORT; it serves
http://127.0.0.1:PORT/mcp with one tool, `add`."""

import sys

from mcp.server.fastmcp import FastMCP

server = FastMCP("calc", host="127.0.0.1", port=int(sys.argv[1]))


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


server.run(transport="streamable-http")
