"""Acknowledged means durable, across crashes: the release broker killed at random moments.

The broker (`--data-dir`) is started, runs for a random moment while
paho-mqtt publishers send numbered QoS 1 and QoS 2 streams (and QoS 1 retained messages) to
three persistent subscribers (clean_start=0, session expiry 1 h) of which each is online or
offline at random in every run, and is then stopped with SIGKILL (one test) or SIGTERM (the
others: with `sync`, and with `interval`, whose graceful stop must flush too), at least 20
times. A publisher counts a message acknowledged only when its PUBACK (QoS 1) or PUBCOMP (QoS 2)
arrived with a success code; the rest is unacknowledged, which the broker may
deliver or not.

After every restart: every subscriber resumes its session (session_present=1), and the retained
message of each topic is the last acknowledged one or a later one that was sent. After the last
restart every subscriber is brought online until it has every acknowledged message, then:
- every acknowledged message reached every subscriber (QoS 1 at least once, QoS 2 once), at the
  QoS it was published with;
- no QoS 2 message, acknowledged or not, reached a subscriber twice (paho's session keeps the
  QoS 2 packet ids awaiting PUBREL across reconnects, so a resent PUBLISH is not a second
  delivery);
- nothing reached a subscriber that was never published;
- the broker never panicked.
Unacknowledged messages that arrived are counted and printed, never demanded.

The random choices come from one seed, printed first: STARLING_CRASH_SEED=N replays a run.
STARLING_CRASH_KILLS (default 20) and STARLING_CRASH_RATE (messages/s per publisher, default 400)
make a run longer or heavier. Started by scripts/tiers/25-durability.sh with STARLING_BROKER_BIN.
"""

import os
import queue
import random
import tempfile
import threading
import time
from collections import Counter, defaultdict

import pytest

from durable_broker import BIN, WAIT, Broker, Mqtt, stop_signal

pytestmark = pytest.mark.skipif(
    BIN is None, reason="needs STARLING_BROKER_BIN: run scripts/tiers/25-durability.sh"
)

SUBSCRIBERS = 3
PUBLISHERS = 2
RETAINED_TOPICS = 8
EXPIRY = 3600
KILLS = int(os.environ.get("STARLING_CRASH_KILLS", "20"))
RATE = float(os.environ.get("STARLING_CRASH_RATE", "400"))
# The whole test, however many kills: a bound, not a measurement.
TOTAL_SECS = 120 + 6 * KILLS
# Queues must hold what offline subscribers miss during a whole run, or the broker drops by
# design (max_queued_messages) and the test would count that as loss.
CONFIG = "[limits]\nmax_queued_messages = 1000000\n"


