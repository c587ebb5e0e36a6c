"""Acknowledged means delivered across the replicas of a broker (`[cluster]`): one replica killed
with SIGKILL under load, and every replica restarted one after the other (SIGTERM) under load.

A 3-node `nats-server` JetStream cluster (Debian's package) and 3 replicas of the broker binary
(STARLING_BROKER_BIN, no data directory: their state is in JetStream) on loopback. Three
persistent subscribers (session expiry 1 h, `crash/s/#` at QoS 2), one per replica, and two
paho-mqtt publishers of numbered QoS 1 and QoS 2 streams (the durability tier's Publisher,
Subscriber and Ledger). A publisher counts a message acknowledged only on PUBACK / PUBCOMP with
a success code. When a replica goes, the clients it served reconnect to another one: a
subscriber resumes its session there (session_present=1 is required), a publisher starts again.

At the end every subscriber is online until it has every acknowledged message (what the killed
replica held comes back from the session's JetStream consumers once their ack wait runs out,
30 s), then:
- every acknowledged message reached every subscriber (QoS 1 at least once, QoS 2 once);
- no QoS 2 message reached a subscriber twice; nothing arrived that was never published;
- no replica panicked.
Refused publications (0x80 while a replica cannot confirm) are counted and printed: a refused
message is not acknowledged, so it is not demanded.

A third test kills a replica serving clients with wills (`replica_timeout_secs` 2): the
survivors publish each will once, at its time, none of a client that came back within its
delay, and end a session at its expiry.

STARLING_CLUSTER_SEED replays a run; STARLING_CLUSTER_RATE (messages/s per publisher, default
100) makes it heavier. Started by scripts/tiers/65-cluster.sh with STARLING_BROKER_BIN.
"""

import base64
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter

import pytest

import test_durability_crash as crash
from durable_broker import BIN, WAIT, Broker, Mqtt, stop_signal
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_durability_crash import Ledger, Publisher, Subscriber, wait_for_everything

NATS = shutil.which("nats-server") or next(
    (p for p in ("/usr/sbin/nats-server",) if os.path.exists(p)), None)

pytestmark = pytest.mark.skipif(
    BIN is None or NATS is None,
    reason="needs STARLING_BROKER_BIN and nats-server: run scripts/tiers/65-cluster.sh")

crash.RATE = float(os.environ.get("STARLING_CLUSTER_RATE", "100"))
PUBLISHERS = 2
EXPIRY = 3600
# What the subscribers wait for at the end: the killed replica's messages come back after the
# consumers' ack wait (30 s).
FINAL_WAIT = 120
CONFIG = "[limits]\nmax_queued_messages = 1000000\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsCluster:
    """Three routed nats-server nodes with JetStream, each in a directory of its own."""

    def __init__(self, work):
        self.work = work
        self.client = [free_port() for _ in range(3)]
        self.route = [free_port() for _ in range(3)]
        self.monitor = [free_port() for _ in range(3)]
        self.procs = []
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route)
        for n in range(3):
            store = os.path.join(work, f"js{n}")
            os.makedirs(store)
            conf = os.path.join(work, f"nats{n}.conf")
            with open(conf, "w") as f:
                f.write(f"server_name: n{n}\nlisten: 127.0.0.1:{self.client[n]}\n"
                        f"http: 127.0.0.1:{self.monitor[n]}\njetstream {{ store_dir: \"{store}\" }}\n"
                        f"cluster {{ name: starling-failover\n listen: 127.0.0.1:{self.route[n]}\n"
                        f" routes: [ {routes} ] }}\n")
            log = open(os.path.join(work, f"nats{n}.log"), "w")
            self.procs.append(subprocess.Popen([NATS, "-c", conf], stdout=log,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + WAIT
        while not all(self._routed(n) for n in range(3)):
            assert time.monotonic() < deadline, "the NATS nodes did not route to each other"
            time.sleep(0.1)

    def _routed(self, n):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor[n]}/routez", timeout=2) as r:
                return json.load(r)["num_routes"] >= 2
        except OSError:
            return False

    def urls(self, first):
        order = [first] + [n for n in range(3) if n != first]
        return [f"nats://127.0.0.1:{self.client[n]}" for n in order]

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()


def replicas(nats, work):
    out = []
    for r in range(3):
        logs = os.path.join(work, f"replica{r}")
        os.makedirs(logs)
        urls = ", ".join(f'"{u}"' for u in nats.urls(r))
        config = f'{CONFIG}[cluster]\nnats = [{urls}]\nreplica_id = "replica-{r}"\n'
        out.append(Broker(None, logs, config=config))
    return out


def settle_publisher(p):
    """Ends a publisher whose connection is gone or is to be closed, keeping its ledger."""
    p.stop.set()
    p.thread.join(timeout=WAIT)
    assert not p.thread.is_alive(), f"publisher {p.number} did not stop"
    p.client.disconnect()
    p._settle()


def keep_clients_on(live, subs, pubs, ledger, rng):
    """Every subscriber online on a running replica (resuming its session there), every
    publisher publishing to one; those whose replica went move."""
    for s in subs:
        if not s.client.connected():
            s.client.wait_closed()
            target = rng.choice(live)
            present, rc = s.client.connect(target.mqtt, clean_start=False, expiry=EXPIRY)
            assert rc == 0 and present is True, (
                f"subscriber {s.number} resuming on {target.log_dir}: CONNACK {rc:#x}, "
                f"session_present={present}\n{target.log_tail()}")
    for i, p in enumerate(pubs):
        if not p.client.connected():
            settle_publisher(p)
            pubs[i] = Publisher(p.number, ledger, rng, rng.choice(live).mqtt)


def load_for(secs, subs, pubs, live, ledger, rng):
    """Keeps the load running for `secs`, moving clients off replicas that went."""
    end = time.monotonic() + secs
    while time.monotonic() < end:
        keep_clients_on(live, subs, pubs, ledger, rng)
        time.sleep(0.05)


def verdict(subs, ledger, brokers, seed, complete):
    problems = []
    with ledger.lock:
        sent = {s: set(v) for s, v in ledger.sent.items()}
        acked = {s: set(v) for s, v in ledger.acked.items()}
    total_acked = sum(len(v) for s, v in acked.items() if s[0] != "r")
    print(f"{sum(len(v) for s, v in sent.items() if s[0] != 'r')} stream messages sent, "
          f"{total_acked} acknowledged, {len(ledger.refused)} refused")
    assert total_acked > 0, "nothing was acknowledged"
    for s in subs:
        problems += crash.subscriber_problems(s, sent, acked)
    if not complete and not any("never arrived" in p for p in problems):
        problems.append("the wait for every acknowledged message timed out")
    for b in brokers:
        problems += b.panics()
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)


