"""Helpers for the control-plane tests (imported by test_api_*.py; no tests here).

The api under test is started by scripts/tiers/50-api-python.sh, which exports
STARLING_API_URL, STARLING_API_INTERNAL_URL, STARLING_API_BOOTSTRAP, STARLING_API_KEK and
STARLING_API_DB_URL.
"""

import base64
import http.client
import json
import os
import subprocess
import urllib.parse
import uuid

URL = os.environ.get("STARLING_API_URL", "")
INTERNAL_URL = os.environ.get("STARLING_API_INTERNAL_URL", "")
BOOTSTRAP = os.environ.get("STARLING_API_BOOTSTRAP", "")
ACCOUNT = "00000000000000000000000000000001"


def request(method, path, token=None, body=None, base=None, headers=None):
    """One HTTP request; returns (status, headers, parsed JSON or text or None)."""
    parsed = urllib.parse.urlparse(base or URL)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    ctype = resp.getheader("Content-Type") or ""
    if raw and "json" in ctype:
        payload = json.loads(raw)
    elif raw:
        payload = raw.decode("utf-8", "replace")
    else:
        payload = None
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload


def unique(prefix):
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def make_token(role, token=None):
    status, _, body = request("POST", "/v1/tokens", token or BOOTSTRAP, {"name": role, "role": role})
    assert status == 201, body
    return body["token"]


def make_broker(ns=None, broker="b1", body=None, token=None):
    ns = ns or unique("ns")
    status, _, created = request("POST", "/v1/namespaces", token or BOOTSTRAP, {"name": ns})
    assert status == 201, created
    status, _, created = request("POST", f"/v1/namespaces/{ns}/brokers", token or BOOTSTRAP, dict({"name": broker}, **(body or {})))
    assert status == 201, created
    return ns, created


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def psql(sql):
    """Rows of a query on the api's database, through psql (one text column per row)."""
    out = subprocess.run(
        ["psql", "-X", "-q", "-At", os.environ["STARLING_API_DB_URL"], "-c", sql],
        check=True, capture_output=True, text=True,
    )
    return [line for line in out.stdout.splitlines() if line]
