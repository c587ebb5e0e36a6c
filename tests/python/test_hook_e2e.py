"""The on-publish hook end to end, checked by an independent verifier.

`starling-dev` (the real binary, SQLite, its embedded broker) runs with a fresh data
directory. A webhook server in this process, on loopback, verifies every request the way
Cloudflare's published steps say a hook should: it reads `X-Signature-Ed25519` (standard base64),
`X-Signature-Timestamp` and `X-Signature-Key-Id`, fetches the broker's JWKS from
`/v1/namespaces/{ns}/brokers/{broker}/publickeys`, picks the key by `kid`, and verifies the Ed25519
signature over the timestamp string followed by the raw body with the `cryptography` package
(no Starling code). It answers 200 with the messages: payloads on `t/upper` uppercased (with a
user property added), messages on `t/drop` left out, everything else unchanged.

The hook URL is set on broker `demo` through the REST API (PATCH). A paho-mqtt subscriber and
publisher (MQTT 5, QoS 1) use the plaintext MQTT listener with tokens from the credentials route.
The test asserts: subscribers get the hook's version of each message and never a dropped one;
the publisher's PUBACK for a dropped message carries 0x87 (Not authorized); every request the
hook got verified, and the verifier refuses a tampered request. Every wait has a deadline.

Started by scripts/tiers/55-hook.sh, which builds the binary and sets STARLING_DEV_BIN.
"""

import base64
import json
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import paho.mqtt.client as mqtt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BIN = os.environ.get("STARLING_DEV_BIN")

pytestmark = pytest.mark.skipif(
    BIN is None, reason="needs starling-dev: run scripts/tiers/55-hook.sh"
)

TIMEOUT = 15
NS, BROKER = "demo", "demo"
NOT_AUTHORIZED = 0x87
# How far a request's timestamp may be from this machine's clock (a replay bound).
MAX_SKEW_SECS = 300


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Dev:
    """`starling-dev` on port 0 everywhere, in its own process group; reads its banner."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="starling-hook-")
        at = "127.0.0.1:0"
        args = [BIN, "--data-dir", self.dir.name]
        for flag in ("--api-addr", "--internal-addr", "--mqtt", "--ws", "--mqtts", "--wss",
                     "--broker-http"):
            args += [flag, at]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), "NO_COLOR": "1"},
            start_new_session=True,
            text=True,
        )
        self.stdout = queue.Queue()
        self.stderr = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append),
                         daemon=True).start()
        banner = ""
        deadline = time.monotonic() + 60
        while "WebSockets" not in banner:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"dev did not start:\n{banner}\n" + "\n".join(self.stderr))
            try:
                line = self.stdout.get(timeout=min(left, 1))
            except queue.Empty:
                continue
            banner += line

        def grab(pattern, what):
            m = re.search(pattern, banner, re.M)
            assert m, f"the banner has no {what}:\n{banner}"
            return m.group(1)

        self.api = grab(r"^\s*API\s+(http://\S+)", "API URL")
        self.admin = grab(r"^\s*admin token\s+(\S+)", "admin token")
        mqtt_addr = grab(r"mqtt://(\d+\.\d+\.\d+\.\d+:\d+)", "MQTT address")
        host, port = mqtt_addr.rsplit(":", 1)
        self.mqtt = (host, int(port))

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.admin}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.dir.cleanup()


class Verifier:
    """Cloudflare's published verification steps, with `cryptography` and the public JWKS."""

    def __init__(self, jwks_url, admin):
        self.jwks_url = jwks_url
        self.admin = admin
        self.keys = {}
        self.lock = threading.Lock()

    def _fetch(self):
        req = urllib.request.Request(self.jwks_url)
        req.add_header("Authorization", f"Bearer {self.admin}")
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            jwks = json.loads(r.read())
        keys = {}
        for k in jwks["keys"]:
            assert "d" not in k, "a private part in /publickeys"
            assert (k["kty"], k["crv"]) == ("OKP", "Ed25519"), k
            keys[k["kid"]] = Ed25519PublicKey.from_public_bytes(b64url_decode(k["x"]))
        with self.lock:
            self.keys = keys

    def key(self, kid):
        with self.lock:
            key = self.keys.get(kid)
        if key is None:
            # A kid not seen yet (a rotation): fetch the key set again.
            self._fetch()
            with self.lock:
                key = self.keys.get(kid)
        return key

    def verify(self, headers, body):
        """Returns None when the request verifies, else why not."""
        signature = headers.get("X-Signature-Ed25519")
        timestamp = headers.get("X-Signature-Timestamp")
        kid = headers.get("X-Signature-Key-Id")
        if not (signature and timestamp and kid):
            return "a signature header is missing"
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > MAX_SKEW_SECS:
            return f"timestamp {timestamp!r} is not recent unix seconds"
        key = self.key(kid)
        if key is None:
            return f"kid {kid} is not in /publickeys"
        try:
            raw = base64.b64decode(signature, validate=True)
        except ValueError:
            return "the signature is not standard base64"
        try:
            key.verify(raw, timestamp.encode() + body)
        except InvalidSignature:
            return "bad signature"
        return None


