//! Keys and values of the store: how a tenant's retained messages and sessions are laid out in
//! the one table of the engine.
//!
//! Keys (bytes; `len16` is a big-endian u16 length, then the bytes):
//! - `len16(tenant) 'r' topic`: a retained message;
//! - `len16(tenant) 's' len16(client id) 'm'`: a session's expiry and when it went offline;
//! - `... 'f' filter`: one subscription (options and identifier);
//! - `... 'q' seq64`: a queued QoS 1/2 delivery, in queue order;
//! - `... 'i' packet id16`: an outgoing QoS 1/2 delivery in flight (or its PUBREL), with its
//!   place in the send order;
//! - `... 'r' packet id16`: a QoS 2 message received and not released yet;
//! - `... 'w'`: a will waiting for its delay;
//! - `00 00 'c'` (the empty tenant, which no tenant is): the time of the last commit.
//!
//! Everything of a tenant starts with `len16(tenant)`, everything of a session with
//! `len16(tenant) 's' len16(client id)`, so a tenant or a session is deleted by prefix, and
//! one can never be read as another's (the lengths come first).
//!
//! Values start with a format byte ([`FORMAT`]). A message is kept as its PUBLISH packet
//! (MQTT 5.0 encoding, the project's codec) behind the absolute time its expiry ends (Unix
//! milliseconds, so the time the broker was down counts) and its publisher.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use starling_codec::{
    Decoder, Direction, Packet, ProtocolVersion, Publish, QoS, RetainHandling, SubscriptionOptions,
};
use tokio::time::Instant;

use crate::message::{Delivery, Message, SharedTarget};
use crate::session::SubscriptionRecord;

/// The format of every value written by this version.
pub const FORMAT: u8 = 1;

/// A value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stored record does not decode: {0}")]
pub struct BadRecord(pub &'static str);

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> u64 {
    unix_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch of `t`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The wall-clock time (Unix ms) of the monotonic instant `at`.
pub fn instant_to_unix_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = unix_ms_now();
    if at >= now {
        wall.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
    } else {
        wall.saturating_sub(u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX))
    }
}

/// The monotonic instant of the wall-clock time `ms` (Unix ms); a past time is now.
pub fn unix_ms_to_instant(ms: u64) -> Instant {
    let wall = unix_ms_now();
    Instant::now() + Duration::from_millis(ms.saturating_sub(wall))
}

fn put_len16(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

/// The prefix of everything a tenant keeps.
pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 2);
    put_len16(&mut k, tenant.as_bytes());
    k
}

/// The key of the retained message of `topic`.
pub fn retained_key(tenant: &str, topic: &str) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.push(b'r');
    k.extend_from_slice(topic.as_bytes());
    k
}

/// The prefix of everything a session keeps.
pub fn session_prefix(tenant: &str, client_id: &str) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.push(b's');
    put_len16(&mut k, client_id.as_bytes());
    k
}

/// The key of one of a session's records: `kind` and what follows it.
pub fn session_key(tenant: &str, client_id: &str, kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = session_prefix(tenant, client_id);
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

/// The key of the time of the last commit.
pub const LAST_COMMIT_KEY: &[u8] = &[0, 0, b'c'];

/// A key read back, by what it holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// [`LAST_COMMIT_KEY`].
    LastCommit,
    /// A retained message.
    Retained { tenant: &'a str, topic: &'a str },
    /// One of a session's records: its kind byte and what follows it.
    Session {
        tenant: &'a str,
        client_id: &'a str,
        kind: u8,
        rest: &'a [u8],
    },
}

fn take_len16<'a>(k: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = k.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let (s, rest) = (rest.get(..len)?, rest.get(len..)?);
    *k = rest;
    Some(s)
}

/// Reads a key.
pub fn parse_key(mut k: &[u8]) -> Result<Key<'_>, BadRecord> {
    if k == LAST_COMMIT_KEY {
        return Ok(Key::LastCommit);
    }
    let bad = BadRecord("key");
    let tenant =
        std::str::from_utf8(take_len16(&mut k).ok_or(bad.clone())?).map_err(|_| bad.clone())?;
    let (&kind, mut rest) = k.split_first().ok_or(bad.clone())?;
    match kind {
        b'r' => Ok(Key::Retained {
            tenant,
            topic: std::str::from_utf8(rest).map_err(|_| bad.clone())?,
        }),
        b's' => {
            let client_id = std::str::from_utf8(take_len16(&mut rest).ok_or(bad.clone())?)
                .map_err(|_| bad.clone())?;
            let (&kind, rest) = rest.split_first().ok_or(bad.clone())?;
            Ok(Key::Session {
                tenant,
                client_id,
                kind,
                rest,
            })
        }
        _ => Err(bad),
    }
}

