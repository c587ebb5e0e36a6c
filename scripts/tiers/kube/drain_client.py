#!/usr/bin/env python3
"""An MQTT 5 client that stays connected until the broker disconnects it, then says why.

    drain_client.py HOST PORT CAFILE USERNAME CLIENT_ID TOKEN

Connects over TLS (trusting CAFILE) with the token as password, subscribes, prints
`connected` once subscribed, and on the broker's DISCONNECT prints `disconnect <reason code>`
(139 = 0x8B, server shutting down) and exits 0. Exits 1 when the connection is refused, and 2
when no DISCONNECT arrives within 60 s.
"""

import sys
import threading

import paho.mqtt.client as mqtt


def main(host, port, cafile, username, client_id, token):
    done = threading.Event()
    result = {}

    def on_connect(client, _userdata, _flags, reason, _props):
        if reason.is_failure:
            result["refused"] = reason.value
            done.set()
            return
        client.subscribe("drain/#", qos=1)

    def on_subscribe(_client, _userdata, _mid, _reasons, _props):
        print("connected", flush=True)

    def on_disconnect(_client, _userdata, _flags, reason, _props):
        result["disconnect"] = reason.value
        done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(username, token)
    c.tls_set(ca_certs=cafile)
    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_disconnect = on_disconnect
    c.connect(host, int(port), keepalive=30)
    c.loop_start()
    try:
        if not done.wait(60):
            print("no DISCONNECT within 60 s", flush=True)
            return 2
    finally:
        c.loop_stop()
    if "refused" in result:
        print(f"refused {result['refused']}", flush=True)
        return 1
    print(f"disconnect {result['disconnect']}", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 7:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