@pytest.mark.parametrize("scenario", ["kill", "rolling"])
def test_acknowledged_messages_reach_persistent_subscribers_when_replicas_go(scenario):
    seed = int(os.environ.get("STARLING_CLUSTER_SEED", str(random.SystemRandom().randrange(2**32))))
    print(f"\n{scenario}: seed {seed} (STARLING_CLUSTER_SEED={seed} replays it), "
          f"{crash.RATE:g} messages/s per publisher")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="starling-failover-") as work:
        nats = NatsCluster(work)
        brokers = replicas(nats, work)
        pubs = []
        try:
            for b in brokers:
                b.start()
            ledger = Ledger()
            subs = [Subscriber(i) for i in range(3)]
            for s, b in zip(subs, brokers):
                present, rc = s.client.connect(b.mqtt, clean_start=True, expiry=EXPIRY)
                assert rc == 0 and not present
                s.client.subscribe("crash/s/#", 2)
            pubs = [Publisher(i, ledger, rng, brokers[i].mqtt) for i in range(PUBLISHERS)]
            live = list(brokers)
            load_for(rng.uniform(2, 4), subs, pubs, live, ledger, rng)
            if scenario == "kill":
                victim = brokers[2]
                victim.stop(stop_signal("SIGKILL"))
                live.remove(victim)
                load_for(rng.uniform(2, 4), subs, pubs, live, ledger, rng)
                victim.start()
                live.append(victim)
                load_for(1, subs, pubs, live, ledger, rng)
            else:
                for b in brokers:
                    assert b.stop(stop_signal("SIGTERM")) == 0, b.log_tail()
                    live.remove(b)
                    load_for(rng.uniform(1, 2), subs, pubs, live, ledger, rng)
                    b.start()
                    live.append(b)
                    load_for(rng.uniform(1, 2), subs, pubs, live, ledger, rng)
            for p in pubs:
                settle_publisher(p)
            keep_clients_on(live, subs, [], ledger, rng)
            complete = wait_for_everything(subs, ledger, time.monotonic() + FINAL_WAIT)
            for s in subs:
                s.client.disconnect()
            verdict(subs, ledger, brokers, seed, complete)
        finally:
            for b in brokers:
                b.close()
            nats.close()


# The replicas of the test below take one another for dead after this long unheard.
REPLICA_TIMEOUT = 2


def session_record(port, client_id):
    """The session record of `client_id` (tenant `default`) as JetStream holds it, read over a
    plain NATS connection (`$JS.API.STREAM.MSG.GET`): a dict, or None when there is none."""
    subject = "starling-sessions.default." + client_id.encode().hex()
    request = json.dumps({"last_by_subj": subject}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        f = s.makefile("rb")
        f.readline()  # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.record 1\r\n'
                  + f"PUB $JS.API.STREAM.MSG.GET.STARLING_default_SESSIONS _INBOX.record "
                    f"{len(request)}\r\n".encode() + request + b"\r\n")
        while True:
            line = f.readline()
            assert line, "NATS closed the connection"
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                size = int(line.split()[-1])
                answer = json.loads(f.read(size + 2)[:size])
                break
    if "error" in answer:
        return None
    data = base64.b64decode(answer["message"].get("data", ""))
    return json.loads(data) if data else None