/// A cursor over a value's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, BadRecord> {
        let (&b, rest) = self.0.split_first().ok_or(BadRecord("truncated"))?;
        self.0 = rest;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, BadRecord> {
        let (b, rest) = self
            .0
            .split_first_chunk::<2>()
            .ok_or(BadRecord("truncated"))?;
        self.0 = rest;
        Ok(u16::from_be_bytes(*b))
    }
    fn u32(&mut self) -> Result<u32, BadRecord> {
        let (b, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or(BadRecord("truncated"))?;
        self.0 = rest;
        Ok(u32::from_be_bytes(*b))
    }
    fn u64(&mut self) -> Result<u64, BadRecord> {
        let (b, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or(BadRecord("truncated"))?;
        self.0 = rest;
        Ok(u64::from_be_bytes(*b))
    }
    fn bytes(&mut self) -> Result<&'a [u8], BadRecord> {
        let len = usize::from(self.u16()?);
        let b = self.0.get(..len).ok_or(BadRecord("truncated"))?;
        self.0 = &self.0[len..];
        Ok(b)
    }
    fn str(&mut self) -> Result<&'a str, BadRecord> {
        std::str::from_utf8(self.bytes()?).map_err(|_| BadRecord("text"))
    }
    fn format(&mut self) -> Result<(), BadRecord> {
        match self.u8()? {
            FORMAT => Ok(()),
            _ => Err(BadRecord("unknown format")),
        }
    }
}

/// A message: its expiry (absolute), its publisher, then its PUBLISH packet.
fn put_message(out: &mut Vec<u8>, m: &Message) {
    match m.expires_at {
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&instant_to_unix_ms(at).to_be_bytes());
        }
        None => out.push(0),
    }
    match &m.publisher {
        Some(p) => {
            out.push(1);
            put_len16(out, p.as_bytes());
        }
        None => out.push(0),
    }
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: m.qos,
        retain: m.retain,
        topic: m.topic.clone(),
        packet_id: (m.qos != QoS::AtMostOnce).then_some(1),
        properties: m.properties.clone(),
        payload: m.payload.clone(),
    });
    let mut buf = BytesMut::new();
    // A message the broker received always encodes again (it was decoded within the limits).
    let _ = publish.encode(ProtocolVersion::V5, &mut buf);
    out.extend_from_slice(&buf);
}

fn read_message(r: &mut Reader<'_>) -> Result<Option<Message>, BadRecord> {
    let expires_ms = match r.u8()? {
        0 => None,
        _ => Some(r.u64()?),
    };
    let publisher: Option<Arc<str>> = match r.u8()? {
        0 => None,
        _ => Some(Arc::from(r.str()?)),
    };
    let mut buf = BytesMut::from(r.0);
    r.0 = &[];
    let mut decoder = Decoder::with_version(Direction::ToClient, ProtocolVersion::V5, u32::MAX);
    let Ok(Some(Packet::Publish(p))) = decoder.decode(&mut buf) else {
        return Err(BadRecord("message"));
    };
    if let Some(ms) = expires_ms {
        if ms <= unix_ms_now() {
            // Expired while the broker was down.
            return Ok(None);
        }
    }
    Ok(Some(Message::new(
        p.topic.as_str(),
        &p.payload,
        p.qos,
        p.retain,
        &p.properties,
        expires_ms.map(unix_ms_to_instant),
        publisher,
    )))
}

/// A retained message.
pub fn encode_retained(m: &Message) -> Vec<u8> {
    let mut out = vec![FORMAT];
    put_message(&mut out, m);
    out
}

/// A retained message read back; `None` when it expired meanwhile.
pub fn decode_retained(v: &[u8]) -> Result<Option<Message>, BadRecord> {
    let mut r = Reader(v);
    r.format()?;
    read_message(&mut r)
}

