-- The key that signed a revoked token, from its issuance record: a revocation of a token without
-- `exp` is kept until that key leaves the broker's key set (then the token cannot verify anyway).
ALTER TABLE revocations ADD COLUMN kid TEXT;
UPDATE revocations SET kid = (
    SELECT i.kid FROM issued_credentials i
    WHERE i.jti = revocations.jti AND i.broker_id = revocations.broker_id
);
