-- Issued-token records are listed per broker, newest first (GET .../credentials/issued): the
-- index covers that order, and its broker_id prefix serves what the old index did.
DROP INDEX issued_credentials_broker;
CREATE INDEX issued_credentials_broker_time ON issued_credentials (broker_id, issued_at, jti);