def wait_until(what, condition, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def will_client(client_id, topic, delay):
    """A paho client whose will (QoS 1, payload its client id) goes to `topic` after `delay` s."""
    c = Mqtt(client_id)
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = delay
    c.c.will_set(topic, client_id.encode(), qos=1, properties=props)
    return c


def test_a_killed_replicas_wills_are_published_once_and_its_sessions_end():
    """Three replicas; clients with wills on replica A, which is killed with SIGKILL. A watcher
    on replica B gets, exactly once each (two survivors race to take A's sessions):
    - `now`'s will (no delay, no session expiry) once A is found dead;
    - `later`'s will (3 s delay) 3 s after A died;
    - `brief`'s will (30 s delay, session expiry 4 s) when its session ends, 4 s after; the
      client then reconnecting gets session_present=0;
    - `quick`'s will (no delay), although `quick` reconnected to B before A was found dead;
    and never `back`'s (6 s delay), which reconnected to B within its delay and resumed its
    session (session_present=1) [MQTT-3.1.3-9]."""
    with tempfile.TemporaryDirectory(prefix="starling-wills-") as work:
        nats = NatsCluster(work)
        brokers = []
        for r in range(3):
            logs = os.path.join(work, f"replica{r}")
            os.makedirs(logs)
            urls = ", ".join(f'"{u}"' for u in nats.urls(r))
            brokers.append(Broker(None, logs, config=(
                f'[cluster]\nnats = [{urls}]\nreplica_id = "r{r}"\n'
                f"replica_timeout_secs = {REPLICA_TIMEOUT}\n")))
        a, b, _c = brokers
        clients = []
        try:
            for br in brokers:
                br.start()
            got, lock = [], threading.Lock()

            def on_message(_c, _u, m):
                with lock:
                    got.append((m.topic, time.monotonic()))

            def arrived(topic):
                with lock:
                    return [t for t, _ in got if t == topic]

            watcher = Mqtt("watcher", on_message=on_message)
            clients.append(watcher)
            assert watcher.connect(b.mqtt, clean_start=True)[1] == 0
            watcher.subscribe("will/#", 1)
            # The replicas reach each other: a message published on A reaches the watcher on B.
            probe = Mqtt("probe")
            clients.append(probe)
            assert probe.connect(a.mqtt, clean_start=True)[1] == 0
            deadline = time.monotonic() + WAIT
            while not arrived("will/probe"):
                assert time.monotonic() < deadline, "the replicas did not reach each other"
                probe.c.publish("will/probe", b"p", qos=0)
                time.sleep(0.1)

            specs = {  # client id: (will delay, session expiry)
                "now": (0, 0), "later": (3, 60), "brief": (30, 4), "quick": (0, 60),
                "back": (6, 60)}
            for cid, (delay, expiry) in specs.items():
                c = will_client(cid, f"will/{cid}", delay)
                clients.append(c)
                present, rc = c.connect(a.mqtt, clean_start=True, expiry=expiry)
                assert rc == 0 and not present, (cid, rc)
            # Each connection's record names A and carries the will.
            for cid in specs:
                wait_until(f"{cid}'s record", lambda cid=cid: (
                    (r := session_record(nats.client[0], cid)) is not None
                    and r.get("connected_at") and r.get("live_will")
                    and r.get("holder", "").startswith("r0:")))

            killed = time.monotonic()
            a.stop(stop_signal("SIGKILL"))
            for c in clients:
                if c.client_id != "watcher":
                    c.wait_closed()
            # Back at once on B: within their delay, before A is found dead.
            quick = will_client("quick", "will/quick-again", 0)
            back = will_client("back", "will/back-again", 6)
            clients += [quick, back]
            assert quick.connect(b.mqtt, clean_start=False, expiry=60) == (True, 0)
            assert back.connect(b.mqtt, clean_start=False, expiry=60) == (True, 0)

            for topic in ("will/now", "will/later", "will/brief", "will/quick"):
                wait_until(f"{topic} published", lambda t=topic: arrived(t))
            with lock:
                at = {t: when - killed for t, when in got}
            assert at["will/later"] >= 3 - REPLICA_TIMEOUT / 3 - 0.5, at
            assert at["will/brief"] >= 4 - REPLICA_TIMEOUT / 3 - 0.5, at
            # `brief`'s session ended with its expiry.
            brief = Mqtt("brief")
            clients.append(brief)
            assert brief.connect(b.mqtt, clean_start=False, expiry=60) == (False, 0)
            # Past `back`'s will delay, and a while for a second copy of any will.
            quiet_until = max(killed + 6 + 2 * REPLICA_TIMEOUT, time.monotonic() + 2 * REPLICA_TIMEOUT)
            while time.monotonic() < quiet_until:
                time.sleep(0.1)
            with lock:
                counts = Counter(t for t, _ in got if t != "will/probe")
            assert counts == Counter({"will/now": 1, "will/later": 1, "will/brief": 1,
                                      "will/quick": 1}), counts
            problems = [p for br in brokers for p in br.panics()]
            assert not problems, "\n".join(problems)
        finally:
            for c in clients:
                try:
                    c.c.disconnect()
                except Exception:  # noqa: BLE001 - already closed
                    pass
            for br in brokers:
                br.close()
            nats.close()