/// A delivery (queued or in flight): its QoS, RETAIN, subscription identifiers, shared
/// subscription, place in the send order, then its message.
pub fn encode_delivery(d: &Delivery, order: u64) -> Vec<u8> {
    let mut out = vec![FORMAT, d.qos.as_u8(), u8::from(d.retain)];
    out.extend_from_slice(&order.to_be_bytes());
    out.push(u8::try_from(d.subscription_ids.len()).unwrap_or(u8::MAX));
    for id in d.subscription_ids.iter().take(usize::from(u8::MAX)) {
        out.extend_from_slice(&id.to_be_bytes());
    }
    match &d.shared {
        Some(s) => {
            out.push(1);
            put_len16(&mut out, s.group.as_bytes());
            put_len16(&mut out, s.filter.as_bytes());
        }
        None => out.push(0),
    }
    put_message(&mut out, &d.message);
    out
}

/// A delivery read back with its place in the send order; `None` when its message expired.
pub fn decode_delivery(v: &[u8]) -> Result<Option<(Delivery, u64)>, BadRecord> {
    let mut r = Reader(v);
    r.format()?;
    let qos = QoS::from_u8(r.u8()?).ok_or(BadRecord("qos"))?;
    let retain = r.u8()? != 0;
    let order = r.u64()?;
    let n = r.u8()?;
    let mut subscription_ids = crate::message::SubscriptionIds::new();
    for _ in 0..n {
        subscription_ids.push(r.u32()?);
    }
    let shared = match r.u8()? {
        0 => None,
        _ => Some(SharedTarget {
            group: Arc::from(r.str()?),
            filter: Arc::from(r.str()?),
        }),
    };
    let Some(message) = read_message(&mut r)? else {
        return Ok(None);
    };
    Ok(Some((
        Delivery {
            message: Arc::new(message),
            qos,
            retain,
            subscription_ids,
            shared,
            stored: 0,
        },
        order,
    )))
}

/// A PUBREL sent and not completed, with its place in the send order.
pub fn encode_released(order: u64) -> Vec<u8> {
    let mut out = vec![FORMAT, 0xff];
    out.extend_from_slice(&order.to_be_bytes());
    out
}

/// Whether an in-flight value is a PUBREL ([`encode_released`]), and its place.
pub fn decode_released(v: &[u8]) -> Option<u64> {
    match v {
        [FORMAT, 0xff, rest @ ..] => rest.first_chunk::<8>().map(|b| u64::from_be_bytes(*b)),
        _ => None,
    }
}

/// A subscription's options and identifier.
pub fn encode_subscription(r: &SubscriptionRecord) -> Vec<u8> {
    let o = r.options;
    let options = o.qos.as_u8()
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4;
    let mut out = vec![FORMAT, options];
    match r.id {
        Some(id) => {
            out.push(1);
            out.extend_from_slice(&id.to_be_bytes());
        }
        None => out.push(0),
    }
    out
}

/// A subscription read back.
pub fn decode_subscription(v: &[u8]) -> Result<SubscriptionRecord, BadRecord> {
    let mut r = Reader(v);
    r.format()?;
    let b = r.u8()?;
    let options = SubscriptionOptions {
        qos: QoS::from_u8(b & 0b11).ok_or(BadRecord("qos"))?,
        no_local: b & 0b100 != 0,
        retain_as_published: b & 0b1000 != 0,
        retain_handling: match (b >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            _ => RetainHandling::DoNotSend,
        },
    };
    let id = match r.u8()? {
        0 => None,
        _ => Some(r.u32()?),
    };
    Ok(SubscriptionRecord { options, id })
}

/// A session's expiry interval and, when it is offline, when it ends (Unix ms; 0: never, or
/// connected).
pub fn encode_meta(expiry_secs: u32, offline_ends_at: Option<u64>) -> Vec<u8> {
    let mut out = vec![FORMAT];
    out.extend_from_slice(&expiry_secs.to_be_bytes());
    match offline_ends_at {
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&at.to_be_bytes());
        }
        None => out.push(0),
    }
    out
}

/// A session's meta record read back.
pub fn decode_meta(v: &[u8]) -> Result<(u32, Option<u64>), BadRecord> {
    let mut r = Reader(v);
    r.format()?;
    let expiry = r.u32()?;
    let ends = match r.u8()? {
        0 => None,
        _ => Some(r.u64()?),
    };
    Ok((expiry, ends))
}

/// The credential a session was last served with: its token id, signing key, subject and when
/// it ends (unix seconds).
pub fn encode_credential(c: &crate::auth::Credential) -> Vec<u8> {
    let mut out = vec![FORMAT];
    put_len16(&mut out, c.jti.as_bytes());
    put_len16(&mut out, c.kid.as_bytes());
    put_len16(&mut out, c.sub.as_bytes());
    match c.ends_at {
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&at.to_be_bytes());
        }
        None => out.push(0),
    }
    out
}

