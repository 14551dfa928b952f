"""Admin API client for the CLI: blocking, one request per connection."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from raftxmpp.admin.server import socket_path


class AdminClientError(Exception):
    """The node could not be reached, or refused the request; the message is for the user."""


def call(data_dir: Path, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
    path = socket_path(data_dir)
    if not path.exists():
        raise AdminClientError(f"no running node with data dir {data_dir} (no {path.name} there)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except PermissionError:
        raise AdminClientError(f"permission denied on {path}: run as the node's owner") from None
    except (ConnectionRefusedError, FileNotFoundError):
        raise AdminClientError(f"no running node with data dir {data_dir}") from None
    except TimeoutError:
        raise AdminClientError(f"the node did not answer within {timeout:g}s") from None
    finally:
        sock.close()
    try:
        response = json.loads(data)
    except ValueError:
        raise AdminClientError("the node closed the admin connection without an answer") from None
    if not response.get("ok"):
        raise AdminClientError(response.get("error", "request failed"))
    return response["result"]
