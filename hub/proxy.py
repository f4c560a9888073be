"""The public proxy: Python configurable-http-proxy with room for a class logging in at once.

configurable-http-proxy 0.4 forwards every request with tornado's default
``AsyncHTTPClient``, which runs at most 10 requests at a time and fails the
queued ones after 20 s with a 503 ("Your server appears to be down"). Thirty
users pressing Start together queue behind ten spawn requests that each take
up to the hub's slow_spawn_timeout, so a third of them got a 503. This entry
point raises the limit before handing over to the proxy's own command line.

Usage: ``python -m desilab.hub.proxy [configurable-http-proxy options]``
"""

from __future__ import annotations

import os
import sys

from tornado.httpclient import AsyncHTTPClient

MAX_CLIENTS = int(os.environ.get("DESILAB_PROXY_MAX_CLIENTS", "1000"))


def main() -> None:
    AsyncHTTPClient.configure(None, max_clients=MAX_CLIENTS)
    from configurable_http_proxy.cli import main as proxy_main

    sys.argv[0] = "configurable-http-proxy"
    proxy_main()


if __name__ == "__main__":
    main()
