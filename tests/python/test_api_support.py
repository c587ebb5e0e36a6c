"""Helpers for the control-plane tests (imported by test_api_*.py; no tests here).

The api under test is started by scripts/tiers/50-api-python.sh, which exports
STARLING_API_URL, STARLING_API_INTERNAL_URL, STARLING_API_BOOTSTRAP, STARLING_API_KEK and
STARLING_API_DB_URL. Run directly with `setup-schemathesis` to create the objects schemathesis
works on and print a write-role token.
"""

import base64
import http.client
import json
import os
import subprocess
import sys
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


def setup_schemathesis():
    """Creates namespace and broker `demo` and returns a write-role token."""
    write = make_token("write")
    for ns in ["demo", "doomed-native", "doomed-compat"]:
        status, _, body = request("POST", "/v1/namespaces", write, {"name": ns})
        assert status == 201, body
    # `demo` is operator-managed, so that a generated DELETE cannot remove it (409 without the
    # operator's header) and every other operation keeps finding it.
    managed = {"kind": "Broker", "namespace": "schemathesis", "name": "demo"}
    for broker in ["demo", "doomed-native", "doomed-compat"]:
        body = {"name": broker, "managedBy": managed} if broker == "demo" else {"name": broker}
        status, _, created = request("POST", "/v1/namespaces/demo/brokers", write, body)
        assert status == 201, created
    return write


def har_summary(openapi_url, har_path, min_requests=100):
    """Prints requests and 2xx answers per operation of a schemathesis HAR file (flagging
    operations with fewer than `min_requests` requests); fails when any answer was a 5xx."""
    import re
    status, _, doc = request("GET", urllib.parse.urlparse(openapi_url).path)
    assert status == 200
    ops = []
    for path, item in doc["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + "$")
        for method in item:
            ops.append((method.upper(), path, pattern))
    counts = {(m, p): [0, 0] for m, p, _ in ops}
    server_errors = 0
    with open(har_path) as f:
        har = json.load(f)
    for entry in har["log"]["entries"]:
        method = entry["request"]["method"].upper()
        path = urllib.parse.urlparse(entry["request"]["url"]).path
        code = entry["response"]["status"]
        server_errors += code >= 500
        for m, p, pattern in ops:
            if m == method and pattern.match(path):
                counts[(m, p)][0] += 1
                counts[(m, p)][1] += 200 <= code < 300
                break
    ok = server_errors == 0
    print(f"{'requests':>8} {'2xx':>5}  operation")
    for (m, p), (n, good) in sorted(counts.items(), key=lambda kv: kv[0][1]):
        flag = "" if n >= min_requests else "   <-- fewer than %d requests" % min_requests
        print(f"{n:>8} {good:>5}  {m} {p}{flag}")
    no_2xx = [f"{m} {p}" for (m, p), (_, good) in counts.items() if good == 0]
    print(f"operations without a 2xx answer: {len(no_2xx)} of {len(counts)}: {no_2xx}")
    print(f"5xx answers: {server_errors}")
    return ok


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "setup-schemathesis":
    print(setup_schemathesis())
elif __name__ == "__main__" and len(sys.argv) > 3 and sys.argv[1] == "har-summary":
    sys.exit(0 if har_summary(sys.argv[2], sys.argv[3]) else 1)
