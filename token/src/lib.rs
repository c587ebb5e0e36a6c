//! Starling tokens: claims, topic ACLs, JWK/JWKS, Ed25519 signing and verification.