class Hook:
    """The user's webhook: verifies, then uppercases `t/upper` and drops `t/drop`."""

    def __init__(self, verifier):
        self.verifier = verifier
        self.lock = threading.Lock()
        self.verified = 0
        self.failures = []
        self.requests = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k: self.headers.get(k) for k in (
                    "X-Signature-Ed25519", "X-Signature-Timestamp", "X-Signature-Key-Id",
                    "Content-Type")}
                why = hook.verifier.verify(headers, body)
                with hook.lock:
                    hook.requests.append((headers, body))
                    if why is None:
                        hook.verified += 1
                    else:
                        hook.failures.append(why)
                if why is not None:
                    self._answer(401, b'{"error":"signature"}')
                    return
                self._answer(200, json.dumps(hook.decide(json.loads(body))).encode())

            def _answer(self, status, data):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def decide(messages):
        out = []
        for m in messages:
            if m["topic"] == "t/drop":
                continue
            if m["topic"] == "t/upper":
                m = dict(m)
                if m.get("payloadEncoding") == "base64":
                    m["payload"] = base64.b64encode(base64.b64decode(m["payload"]).upper()).decode()
                else:
                    m["payload"] = m["payload"].upper()
                m["userProperties"] = list(m.get("userProperties") or []) + [
                    {"key": "hook", "value": "upper"}]
            out.append(m)
        return out

    def messages(self):
        with self.lock:
            return [m for _, body in self.requests for m in json.loads(body)]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=TIMEOUT)


