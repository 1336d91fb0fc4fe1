#!/usr/bin/env python3
"""A service in Python on copycat-node, with the standard library only.

Publishes a small HTTP service as `http:NAME` through the node's local API (keeping the
publication alive while it runs), waits until the service `http:CALL` is ready, calls it
through the node's gateway, prints the answer, withdraws its publication and exits.

    python3 examples/copper_client.py --api 127.0.0.1:5381 --gateway 127.0.0.1:5380 \
        --name hello-py --call hello-py

With --call naming its own service, it calls itself through the gateway. Exit status 0
when the call succeeded.
"""

import argparse
import http.server
import json
import sys
import threading
import urllib.error
import urllib.request


def api(base, method, path, body=None, timeout=30):
    """Calls the node's API; returns (status, decoded JSON or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None)


class Greeter(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a greeting naming the path it was asked for."""

    def do_GET(self):
        body = json.dumps({"greeting": "hello from python", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="127.0.0.1:5381", help="the node's local API")
    parser.add_argument("--gateway", default="127.0.0.1:5380", help="the node's gateway")
    parser.add_argument("--name", default="hello-py", help="the service to publish (http:NAME)")
    parser.add_argument("--call", default="hello-py", help="the service to call (http:CALL)")
    parser.add_argument("--ttl-ms", type=int, default=3000, help="publication time to live")
    args = parser.parse_args()
    base = "http://" + args.api

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Greeter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = "http://127.0.0.1:%d" % server.server_address[1]

    status, published = api(base, "POST", "/v1/publications", {
        "name": "http:" + args.name, "endpoint": endpoint, "ttl_ms": args.ttl_ms})
    if status != 201:
        print("publish failed: %s %s" % (status, published), file=sys.stderr)
        return 1
    pid = published["id"]
    print("published http:%s at %s as %s" % (args.name, endpoint, pid))

    # The publication lives while keepalives come at least every ttl_ms.
    stop = threading.Event()

    def keepalive():
        while not stop.wait(args.ttl_ms / 3000.0):
            api(base, "PUT", "/v1/publications/%s/keepalive" % pid)

    threading.Thread(target=keepalive, daemon=True).start()
    try:
        status, ready = api(base, "GET", "/v1/ready?name=http:%s&wait_ms=20000" % args.call,
                            timeout=30)
        if status != 200:
            print("http:%s not ready: %s %s" % (args.call, status, ready), file=sys.stderr)
            return 1
        print("http:%s is ready at %s" % (args.call, ready[0]["endpoint"]))
        url = "http://%s/%s/greet?from=%s" % (args.gateway, args.call, args.name)
        with urllib.request.urlopen(url, timeout=30) as response:
            answer = json.loads(response.read())
        print("gateway answered: %s" % json.dumps(answer, sort_keys=True))
        return 0
    except urllib.error.HTTPError as e:
        print("gateway call failed: %s %s (%s)" % (e.code, e.read().decode(errors="replace"),
                                                   e.headers.get("X-Copper-Error")),
              file=sys.stderr)
        return 1
    finally:
        stop.set()
        api(base, "DELETE", "/v1/publications/%s" % pid)
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
