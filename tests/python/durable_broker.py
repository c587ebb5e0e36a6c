"""What the durability tests share: the broker binary as a process on a data directory, restarted
and killed at will, and paho-mqtt clients driven by a loop thread of their own.

`Broker` starts `starling-broker` (the binary in STARLING_BROKER_BIN, the release build that
scripts/tiers/25-durability.sh makes) with `--auth none`, loopback port 0 for MQTT and HTTP and
`--data-dir`; it reads the bound addresses from the JSON log and waits for `/readyz` to answer
200, which the broker does only once the store is restored. Every start logs to a file of its own
(`broker-N.log` in the log directory), kept for the failure message.

`Mqtt` wraps one paho-mqtt client (MQTT 5): `connect` waits for the CONNACK and returns it, the
network loop runs in a thread that ends when the connection does; PUBACK/PUBCOMP reason codes
arrive in a queue by packet id, so the caller knows exactly which publishes were acknowledged.
The same `Mqtt` object may connect again (to a new address): paho keeps its session state, notably
the QoS 2 messages received and not yet released, so a PUBLISH resent after a resume is not
delivered twice.
"""

import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BIN = os.environ.get("STARLING_BROKER_BIN")

# Bound of each single wait (a start, a CONNACK, an exit).
WAIT = 30.0


class Broker:
    """The broker binary on a data directory; one process at a time."""

    def __init__(self, data_dir, log_dir, config="", args=()):
        # `data_dir` None: no data directory (a replica of a cluster keeps its state in NATS).
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.args = list(args)
        self.config_path = os.path.join(log_dir, "broker.toml")
        with open(self.config_path, "w") as f:
            f.write('[log]\nformat = "json"\n[shutdown]\ndrain_timeout_secs = 2\n' + config)
        self.proc = None
        self.starts = 0
        self.mqtt = None
        self.http = None
        self.log_path = None

    def start(self):
        """Starts the broker and waits until /readyz answers 200; returns the seconds that took."""
        assert self.proc is None, "the broker is already running"
        self.starts += 1
        self.log_path = os.path.join(self.log_dir, f"broker-{self.starts}.log")
        began = time.monotonic()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [BIN, "--config", self.config_path, "--auth", "none",
                 "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0",
                 *(["--data-dir", self.data_dir] if self.data_dir else []), *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "RUST_LOG": "warn,starling_broker::server=info"},
            )
        self.mqtt = self.http = None
        deadline = began + WAIT
        while self.mqtt is None or self.http is None:
            self._fail_if_exited("before listening")
            self._read_addresses()
            if time.monotonic() > deadline:
                raise AssertionError(f"the broker logged no addresses in {WAIT} s\n{self.log_tail()}")
            time.sleep(0.02)
        while not self.ready():
            self._fail_if_exited("before it was ready")
            if time.monotonic() > deadline:
                raise AssertionError(f"/readyz did not answer 200 in {WAIT} s\n{self.log_tail()}")
            time.sleep(0.02)
        return time.monotonic() - began

    def _read_addresses(self):
        with open(self.log_path) as f:
            for line in f:
                try:
                    fields = json.loads(line).get("fields", {})
                except ValueError:
                    continue
                if fields.get("listener") == "mqtt" and "addr" in fields:
                    host, port = fields["addr"].rsplit(":", 1)
                    self.mqtt = (host, int(port))
                if "http_addr" in fields:
                    self.http = fields["http_addr"]

    def _fail_if_exited(self, when):
        if self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            raise AssertionError(f"the broker exited ({code}) {when}\n{self.log_tail()}")

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://{self.http}/readyz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig):
        """Sends `sig` and waits for the exit; returns the exit code (negative: the signal)."""
        assert self.proc is not None, "the broker is not running"
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the broker did not exit within {WAIT} s of signal {sig}\n"
                                 f"{self.log_tail()}")
        finally:
            self.proc = None
        return code

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log_tail(self, lines=40):
        if not self.log_path or not os.path.exists(self.log_path):
            return "(no log)"
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])

    def panics(self):
        found = []
        for n in range(1, self.starts + 1):
            path = os.path.join(self.log_dir, f"broker-{n}.log")
            if os.path.exists(path):
                with open(path) as f:
                    found += [f"{path}: {line}" for line in f if "panicked" in line]
        return found


def session_properties(expiry):
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = expiry
    return p


class Mqtt:
    """One paho-mqtt client (MQTT 5) whose network loop runs in a thread per connection."""

    def __init__(self, client_id, on_message=None, max_inflight=100):
        self.client_id = client_id
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        self.c.max_inflight_messages_set(max_inflight)
        self.c.max_queued_messages_set(0)
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        # (packet id, reason code value) of every PUBACK and PUBCOMP, in arrival order. Filled
        # under paho's locks, so the callback does nothing else.
        self.acks = queue.Queue()
        self.c.on_connect = lambda _c, _u, flags, rc, _p: self.connacks.put(
            (flags.session_present, rc.value))
        self.c.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.put([r.value for r in rcs])
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.put((mid, rc.value))
        if on_message is not None:
            self.c.on_message = on_message
        self.thread = None

    def connect(self, addr, clean_start, expiry=0):
        """Connects and waits for the CONNACK: returns (session_present, reason code)."""
        self.wait_closed()
        while not self.connacks.empty():
            self.connacks.get_nowait()
        self.c.connect(addr[0], addr[1], keepalive=60, clean_start=clean_start,
                       properties=session_properties(expiry))
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"mqtt-{self.client_id}")
        self.thread.start()
        try:
            return self.connacks.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no CONNACK in {WAIT} s") from None

    def _loop(self):
        while True:
            rc = self.c.loop(timeout=0.05)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return

    def connected(self):
        return self.thread is not None and self.thread.is_alive() and self.c.is_connected()

    def subscribe(self, topic_filter, qos):
        while not self.subacks.empty():
            self.subacks.get_nowait()
        self.c.subscribe(topic_filter, qos)
        try:
            codes = self.subacks.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no SUBACK in {WAIT} s") from None
        assert all(c < 0x80 for c in codes), f"{self.client_id}: SUBACK {codes}"
        return codes

    def disconnect(self):
        """Sends DISCONNECT (the session stays) and waits until the connection is closed."""
        if self.thread is not None and self.thread.is_alive():
            self.c.disconnect()
        self.wait_closed()

    def wait_closed(self):
        """Waits for the loop thread to end (the connection is gone: closed or broken)."""
        if self.thread is None:
            return
        self.thread.join(timeout=WAIT)
        assert not self.thread.is_alive(), f"{self.client_id}: the connection did not end"
        self.thread = None


def stop_signal(name):
    return {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}[name]
