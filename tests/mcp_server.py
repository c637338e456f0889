"""A real MCP server (the official Python SDK, Streamable HTTP) for the gateway's tests.

Started by tests/vault.rs on loopback: `python3 mcp_server.py` prints its port, then serves
the tools `create_issue` and `delete_repo` at /mcp until killed. JSON answers, no SSE.
"""

import asyncio
import socket

from mcp.server.mcpserver import MCPServer

server = MCPServer("docket-test-upstream")


@server.tool()
def create_issue(title: str, body: str = "") -> str:
    """Opens an issue (pretends to) and says which."""
    return f"created issue {title!r} ({len(body)} bytes)"


@server.tool()
def delete_repo(name: str) -> str:
    """Deletes a repository (pretends to)."""
    return f"deleted {name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    port = free_port()
    print(port, flush=True)
    asyncio.run(server.run_streamable_http_async(host="127.0.0.1", port=port, json_response=True))

if __name__ == "__main__":
    main()
