"""How starling-broker ends a connection, seen by paho-mqtt (Eclipse Paho's Python client, 2.x).

A client that sends one QoS 2 PUBLISH more than the broker's Receive Maximum [MQTT-3.3.4-7],
and goes on writing (its PUBRELs for the PUBRECs it reads), reads the broker's DISCONNECT 0x93
(Receive Maximum exceeded), not a broken pipe: the broker closes its side and keeps reading for
a moment instead of resetting the connection under the client's feet.

The broker is started by scripts/tiers/20-broker-interop.sh (STARLING_MQTT_HOST and
STARLING_MQTT_PORT). The client runs without a network thread, so the test decides when it
writes and reads; every wait has a deadline.
"""

import os
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

HOST = os.environ.get("STARLING_MQTT_HOST", "127.0.0.1")
PORT = os.environ.get("STARLING_MQTT_PORT")

pytestmark = pytest.mark.skipif(
    PORT is None, reason="needs a broker: run scripts/tiers/20-broker-interop.sh"
)

TIMEOUT = 10
RECEIVE_MAXIMUM_EXCEEDED = 0x93


def loop_until(client, done, what):
    """Runs the client's network loop in this thread until `done()` holds."""
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert time.monotonic() < deadline, f"timed out: {what}"
        client.loop(timeout=0.1)


@pytest.mark.parametrize("round_", range(3))
def test_past_receive_maximum_the_client_reads_disconnect_0x93(round_):
    got = {}
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"paho-rm-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv5,
    )
    # paho would hold QoS 2 messages back beyond 20 in flight; this client sends them all.
    c.max_inflight_messages = 0

    def on_connect(client, userdata, flags, reason_code, properties):
        got["connack"] = (reason_code, properties)

    def on_disconnect(client, userdata, flags, reason_code, properties):
        got["disconnect"] = (flags, reason_code)

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.connect(HOST, int(PORT), keepalive=30)
    loop_until(c, lambda: "connack" in got, "CONNACK")
    reason, properties = got["connack"]
    assert not reason.is_failure, reason
    receive_maximum = properties.ReceiveMaximum

    # Without a network thread each publish is written at once and nothing is read: the broker
    # gets Receive Maximum + 1 QoS 2 PUBLISHes before any PUBREL.
    topic = f"interop/paho/rm/{uuid.uuid4().hex[:12]}"
    for i in range(receive_maximum + 1):
        info = c.publish(topic, f"{i}".encode(), qos=2)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
    # Reading now: PUBRECs (answered with PUBRELs the broker no longer processes), then the
    # DISCONNECT.
    loop_until(c, lambda: "disconnect" in got, "DISCONNECT")
    flags, reason = got["disconnect"]
    assert flags.is_disconnect_packet_from_server, (
        f"the connection ended without the broker's DISCONNECT: {reason}"
    )
    assert reason.value == RECEIVE_MAXIMUM_EXCEEDED, reason
