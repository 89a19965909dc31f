"""Can a public share link be made? Asked quickly, before Gradio would wait 30 s to find out."""
from __future__ import annotations

import os
import socket

SHARE_SERVICE = os.environ.get("VGLM_SHARE_SERVICE", "api.gradio.app:443")  # host:port of Gradio's tunnel broker


def share_service_reachable(address: str = SHARE_SERVICE, timeout_s: float = 3.0) -> tuple[bool, str]:
    """(True, "") when a TCP connection opens in time, else (False, why)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True, ""
    except OSError as exc:
        return False, f"{address} cannot be reached ({exc.strerror or exc})"