/// A session's credential read back.
pub fn decode_credential(v: &[u8]) -> Result<crate::auth::Credential, BadRecord> {
    let mut r = Reader(v);
    r.format()?;
    let jti = Arc::from(r.str()?);
    let kid = Arc::from(r.str()?);
    let sub = r.str()?.to_owned();
    let ends_at = match r.u8()? {
        0 => None,
        // Written as the i64's bytes.
        _ => Some(r.u64()? as i64),
    };
    Ok(crate::auth::Credential {
        jti,
        kid,
        sub,
        ends_at,
    })
}

/// A will waiting for its delay: when it is due (Unix ms), then the message.
pub fn encode_will(m: &Message, due_ms: u64) -> Vec<u8> {
    let mut out = vec![FORMAT];
    out.extend_from_slice(&due_ms.to_be_bytes());
    put_message(&mut out, m);
    out
}

/// A will read back: when it is due and the message (`None` when it expired).
pub fn decode_will(v: &[u8]) -> Result<(u64, Option<Message>), BadRecord> {
    let mut r = Reader(v);
    r.format()?;
    let due = r.u64()?;
    Ok((due, read_message(&mut r)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_codec::PublishProperties;

    #[test]
    fn keys_read_back_and_never_run_into_another_tenant_or_session() {
        let k = session_key("t1", "c\0f", b'f', b"a/#");
        assert_eq!(
            parse_key(&k).unwrap(),
            Key::Session {
                tenant: "t1",
                client_id: "c\0f",
                kind: b'f',
                rest: b"a/#"
            }
        );
        assert!(!k.starts_with(&session_prefix("t1", "c")));
        assert!(!retained_key("t10", "x").starts_with(&tenant_prefix("t1")));
        assert_eq!(
            parse_key(&retained_key("t", "a/b")).unwrap(),
            Key::Retained {
                tenant: "t",
                topic: "a/b"
            }
        );
        assert_eq!(parse_key(LAST_COMMIT_KEY).unwrap(), Key::LastCommit);
        assert!(parse_key(&[0, 9, b'x']).is_err());
    }

    #[test]
    fn a_delivery_reads_back_with_its_message_expiry_and_properties() {
        let props = PublishProperties {
            message_expiry_interval: Some(60),
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        let m = Message::new(
            "a/b",
            b"hello",
            QoS::ExactlyOnce,
            true,
            &props,
            Some(Instant::now() + Duration::from_secs(60)),
            Some(Arc::from("pub")),
        );
        let d = Delivery {
            message: Arc::new(m),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: [3, 9].into_iter().collect(),
            shared: Some(SharedTarget {
                group: Arc::from("g"),
                filter: Arc::from("a/+"),
            }),
            stored: 0,
        };
        let (back, order) = decode_delivery(&encode_delivery(&d, 42)).unwrap().unwrap();
        assert_eq!(order, 42);
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert_eq!(&back.subscription_ids[..], &[3, 9]);
        assert_eq!(back.shared, d.shared);
        assert_eq!(back.message.topic.as_str(), "a/b");
        assert_eq!(&back.message.payload[..], b"hello");
        assert_eq!(back.message.publisher.as_deref(), Some("pub"));
        assert_eq!(
            back.message.properties.user_properties,
            props.user_properties
        );
        let left = back.message.remaining_expiry(Instant::now()).unwrap();
        assert!((58..=60).contains(&left), "{left}");
        let expired = Message::new(
            "a",
            b"x",
            QoS::AtLeastOnce,
            false,
            &Default::default(),
            Some(Instant::now()),
            None,
        );
        assert!(
            decode_retained(&encode_retained(&expired))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn subscriptions_meta_and_truncated_values() {
        let r = SubscriptionRecord {
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
            id: Some(77),
        };
        let back = decode_subscription(&encode_subscription(&r)).unwrap();
        assert_eq!(back.options, r.options);
        assert_eq!(back.id, Some(77));
        assert_eq!(
            decode_meta(&encode_meta(30, Some(5))).unwrap(),
            (30, Some(5))
        );
        let v = encode_subscription(&r);
        assert!(decode_subscription(&v[..2]).is_err());
        assert!(decode_meta(&[9, 0, 0]).is_err(), "unknown format");
        assert_eq!(decode_released(&encode_released(8)), Some(8));
    }
}
