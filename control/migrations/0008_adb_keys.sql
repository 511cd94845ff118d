-- cloudphone schema v8: adb public keys per user. A phone's adbd accepts only the keys of the
-- user holding its lease; serve reads them here when a tunnel opens (never cached).
CREATE TABLE adb_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    fingerprint TEXT NOT NULL,
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (user_id, fingerprint)
);
