//! PUBREL (section 3.6): laid out like PUBACK (see `puback.rs`).

use crate::packet::PacketType;
use crate::packet::puback::ack_packet;
use crate::reason::PUBREL_CODES;

ack_packet!(
    /// PUBREL: the response to a PUBREC (section 3.6).
    PubRel,
    PacketType::PubRel,
    PUBREL_CODES,
    "MQTT-3.6.2-1"
);