class Client:
    """A paho MQTT 5 client on its own network thread; callbacks feed what the test waits on."""

    def __init__(self, addr, client_id, token):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set("hook-test", token)
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.messages = queue.Queue()
        self.acks = {}
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put(rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put((mid, rcs))
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_publish = lambda c, u, mid, rc, props: self.acks.__setitem__(mid, rc)
        self.c.connect(addr[0], addr[1], keepalive=30)
        self.c.loop_start()
        rc = self.connacks.get(timeout=TIMEOUT)
        assert not rc.is_failure, rc

    def subscribe(self, topic):
        result, mid = self.c.subscribe(topic, 1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        got_mid, rcs = self.subacks.get(timeout=TIMEOUT)
        assert got_mid == mid and [rc.value for rc in rcs] == [1], rcs

    def publish(self, topic, payload, text=True):
        """Publishes at QoS 1 and returns the PUBACK's reason code."""
        props = Properties(PacketTypes.PUBLISH)
        if text:
            props.PayloadFormatIndicator = 1
            props.ContentType = "text/plain"
        props.UserProperty = ("origin", "paho")
        info = self.c.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published(), f"no PUBACK for {topic}"
        return self.acks[info.mid].value

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module")
def dev():
    d = Dev()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def hook(dev):
    h = Hook(Verifier(f"{dev.api}/v1/namespaces/{NS}/brokers/{BROKER}/publickeys", dev.admin))
    yield h
    h.stop()


def tokens(dev, *client_ids):
    query = "&".join(f"clientid={c}" for c in client_ids)
    status, body = dev.call(
        "GET",
        f"/v1/namespaces/{NS}/brokers/{BROKER}/credentials?number={len(client_ids)}"
        f"&type=TOKEN&topicAcl=%23&{query}",
    )
    assert status == 200, body
    return [body[c] for c in client_ids]


def until_uppercased(pub, sub, prefix, done=lambda: True):
    """Publishes `t/upper` probes until one comes back uppercased and `done()` holds; returns
    every message the subscriber got meanwhile. Probes before the hook takes effect pass
    unchanged, in order."""
    got = []
    deadline = time.monotonic() + 30
    for i in range(10_000):
        assert time.monotonic() < deadline, f"{prefix}: the hook never took effect"
        assert pub.publish("t/upper", f"{prefix}-{i}") == 0
        m = sub.messages.get(timeout=TIMEOUT)
        got.append(m)
        assert m.topic == "t/upper"
        if m.payload == f"{prefix}-{i}".upper().encode() and done():
            return got
        assert m.payload.lower() == f"{prefix}-{i}".encode(), m.payload
    raise AssertionError(f"{prefix}: the hook never took effect")


def token_kid(token):
    return json.loads(b64url_decode(token.split(".")[0]))["kid"]


def test_messages_go_through_a_verified_hook_that_changes_and_drops_them(dev, hook):
    sub_token, pub_token = tokens(dev, "hook-sub", "hook-pub")
    sub = Client(dev.mqtt, "hook-sub", sub_token)
    pub = Client(dev.mqtt, "hook-pub", pub_token)
    received = []

    def next_message():
        m = sub.messages.get(timeout=TIMEOUT)
        received.append(m)
        return m

    try:
        sub.subscribe("t/#")
        status, body = dev.call("PATCH", f"/v1/namespaces/{NS}/brokers/{BROKER}",
                                {"on_publish": {"url": hook.url}})
        assert status == 200, body
        assert body["on_publish"] == {"url": hook.url}

        # The broker picks the hook up from the store's change feed: probe until a message comes
        # back uppercased (until then probes pass unchanged, in order).
        received += until_uppercased(pub, sub, "probe")

        assert pub.publish("t/upper", "hello hook") == 0
        assert pub.publish("t/drop", "must never arrive") == NOT_AUTHORIZED
        assert pub.publish("t/upper", b"\x00bin\xff", text=False) == 0
        assert pub.publish("t/plain", "unchanged") == 0
        # Delivery keeps the publisher's order, so everything published before `t/plain`
        # has arrived once it has.
        got = []
        while not got or got[-1].topic != "t/plain":
            got.append(next_message())
        assert [(m.topic, m.payload) for m in got] == [
            ("t/upper", b"HELLO HOOK"),
            ("t/upper", b"\x00BIN\xff"),
            ("t/plain", b"unchanged"),
        ]
        upper = got[0].properties
        assert upper.UserProperty == [("origin", "paho"), ("hook", "upper")]
        assert upper.ContentType == "text/plain" and upper.PayloadFormatIndicator == 1
        assert got[2].properties.UserProperty == [("origin", "paho")]
        assert all(m.topic != "t/drop" for m in received), "a dropped message was delivered"

        # What the hook was sent.
        sent = {m["payload"]: m for m in hook.messages()}
        hello = sent["hello hook"]
        assert isinstance(hello["mid"], int)
        assert (hello["broker"], hello["topic"], hello["clientId"], hello["qos"],
                hello["retain"], hello["contentType"], hello["payloadFormatIndicator"]) == (
            f"{BROKER}.{NS}.localhost", "t/upper", "hook-pub", 1, False, "text/plain", 1)
        assert hello["jti"] and "payloadEncoding" not in hello
        assert abs(hello["receivedAt"] - time.time()) < MAX_SKEW_SECS
        assert {"key": "origin", "value": "paho"} in hello["userProperties"]
        assert "must never arrive" in sent, "the dropped message went to the hook"
        binary = sent[base64.b64encode(b"\x00bin\xff").decode()]
        assert (binary["payloadEncoding"], binary["payloadFormatIndicator"]) == ("base64", 0)

        with hook.lock:
            verified, failures = hook.verified, list(hook.failures)
            sample_headers, sample_body = hook.requests[-1]
        assert verified > 0
        assert failures == [], failures
        assert sample_headers["Content-Type"] == "application/json"
    finally:
        pub.close()
        sub.close()
        dev.call("PATCH", f"/v1/namespaces/{NS}/brokers/{BROKER}", {"on_publish": None})

    # The verifier can fail: a changed body, timestamp, signature or key id is refused.
    v = hook.verifier
    assert v.verify(sample_headers, sample_body) is None
    assert v.verify(sample_headers, sample_body + b" ") == "bad signature"
    ts = str(int(sample_headers["X-Signature-Timestamp"]) + 1)
    assert v.verify({**sample_headers, "X-Signature-Timestamp": ts}, sample_body) == "bad signature"
    sig = bytearray(base64.b64decode(sample_headers["X-Signature-Ed25519"]))
    sig[0] ^= 1
    assert v.verify({**sample_headers, "X-Signature-Ed25519": base64.b64encode(bytes(sig)).decode()},
                    sample_body) == "bad signature"
    assert "not in /publickeys" in v.verify(
        {**sample_headers, "X-Signature-Key-Id": "unknown-kid"}, sample_body)


def test_after_a_key_rotation_the_hook_is_signed_with_the_new_hook_key(dev, hook):
    account = "00000000000000000000000000000001"
    compat = f"/client/v4/accounts/{account}/pubsub/namespaces/{NS}/brokers/{BROKER}"
    sub_token, pub_token = tokens(dev, "rot-sub", "rot-pub")
    token_kid_before = token_kid(pub_token)
    sub = Client(dev.mqtt, "rot-sub", sub_token)
    pub = Client(dev.mqtt, "rot-pub", pub_token)

    def last_kid():
        with hook.lock:
            return hook.requests[-1][0]["X-Signature-Key-Id"] if hook.requests else None

    try:
        sub.subscribe("t/#")
        # Set through the Cloudflare-compatible route this time.
        status, body = dev.call("PATCH", compat, {"on_publish": {"url": hook.url}})
        assert status == 200 and body["success"], body
        until_uppercased(pub, sub, "before")
        hook_kid_before = last_kid()
        # The hook has a key of its own, published in /publickeys (the verifier found it there)
        # and never the key that signs client tokens.
        assert hook_kid_before and hook_kid_before != token_kid_before

        status, body = dev.call("POST", f"/v1/namespaces/{NS}/brokers/{BROKER}/keys/rotate")
        assert status == 200, body
        new_hook_kid = body["hookKid"]
        assert new_hook_kid != hook_kid_before
        (new_token,) = tokens(dev, "rot-new")
        assert token_kid(new_token) not in (token_kid_before, new_hook_kid)
        # The connected clients stay (the old key verifies until it retires); the hook's
        # requests move to the new hook key, which the verifier fetches from /publickeys.
        until_uppercased(pub, sub, "after", done=lambda: last_kid() == new_hook_kid)
        with hook.lock:
            failures = list(hook.failures)
        assert failures == [], failures
    finally:
        pub.close()
        sub.close()
        dev.call("PATCH", compat, {"on_publish": {"url": None}})
