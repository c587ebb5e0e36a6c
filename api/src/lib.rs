//! The Starling control plane: REST API, stores, signing keys and the internal state feed.
