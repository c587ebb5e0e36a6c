"""Interoperability of starling-broker with Mosquitto's command-line clients.

mosquitto_pub and mosquitto_sub (libmosquitto, an independent implementation) speak MQTT 3.1.1
(`-V 311`) and 5.0 (`-V 5`) to a broker that scripts/tiers/20-broker-interop.sh started; its
address comes from STARLING_MQTT_HOST and STARLING_MQTT_PORT.

Waiting: a subscriber is known to be subscribed when it prints a retained "probe" message that
was stored before it started (retained messages follow the SUBACK). Every subprocess has a
timeout, and every read of its output has a deadline.
"""

import os
import queue
import signal
import subprocess
import threading
import uuid

import pytest

HOST = os.environ.get("STARLING_MQTT_HOST", "127.0.0.1")
PORT = os.environ.get("STARLING_MQTT_PORT")

pytestmark = pytest.mark.skipif(
    PORT is None, reason="needs a broker: run scripts/tiers/20-broker-interop.sh"
)

TIMEOUT = 10
VERSIONS = ["311", "5"]
FORMAT = "%t|%q|%r|%p"


def unique(prefix):
    return f"interop/{prefix}/{uuid.uuid4().hex[:12]}"


def pub(version, topic, payload, *extra):
    """Runs mosquitto_pub to the end; it exits after the QoS exchange completed."""
    args = ["mosquitto_pub", "-h", HOST, "-p", PORT, "-V", version, "-t", topic]
    args += ["-n"] if payload is None else ["-m", payload]
    subprocess.run(args + list(extra), check=True, timeout=TIMEOUT, capture_output=True)


class Sub:
    """A running mosquitto_sub whose output lines are read with deadlines."""

    def __init__(self, version, topics, *extra, count=None, probe=True):
        self.probe = None
        if probe:
            # A retained probe only this subscriber asks for: its arrival means subscribed.
            self.probe = unique("probe")
            pub(version, self.probe, "ready", "-r", "-q", "1")
            topics = [self.probe] + list(topics)
        args = ["mosquitto_sub", "-h", HOST, "-p", PORT, "-V", version, "-F", FORMAT]
        args += ["-W", str(TIMEOUT * 2)]
        for t in topics:
            args += ["-t", t]
        if count is not None:
            args += ["-C", str(count + (1 if probe else 0))]
        self.proc = subprocess.Popen(
            args + list(extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        if probe:
            # The probe's QoS is the lower of 1 and the subscription's.
            topic, _qos, retain, payload = self.line().split("|", 3)
            assert (topic, retain, payload) == (self.probe, "1", "ready")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self):
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            self.stop()
            pytest.fail("mosquitto_sub printed nothing in time")
        if line is None:
            pytest.fail(f"mosquitto_sub ended: {self.proc.stderr.read()}")
        return line

    def wait(self):
        """Waits for a `-C` subscriber to exit by itself."""
        assert self.proc.wait(timeout=TIMEOUT) == 0, self.proc.stderr.read()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        if self.probe:
            # Clear the retained probe.
            pub("5", self.probe, None, "-r")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_reaches_subscriber_at_each_qos(version, qos):
    topic = unique(f"qos{qos}-v{version}")
    sub = Sub(version, [topic], "-q", str(qos), count=2)
    try:
        pub(version, topic, "first", "-q", str(qos))
        pub(version, topic, "second", "-q", str(qos))
        assert sub.line() == f"{topic}|{qos}|0|first"
        assert sub.line() == f"{topic}|{qos}|0|second"
        sub.wait()
    finally:
        sub.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_subscription_qos_caps_delivery_qos(version):
    topic = unique(f"cap-v{version}")
    sub = Sub(version, [topic], "-q", "1", count=1)
    try:
        pub(version, topic, "two", "-q", "2")
        assert sub.line() == f"{topic}|1|0|two"
        sub.wait()
    finally:
        sub.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_message_set_replaced_and_cleared(version):
    topic = unique(f"retained-v{version}")
    pub(version, topic, "old", "-r", "-q", "1")
    pub(version, topic, "new", "-r", "-q", "1")
    # A new subscriber gets the latest retained message with RETAIN set, and no probe is
    # needed: the retained message itself shows the subscription is in place.
    sub = Sub(version, [topic], "-q", "1", count=1, probe=False)
    try:
        assert sub.line() == f"{topic}|1|1|new"
        sub.wait()
    finally:
        sub.stop()
    # An empty retained payload clears it: the next subscriber's first message is the probe,
    # then a live one.
    pub(version, topic, None, "-r", "-q", "1")
    sub = Sub(version, [topic], "-q", "1", count=1)
    try:
        pub(version, topic, "live", "-q", "1")
        assert sub.line() == f"{topic}|1|0|live"
        sub.wait()
    finally:
        sub.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_will_is_published_when_a_client_is_killed(version):
    will_topic = unique(f"will-v{version}")
    watcher = Sub(version, [will_topic], "-q", "1", count=1)
    dying = Sub(
        version,
        [unique("dying")],
        "--will-topic",
        will_topic,
        "--will-payload",
        "gone",
        "--will-qos",
        "1",
        "-k",
        "60",
    )
    try:
        dying.kill()
        assert watcher.line() == f"{will_topic}|1|0|gone"
        watcher.wait()
    finally:
        dying.stop()
        watcher.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_will_is_not_published_after_a_clean_disconnect(version):
    will_topic = unique(f"nowill-v{version}")
    watcher = Sub(version, [will_topic], "-q", "1", count=1)
    # A -C 1 subscriber with a will: it receives its probe, then disconnects normally.
    polite = Sub(
        version, [], "--will-topic", will_topic, "--will-payload", "never", count=0
    )
    try:
        polite.wait()
        # Anything published now arrives after a wrongly published will would have.
        pub(version, will_topic, "after", "-q", "1")
        assert watcher.line() == f"{will_topic}|1|0|after"
        watcher.wait()
    finally:
        polite.stop()
        watcher.stop()
