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

STARLING_CLUSTER_SEED replays a run; STARLING_CLUSTER_RATE (messages/s per publisher, default
100) makes it heavier. Started by scripts/tiers/65-cluster.sh with STARLING_BROKER_BIN.
"""

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

import test_durability_crash as crash
from durable_broker import BIN, WAIT, Broker, stop_signal
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
