//! MQTT 5.0, 3.1.1 and 3.1 control packets: decoding and encoding, pure and without I/O.
