//! PUBCOMP (section 3.7): laid out like PUBACK (see `puback.rs`).

use crate::packet::PacketType;
use crate::packet::puback::ack_packet;
use crate::reason::PUBREL_CODES;

ack_packet!(
    /// PUBCOMP: the response to a PUBREL, the last of the QoS 2 exchange (section 3.7).
    PubComp,
    PacketType::PubComp,
    PUBREL_CODES,
    "MQTT-3.7.2-1"
);
