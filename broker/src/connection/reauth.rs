//! AUTH: re-authentication with a fresh credential on a live connection [MQTT-4.12.1]. The
//! session keeps only what the new credential allows.

use starling_codec::{Auth, AuthProperties, Packet, ReasonCode};
use tracing::info;

use super::Connection;
use super::close::{Close, Outcome};
use super::handshake::credential_deadline;
use crate::session::lifecycle::recheck_session;
use crate::transport::AsyncIo;

impl<IO: AsyncIo> Connection<IO> {
    /// AUTH re-authentication with a fresh token [MQTT-4.12.1].
    pub(super) fn on_auth(&mut self, a: Auth) -> Result<(), Close> {
        let Some(method) = self.negotiated.auth_method.clone() else {
            // [MQTT-4.12.0-7] AUTH on a connection whose CONNECT had no Authentication Method.
            return Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an authentication method in CONNECT",
            ));
        };
        if a.properties.authentication_method.as_ref() != Some(&method) {
            // [MQTT-4.12.1-1] the method must be the one of CONNECT; breaking that is a protocol
            // error (0x8C, bad authentication method, is not a DISCONNECT reason code, Table 3-10).
            return Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "authentication method differs from CONNECT's",
            ));
        }
        if a.reason != ReasonCode::RE_AUTHENTICATE {
            return Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH from a client must be a re-authentication (0x19)",
            ));
        }
        let data = a.properties.authentication_data.clone().unwrap_or_default();
        let next = match self
            .ctx
            .auth
            .reauthenticate(&self.auth, method.as_str(), &data)
        {
            Ok(next) => next,
            Err(r) => {
                // DISCONNECT has neither 0x86 nor 0x8C: a refused credential is "not authorized".
                return Err(Close::new(
                    ReasonCode::NOT_AUTHORIZED,
                    true,
                    Outcome::WithoutWill,
                    r.label,
                ));
            }
        };
        self.auth = next;
        self.session.set_credential(self.auth.credential.clone());
        self.credential_deadline = credential_deadline(&self.auth);
        // The session keeps only what the new token allows, its will included.
        let tenant = self.auth.tenant.clone();
        recheck_session(
            &tenant,
            &self.session,
            &mut self.state,
            &*self.auth.permissions,
        );
        if self
            .will
            .as_ref()
            .is_some_and(|w| !self.auth.permissions.may_publish(w.topic.as_str()))
        {
            info!(
                client_id = %self.session.client_id,
                "will discarded: the new token may not publish to its topic"
            );
            self.will = None;
        }
        self.send(&Packet::Auth(Auth {
            reason: ReasonCode::SUCCESS,
            properties: AuthProperties {
                authentication_method: Some(method),
                ..Default::default()
            },
        }));
        Ok(())
    }
}
