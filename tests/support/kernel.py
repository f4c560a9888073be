"""Run code in a kernel of a user's server through the server's REST and websocket API."""

from __future__ import annotations

import json
import uuid

import requests
import websocket


def run_in_kernel(
    hub_url: str, user: str, token: str, code: str, kernel: str = "desilab-cpu"
) -> str:
    """Start ``kernel`` in ``user``'s server, run ``code``, return its stdout; raise on error."""
    base = f"{hub_url}/user/{user}/api"
    headers = {"Authorization": f"token {token}"}
    r = requests.post(f"{base}/kernels", json={"name": kernel}, headers=headers, timeout=60)
    r.raise_for_status()
    kernel_id = r.json()["id"]
    ws_url = base.replace("http", "ws", 1) + f"/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=90)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": user,
                        "session": uuid.uuid4().hex,
                        "msg_type": "execute_request",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {"code": code, "silent": False, "allow_stdin": False},
                    "channel": "shell",
                }
            )
        )
        out, error = [], None
        while True:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                error = "\n".join(msg["content"]["traceback"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                break
    finally:
        ws.close()
        requests.delete(f"{base}/kernels/{kernel_id}", headers=headers, timeout=30)
    if error:
        raise AssertionError(f"kernel error:\n{error}")
    return "".join(out)
