//! Transports below MQTT: TLS (rustls, reloadable certificates), WebSockets and the dev CA.
//!
//! Every transport ends as one byte stream (`AsyncRead + AsyncWrite`) that the connection task
//! reads MQTT packets from; the session and routing code never knows which transport it is on.
