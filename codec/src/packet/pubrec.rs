//! PUBREC (section 3.5): laid out like PUBACK (see `puback.rs`).

use crate::packet::PacketType;
use crate::packet::puback::ack_packet;
use crate::reason::PUBACK_CODES;

ack_packet!(
    /// PUBREC: the first response to a QoS 2 PUBLISH (section 3.5).
    PubRec,
    PacketType::PubRec,
    PUBACK_CODES,
    "MQTT-3.5.2-1"
);
