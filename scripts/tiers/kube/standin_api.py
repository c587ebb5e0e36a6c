#!/usr/bin/env python3
"""A stand-in for the Starling api's four native broker routes, for tier 70-kube.

The real `starling-api` has no HTTP routes on main yet, so the kube tier runs the operator against
this small real HTTP server instead. It implements only the contract the operator uses:

  POST   /v1/namespaces                      {name}                     -> 201, 409 if it exists
  POST   /v1/namespaces/{ns}/brokers         {name, ..., managedBy}     -> 201 {id, secret, ...}, 409
  GET    /v1/namespaces/{ns}/brokers/{b}                                -> 200 broker, 404
  PATCH  /v1/namespaces/{ns}/brokers/{b}     needs X-Starling-Managed-By -> 200, 403, 404
  DELETE /v1/namespaces/{ns}/brokers/{b}     needs X-Starling-Managed-By -> 204, 403, 404

Every request needs `Authorization: Bearer <token>`. Each request is appended as one JSON line
to the log file, so the tier can assert what the operator sent.

usage: standin_api.py TOKEN PORT_FILE LOG_FILE [PORT]
"""
import json
import re
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN, PORT_FILE, LOG_FILE = sys.argv[1:4]
PORT = int(sys.argv[4]) if len(sys.argv) > 4 else 0
NAMESPACES = set()
BROKERS = {}


def managed_by(b):
    m = b.get("managedBy") or {}
    return f"{m.get('kind')}/{m.get('namespace')}/{m.get('name')}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/problem+json" if status >= 400 else "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with open(LOG_FILE, "a") as log:
            log.write(json.dumps({
                "method": self.command, "path": self.path, "body": body,
                "managedBy": self.headers.get("x-starling-managed-by"),
                "authorized": self.headers.get("authorization") == f"Bearer {TOKEN}",
            }) + "\n")
        if self.headers.get("authorization") != f"Bearer {TOKEN}":
            return self.reply(401, {"title": "unauthorized"})
        if self.path == "/v1/namespaces" and self.command == "POST":
            if body["name"] in NAMESPACES:
                return self.reply(409, {"title": "namespace exists"})
            NAMESPACES.add(body["name"])
            return self.reply(201, {"name": body["name"]})
        m = re.fullmatch(r"/v1/namespaces/([a-z0-9-]+)/brokers(?:/([a-z0-9-]+))?", self.path)
        if not m:
            return self.reply(404, {"title": "no such route"})
        ns, name = m.groups()
        if name is None and self.command == "POST":
            key = (ns, body["name"])
            if key in BROKERS:
                return self.reply(409, {"title": "broker exists"})
            broker = dict(body, id=secrets.token_hex(8), namespace=ns)
            BROKERS[key] = broker
            return self.reply(201, dict(broker, secret=secrets.token_urlsafe(24)))
        broker = BROKERS.get((ns, name))
        if broker is None:
            return self.reply(404, {"title": "no such broker"})
        if self.command == "GET":
            return self.reply(200, broker)
        if self.headers.get("x-starling-managed-by") != managed_by(broker):
            return self.reply(403, {"title": "managed by " + managed_by(broker)})
        if self.command == "PATCH":
            broker.update(body or {})
            return self.reply(200, broker)
        if self.command == "DELETE":
            del BROKERS[(ns, name)]
            return self.reply(204)
        return self.reply(405, {"title": "method not allowed"})

    do_GET = do_POST = do_PATCH = do_DELETE = handle_any


ThreadingHTTPServer.allow_reuse_address = True
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
with open(PORT_FILE, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
