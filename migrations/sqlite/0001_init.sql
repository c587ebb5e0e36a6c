-- Starling control plane schema (SQLite dialect; migrations/postgres holds the same schema).
-- Times are unix microseconds (created/modified) or unix seconds (expiries), as INTEGER.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    token_hash  TEXT NOT NULL UNIQUE,
    system      INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

CREATE TABLE namespaces (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    name_lower  TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    modified_at INTEGER NOT NULL
);
CREATE INDEX namespaces_account ON namespaces (account_id, name_lower);

CREATE TABLE brokers (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    namespace_id   TEXT NOT NULL REFERENCES namespaces(id),
    name           TEXT NOT NULL,
    name_lower     TEXT NOT NULL,
    description    TEXT NOT NULL,
    auth_type      TEXT NOT NULL,
    expiration     INTEGER,
    on_publish_url TEXT,
    limits         TEXT,
    managed_by     TEXT,
    secret_hash    TEXT NOT NULL,
    version        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    modified_at    INTEGER NOT NULL,
    UNIQUE (namespace_id, name_lower)
);

-- A deleted broker's id and secret hash, so that its pods get 410 Gone and disconnect clients.
CREATE TABLE broker_tombstones (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    deleted_at  INTEGER NOT NULL
);

-- Ed25519 keys; the seed is sealed with AES-256-GCM under the key-encryption key.
CREATE TABLE signing_keys (
    id          TEXT PRIMARY KEY,
    broker_id   TEXT NOT NULL REFERENCES brokers(id) ON DELETE CASCADE,
    kid         TEXT NOT NULL,
    x           TEXT NOT NULL,
    sealed_seed TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('next', 'current', 'retiring')),
    created_at  INTEGER NOT NULL,
    retire_at   INTEGER,
    UNIQUE (broker_id, kid)
);

-- What was issued (never the token itself).
CREATE TABLE issued_credentials (
    jti         TEXT PRIMARY KEY,
    broker_id   TEXT NOT NULL REFERENCES brokers(id) ON DELETE CASCADE,
    client_id   TEXT NOT NULL,
    kid         TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX issued_credentials_broker ON issued_credentials (broker_id);

CREATE TABLE revocations (
    broker_id   TEXT NOT NULL REFERENCES brokers(id) ON DELETE CASCADE,
    jti         TEXT NOT NULL,
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (broker_id, jti)
);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX audit_log_account ON audit_log (account_id, at);
