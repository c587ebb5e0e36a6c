-- Ed25519 keys that sign a broker's on-publish hook requests, apart from the keys that sign its
-- client tokens: the state feed gives a broker with a hook the private part of its current hook
-- key, and brokers never accept a hook key for a client token. The seed is sealed like a signing
-- key's, with `<broker id>/hook/<kid>` as associated data. Brokers created before this migration
-- get their hook key when the api starts.
CREATE TABLE hook_keys (
    id          TEXT PRIMARY KEY,
    broker_id   TEXT NOT NULL REFERENCES brokers(id) ON DELETE CASCADE,
    kid         TEXT NOT NULL,
    x           TEXT NOT NULL,
    sealed_seed TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('current', 'retiring')),
    created_at  BIGINT NOT NULL,
    retire_at   BIGINT,
    UNIQUE (broker_id, kid)
);
CREATE UNIQUE INDEX hook_keys_one_current ON hook_keys (broker_id) WHERE status = 'current';
