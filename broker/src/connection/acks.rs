//! Acknowledgements from the client: PUBACK and PUBCOMP complete an in-flight delivery,
//! PUBREC moves a QoS 2 one on to PUBREL, PUBREL releases a QoS 2 message the broker received.

use starling_codec::{AckProperties, Packet, ProtocolVersion, PubRec, PubRel, QoS, ReasonCode};

use super::Connection;
use crate::metrics::DropReason;
use crate::session::Inflight;
use crate::transport::AsyncIo;

impl<IO: AsyncIo> Connection<IO> {
    pub(super) fn on_pubrel(&mut self, r: PubRel) {
        let (reason, commit) = if self.state.release_receipt(r.packet_id) {
            (
                ReasonCode::SUCCESS,
                super::publish::both(
                    self.state.durable().and_then(|s| s.durable()),
                    self.cluster_receipt_written(QoS::ExactlyOnce),
                ),
            )
        } else {
            (ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, None)
        };
        self.complete_after(r.packet_id, reason, commit);
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) from the client.
    pub(super) fn on_ack(&mut self, packet_id: u16, _reason: ReasonCode, comp: bool) {
        let matches = match self.state.inflight().get(packet_id) {
            Some(Inflight::Published(d)) if !comp && d.qos == QoS::AtLeastOnce => {
                // The client has it: a persistent session's consumer moves on (`[cluster]`).
                d.message.acknowledge_stream();
                true
            }
            Some(Inflight::Published(_)) => false,
            Some(Inflight::Released) => comp,
            None => false,
        };
        if matches {
            // A PUBACK >= 0x80 on a shared subscription discards the message [MQTT-4.8.2-6].
            self.state.complete(packet_id);
            self.more_queued = true;
        }
    }

    pub(super) fn on_pubrec(&mut self, r: PubRec) {
        let ok = matches!(self.state.inflight().get(r.packet_id), Some(Inflight::Published(d)) if d.qos == QoS::ExactlyOnce);
        if !ok {
            // [MQTT-4.3.3-4] PUBREL answers the PUBREC of a QoS 2 PUBLISH in flight; a stray
            // PUBREC is answered with PUBREL 0x92 (Packet Identifier not found, section
            // 3.6.2.1) so the client can free the id, as PUBREL for an unknown id gets PUBCOMP
            // 0x92 [MQTT-4.3.3-11].
            if self.negotiated.version == ProtocolVersion::V5 {
                self.send(&Packet::PubRel(PubRel {
                    packet_id: r.packet_id,
                    reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                    properties: AckProperties::default(),
                }));
            }
            return;
        }
        // The client has it (or refused it for good): a persistent session's consumer moves
        // on (`[cluster]`); what is left is the PUBREL.
        let stream_ack = match self.state.inflight().get(r.packet_id) {
            Some(Inflight::Published(d)) => d.message.stream_ack.clone(),
            _ => None,
        };
        if r.reason.0 >= 0x80 {
            if let Some(a) = stream_ack {
                a.ack();
            }
            // [MQTT-4.3.3-4] PUBREL answers only a PUBREC below 0x80: an error PUBREC ends the
            // exchange; [MQTT-4.8.2-6] for shared ones.
            self.ctx.metrics.count_drop(DropReason::rejected_by_client);
            self.state.complete(r.packet_id);
            self.more_queued = true;
            return;
        }
        // From a persistent session's consumer (`[cluster]`): its PUBREL due is recorded with
        // the message, and PUBREL waits until JetStream confirmed the message acknowledged.
        let cluster = self.auth.tenant.cluster_sessions().cloned();
        if let (Some(a), Some(cs)) = (&stream_ack, &cluster) {
            cs.releasing(&self.session.client_id, r.packet_id, a);
        }
        self.state.insert_inflight(r.packet_id, Inflight::Released);
        let released = match (stream_ack, cluster) {
            (Some(a), Some(cs)) => Some(cs.released_after_write(a)),
            (Some(a), None) => {
                a.ack();
                None
            }
            (None, _) => None,
        };
        let commit = super::publish::both(self.state.durable().and_then(|s| s.durable()), released);
        self.release_after(r.packet_id, commit);
    }
}