class Ledger:
    """What was published and acknowledged, by stream: ("q1", pub), ("q2", pub), ("r", pub, k)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.next_seq = defaultdict(int)
        self.sent = defaultdict(set)
        self.acked = defaultdict(set)
        self.refused = []

    def take_seq(self, stream):
        with self.lock:
            seq = self.next_seq[stream]
            self.next_seq[stream] = seq + 1
            self.sent[stream].add(seq)
            return seq


class Publisher:
    """One publisher for one broker run: clean start, publishes at RATE until stopped."""

    def __init__(self, number, ledger, rng, addr):
        self.number = number
        self.ledger = ledger
        self.rng = random.Random(rng.random())
        self.client = Mqtt(f"crash-pub-{number}", max_inflight=50)
        present, rc = self.client.connect(addr, clean_start=True)
        assert rc == 0, f"publisher {number}: CONNACK {rc:#x}"
        self.by_mid = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _settle(self):
        """Moves the acknowledgements that arrived into the ledger."""
        while True:
            try:
                mid, rc = self.client.acks.get_nowait()
            except queue.Empty:
                return
            stream, seq = self.by_mid.pop(mid, (None, None))
            if stream is None:
                continue
            if rc < 0x80:
                with self.ledger.lock:
                    self.ledger.acked[stream].add(seq)
            else:
                self.ledger.refused.append((stream, seq, rc))

    def _run(self):
        start, n = time.monotonic(), 0
        while not self.stop.is_set() and self.client.connected():
            self._settle()
            # At most 200 messages not yet acknowledged, so paho's own queue stays short.
            if len(self.by_mid) >= 200:
                time.sleep(0.005)
                continue
            roll = self.rng.random()
            if roll < 0.1:
                stream = ("r", self.number, self.rng.randrange(RETAINED_TOPICS))
                topic, qos, retain = f"crash/r/{self.number}/{stream[2]}", 1, True
            elif roll < 0.55:
                stream = ("q1", self.number)
                topic, qos, retain = f"crash/s/q1/{self.number}", 1, False
            else:
                stream = ("q2", self.number)
                topic, qos, retain = f"crash/s/q2/{self.number}", 2, False
            seq = self.ledger.take_seq(stream)
            info = self.client.c.publish(topic, f"{seq}".encode(), qos=qos, retain=retain)
            if info.rc != 0:
                return
            self.by_mid[info.mid] = (stream, seq)
            n += 1
            ahead = n / RATE - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def finish(self):
        """After the broker stopped: ends the thread and settles the last acknowledgements."""
        self.stop.set()
        self.thread.join(timeout=WAIT)
        assert not self.thread.is_alive(), f"publisher {self.number} did not stop"
        self.client.wait_closed()
        self._settle()


class Subscriber:
    """A persistent session whose deliveries are recorded across every connection."""

    def __init__(self, number):
        self.number = number
        self.lock = threading.Lock()
        # (qos class "q1"/"q2", publisher, seq) -> deliveries to the application
        self.got = Counter()
        self.wrong = []
        self.client = Mqtt(f"crash-sub-{number}", on_message=self._on_message)

    def _on_message(self, _c, _u, m):
        parts = m.topic.split("/")
        with self.lock:
            if len(parts) != 4 or parts[:2] != ["crash", "s"] or parts[2] not in ("q1", "q2"):
                self.wrong.append(f"unexpected topic {m.topic}")
                return
            kind, pub = parts[2], int(parts[3])
            want_qos = 1 if kind == "q1" else 2
            if m.qos != want_qos:
                self.wrong.append(f"{m.topic} #{m.payload!r} delivered at QoS {m.qos}")
            self.got[(kind, pub, int(m.payload))] += 1

    def resume(self, addr):
        present, rc = self.client.connect(addr, clean_start=False, expiry=EXPIRY)
        assert rc == 0, f"subscriber {self.number}: CONNACK {rc:#x}"
        return present

    def has(self, kind, pub, seq):
        with self.lock:
            return self.got[(kind, pub, seq)] > 0


def check_retained(broker, ledger, run):
    """A clean client reads every retained message; each topic holds its last acknowledged
    message or a later one that was sent."""
    with ledger.lock:
        want = {s: (max(a), max(ledger.sent[s])) for s, a in ledger.acked.items() if s[0] == "r" and a}
    got, lock, done = {}, threading.Lock(), threading.Event()

    def on_message(_c, _u, m):
        _, _, pub, k = m.topic.split("/")
        with lock:
            got[("r", int(pub), int(k))] = (int(m.payload), m.retain)
            if all(s in got for s in want):
                done.set()

    reader = Mqtt(f"crash-retained-{run}", on_message=on_message)
    _, rc = reader.connect(broker.mqtt, clean_start=True)
    assert rc == 0
    if not want:
        done.set()
    reader.subscribe("crash/r/#", 1)
    arrived = done.wait(WAIT)
    reader.disconnect()
    missing = sorted(s for s in want if s not in got)
    assert arrived and not missing, (
        f"after start {broker.starts}: retained messages missing for {missing[:10]} "
        f"({len(missing)} topics whose last publish was acknowledged)")
    for s, (last_acked, last_sent) in want.items():
        seq, retain = got[s]
        assert retain, f"{s}: delivered without the retain flag"
        assert last_acked <= seq <= last_sent, (
            f"after start {broker.starts}: retained {s} holds #{seq}, but #{last_acked} was "
            f"acknowledged (the last sent was #{last_sent})")
    return len(want)


def subscriber_problems(s, sent, acked):
    """What one persistent subscriber got against what was sent and acknowledged: prints its
    summary line and returns its problems (acknowledged messages missing, QoS 2 duplicates,
    messages never published, what its client reported wrong)."""
    with s.lock:
        got = dict(s.got)
        problems = [f"subscriber {s.number}: {w}" for w in s.wrong[:5]]
    lost = sorted((*stream, q) for stream, seqs in acked.items() if stream[0] != "r"
                  for q in seqs if got.get((*stream, q), 0) == 0)
    dups = sorted(key for key, n in got.items() if key[0] == "q2" and n > 1)
    phantom = sorted(key for key in got if key[2] not in sent.get(key[:2], ()))
    extra = sum(1 for (k, p, q) in got if q not in acked.get((k, p), ()))
    q1_dups = sum(n - 1 for key, n in got.items() if key[0] == "q1" and n > 1)
    print(f"subscriber {s.number}: {len(got)} distinct messages, {len(lost)} "
          f"acknowledged missing, {len(dups)} QoS 2 duplicates, {q1_dups} QoS 1 "
          f"redeliveries, {extra} unacknowledged that arrived anyway")
    if lost:
        problems.append(f"subscriber {s.number}: {len(lost)} acknowledged messages "
                        f"never arrived, first {lost[:10]}")
    if dups:
        problems.append(f"subscriber {s.number}: QoS 2 delivered twice: {dups[:10]}")
    if phantom:
        problems.append(f"subscriber {s.number}: never published: {phantom[:10]}")
    return problems


def wait_for_everything(subs, ledger, deadline):
    """Waits until every subscriber has every acknowledged q1/q2 message, or the deadline."""
    with ledger.lock:
        wanted = [(s[0], s[1], seq) for s, a in ledger.acked.items() if s[0] != "r" for seq in a]
    while time.monotonic() < deadline:
        if all(sub.has(*w) for sub in subs for w in wanted):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("signal_name,policy", [
    ("SIGKILL", "sync"),
    ("SIGTERM", "sync"),
    # A graceful stop flushes the store: nothing acknowledged is lost with `interval` either.
    ("SIGTERM", "interval"),
])
def test_acknowledged_messages_survive_the_broker_stopping_at_random_moments(signal_name, policy):
    seed = int(os.environ.get("STARLING_CRASH_SEED", str(random.SystemRandom().randrange(2**32))))
    print(f"\n{signal_name}, --storage-sync {policy}: seed {seed} (STARLING_CRASH_SEED={seed} "
          f"replays it), {KILLS} stops, {RATE:g} messages/s per publisher")
    rng = random.Random(seed)
    deadline = time.monotonic() + TOTAL_SECS
    sig = stop_signal(signal_name)
    with tempfile.TemporaryDirectory(prefix="starling-crash-") as work:
        data, logs = os.path.join(work, "data"), os.path.join(work, "logs")
        os.makedirs(data)
        os.makedirs(logs)
        broker = Broker(data, logs, config=CONFIG, args=["--storage-sync", policy])
        ledger = Ledger()
        subs = [Subscriber(i) for i in range(SUBSCRIBERS)]
        try:
            # The sessions and their subscriptions, then one graceful restart that they survive.
            broker.start()
            for s in subs:
                present, rc = s.client.connect(broker.mqtt, clean_start=True, expiry=EXPIRY)
                assert rc == 0 and not present
                s.client.subscribe("crash/s/#", 2)
                s.client.disconnect()
            assert broker.stop(stop_signal("SIGTERM")) == 0, broker.log_tail()

            for run in range(1, KILLS + 1):
                assert time.monotonic() < deadline, f"over {TOTAL_SECS} s after {run - 1} stops"
                broker.start()
                retained = check_retained(broker, ledger, run)
                online = [s for s in subs if rng.random() < 0.6]
                for s in online:
                    assert s.resume(broker.mqtt), (
                        f"start {broker.starts}: subscriber {s.number} resumed without its "
                        f"session (session_present=0)\n{broker.log_tail()}")
                pubs = [Publisher(i, ledger, rng, broker.mqtt) for i in range(PUBLISHERS)]
                # The stop comes at a random moment; half-way, one subscriber changes state.
                life = rng.uniform(0.2, 1.5)
                time.sleep(life / 2)
                flip = rng.choice(subs)
                if flip in online:
                    flip.client.disconnect()
                elif flip.resume(broker.mqtt) is not True:
                    raise AssertionError(f"start {broker.starts}: subscriber {flip.number} "
                                         "resumed without its session")
                time.sleep(life / 2)
                code = broker.stop(sig)
                if signal_name == "SIGTERM":
                    assert code == 0, f"exit code {code} after SIGTERM\n{broker.log_tail()}"
                for p in pubs:
                    p.finish()
                for s in subs:
                    s.client.wait_closed()
                with ledger.lock:
                    acked = sum(len(a) for a in ledger.acked.values())
                print(f"run {run}: stopped after {life:.2f} s, {acked} acknowledged so far, "
                      f"{retained} retained topics checked")

            # The last start: everyone online until every acknowledged message has arrived.
            broker.start()
            check_retained(broker, ledger, KILLS + 1)
            for s in subs:
                assert s.resume(broker.mqtt), f"subscriber {s.number}: session_present=0"
            complete = wait_for_everything(subs, ledger, min(deadline, time.monotonic() + 60))
            # Messages still in flight come with the next wake-ups; a marker per publisher on the
            # QoS 2 stream shows each queue has drained past everything sent before it.
            marker = Mqtt("crash-marker", max_inflight=10)
            marker.connect(broker.mqtt, clean_start=True)
            for p in range(PUBLISHERS):
                seq = ledger.take_seq(("q2", p))
                marker.c.publish(f"crash/s/q2/{p}", f"{seq}".encode(), qos=2)
                _, rc = marker.acks.get(timeout=WAIT)
                assert rc == 0, f"the marker's PUBCOMP: {rc:#x}"
                with ledger.lock:
                    ledger.acked[("q2", p)].add(seq)
            complete = wait_for_everything(subs, ledger, min(deadline, time.monotonic() + 60))
            marker.disconnect()
            for s in subs:
                s.client.disconnect()
            assert broker.alive(), broker.log_tail()
            broker.stop(stop_signal("SIGTERM"))

            problems = []
            with ledger.lock:
                sent = {s: set(v) for s, v in ledger.sent.items()}
                acked = {s: set(v) for s, v in ledger.acked.items()}
            total_acked = sum(len(v) for s, v in acked.items() if s[0] != "r")
            total_sent = sum(len(v) for s, v in sent.items() if s[0] != "r")
            print(f"{total_sent} stream messages sent, {total_acked} acknowledged, "
                  f"{len(ledger.refused)} refused; {broker.starts} broker starts")
            if ledger.refused:
                problems.append(f"publishes refused without a full disk: {ledger.refused[:5]}")
            for s in subs:
                problems += subscriber_problems(s, sent, acked)
            if not complete and not any("never arrived" in p for p in problems):
                problems.append("the wait for every acknowledged message timed out")
            problems += broker.panics()
            assert not problems, f"seed {seed}:\n" + "\n".join(problems)
        finally:
            broker.close()
