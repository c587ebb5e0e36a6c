"""Interoperability of starling-broker with paho-mqtt (Eclipse Paho's Python client, 2.x API).

MQTT 3.1.1 and 5.0: QoS 0/1/2 both ways, a subscription identifier, a shared subscription,
user properties and session resumption. The broker is started by
scripts/tiers/20-broker-interop.sh; its address comes from STARLING_MQTT_HOST and
STARLING_MQTT_PORT. Every wait is on a paho callback (CONNACK, SUBACK, message) with a deadline.
"""

import os
import queue
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = os.environ.get("STARLING_MQTT_HOST", "127.0.0.1")
PORT = os.environ.get("STARLING_MQTT_PORT")

pytestmark = pytest.mark.skipif(
    PORT is None, reason="needs a broker: run scripts/tiers/20-broker-interop.sh"
)

TIMEOUT = 10
PROTOCOLS = {"v311": mqtt.MQTTv311, "v5": mqtt.MQTTv5}


def unique(prefix):
    return f"interop/paho/{prefix}/{uuid.uuid4().hex[:12]}"


class Client:
    """A paho client on its own network thread; callbacks feed queues the test waits on."""

    def __init__(self, protocol, client_id=None, clean=True, expiry=None):
        self.protocol = protocol
        self.client_id = client_id or f"paho-{uuid.uuid4().hex[:12]}"
        kwargs = {}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            **kwargs,
        )
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.messages = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags, rc))
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put((mid, rcs))
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        connect_kwargs = {}
        if protocol == mqtt.MQTTv5:
            connect_kwargs["clean_start"] = clean
            if expiry is not None:
                p = Properties(PacketTypes.CONNECT)
                p.SessionExpiryInterval = expiry
                connect_kwargs["properties"] = p
        self.c.connect(HOST, int(PORT), keepalive=30, **connect_kwargs)
        self.c.loop_start()
        flags, rc = self.connacks.get(timeout=TIMEOUT)
        assert not rc.is_failure, rc
        self.session_present = flags.session_present

    def subscribe(self, topic, qos, properties=None, options=None):
        if options is not None:
            result, mid = self.c.subscribe(topic, options=options, properties=properties)
        else:
            result, mid = self.c.subscribe(topic, qos, properties=properties)
        assert result == mqtt.MQTT_ERR_SUCCESS
        got_mid, rcs = self.subacks.get(timeout=TIMEOUT)
        assert got_mid == mid
        return [rc.value for rc in rcs]

    def publish(self, topic, payload, qos, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        # For QoS 1 and 2 this returns once PUBACK / PUBCOMP arrived.
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published()

    def message(self):
        return self.messages.get(timeout=TIMEOUT)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients():
    made = []

    def make(*args, **kwargs):
        c = Client(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.mark.parametrize("name", PROTOCOLS)
def test_qos_0_1_2_both_directions(clients, name):
    protocol = PROTOCOLS[name]
    topic = unique(f"qos-{name}")
    sub = clients(protocol)
    pub = clients(protocol)
    assert sub.subscribe(topic + "/#", 2) == [2]
    for qos in (0, 1, 2):
        pub.publish(f"{topic}/{qos}", f"payload-{qos}".encode(), qos)
    got = [sub.message() for _ in range(3)]
    assert [(m.topic, m.qos, m.payload, m.retain) for m in got] == [
        (f"{topic}/{qos}", qos, f"payload-{qos}".encode(), False) for qos in (0, 1, 2)
    ]


@pytest.mark.parametrize("name", PROTOCOLS)
def test_retained_message_on_subscribe(clients, name):
    protocol = PROTOCOLS[name]
    topic = unique(f"retained-{name}")
    pub = clients(protocol)
    pub.publish(topic, b"kept", 1, retain=True)
    sub = clients(protocol)
    sub.subscribe(topic, 1)
    m = sub.message()
    assert (m.topic, m.payload, m.retain, m.qos) == (topic, b"kept", True, 1)
    pub.publish(topic, b"", 1, retain=True)


def test_v5_subscription_identifier_is_returned(clients):
    topic = unique("subid")
    sub = clients(mqtt.MQTTv5)
    p = Properties(PacketTypes.SUBSCRIBE)
    p.SubscriptionIdentifier = 4242
    sub.subscribe(topic + "/+", 1, properties=p)
    p2 = Properties(PacketTypes.SUBSCRIBE)
    p2.SubscriptionIdentifier = 7
    sub.subscribe(topic + "/#", 0, properties=p2)
    pub = clients(mqtt.MQTTv5)
    pub.publish(topic + "/x", b"with-id", 1)
    m = sub.message()
    assert (m.topic, m.payload, m.qos) == (topic + "/x", b"with-id", 1)
    # Overlapping subscriptions: one copy carrying both identifiers.
    assert sorted(m.properties.SubscriptionIdentifier) == [7, 4242]


@pytest.mark.parametrize("name", PROTOCOLS)
def test_shared_subscription_splits_between_members(clients, name):
    protocol = PROTOCOLS[name]
    topic = unique(f"shared-{name}")
    group = f"$share/grp-{uuid.uuid4().hex[:8]}/{topic}"
    members = [clients(protocol), clients(protocol)]
    for m in members:
        assert m.subscribe(group, 1) == [1]
    pub = clients(protocol)
    n = 10
    for i in range(n):
        pub.publish(topic, str(i).encode(), 1)
    got = [[m.message().payload.decode() for _ in range(n // 2)] for m in members]
    assert sorted(int(x) for x in got[0] + got[1]) == list(range(n)), got
    for m in members:
        with pytest.raises(queue.Empty):
            m.messages.get_nowait()


def test_v5_properties_pass_through(clients):
    topic = unique("props")
    sub = clients(mqtt.MQTTv5)
    sub.subscribe(topic, 1)
    pub = clients(mqtt.MQTTv5)
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("k", "v"), ("k", "w")]
    p.ResponseTopic = topic + "/reply"
    p.CorrelationData = b"\x00\x01corr"
    p.ContentType = "text/plain"
    p.PayloadFormatIndicator = 1
    pub.publish(topic, b"hello", 1, properties=p)
    m = sub.message()
    assert m.payload == b"hello"
    assert m.properties.UserProperty == [("k", "v"), ("k", "w")]
    assert m.properties.ResponseTopic == topic + "/reply"
    assert m.properties.CorrelationData == b"\x00\x01corr"
    assert m.properties.ContentType == "text/plain"
    assert m.properties.PayloadFormatIndicator == 1


def test_v5_no_local_and_retain_as_published(clients):
    topic = unique("options")
    c = clients(mqtt.MQTTv5)
    c.subscribe(topic + "/own", None, options=SubscribeOptions(qos=1, noLocal=True))
    c.subscribe(topic + "/rap", None, options=SubscribeOptions(qos=1, retainAsPublished=True))
    c.publish(topic + "/own", b"mine", 1)
    c.publish(topic + "/rap", b"flagged", 1, retain=True)
    m = c.message()
    assert (m.topic, m.payload, m.retain) == (topic + "/rap", b"flagged", True)
    c.publish(topic + "/rap", b"", 1, retain=True)


@pytest.mark.parametrize("name", PROTOCOLS)
def test_session_resumption_delivers_queued_messages(clients, name):
    protocol = PROTOCOLS[name]
    topic = unique(f"resume-{name}")
    cid = f"paho-resume-{uuid.uuid4().hex[:8]}"
    first = Client(protocol, cid, clean=False, expiry=300)
    assert not first.session_present
    first.subscribe(topic, 1)
    first.close()
    pub = clients(protocol)
    for i in range(3):
        pub.publish(topic, f"q{i}".encode(), 1)
    again = clients(protocol, cid, clean=False, expiry=300)
    assert again.session_present
    assert [again.message().payload for _ in range(3)] == [b"q0", b"q1", b"q2"]
