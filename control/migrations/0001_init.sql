-- cloudphone schema v1. Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Times are Unix milliseconds (BIGINT); booleans are BIGINT 0/1; ids are random text.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT,
    max_phones BIGINT NOT NULL,
    max_minutes_per_day BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    hash TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    expires_ms BIGINT NOT NULL
);
CREATE TABLE profiles (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    dpi BIGINT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    image TEXT NOT NULL,
    pool_size BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    max_phones BIGINT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE phones (
    id TEXT PRIMARY KEY,
    profile_id TEXT NOT NULL REFERENCES profiles(id),
    host_id TEXT NOT NULL REFERENCES hosts(id),
    state TEXT NOT NULL,
    generation BIGINT NOT NULL,
    reserved_for TEXT REFERENCES users(id),
    api_socket TEXT,
    reason TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX phones_profile_state ON phones (profile_id, state);
CREATE INDEX phones_host ON phones (host_id);
CREATE TABLE leases (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    phone_id TEXT NOT NULL REFERENCES phones(id),
    profile_id TEXT NOT NULL REFERENCES profiles(id),
    state TEXT NOT NULL,
    persistent BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    ended_ms BIGINT
);
CREATE INDEX leases_state_expiry ON leases (state, expires_ms);
CREATE INDEX leases_user ON leases (user_id, state);
CREATE INDEX leases_phone ON leases (phone_id, state);
CREATE TABLE queue (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users(id),
    profile_id TEXT NOT NULL REFERENCES profiles(id),
    duration_s BIGINT NOT NULL,
    persistent BIGINT NOT NULL,
    state TEXT NOT NULL,
    lease_id TEXT,
    created_ms BIGINT NOT NULL
);
CREATE INDEX queue_profile_state ON queue (profile_id, state, seq);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('queue', 0);
CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    notify_user TEXT
);
CREATE INDEX audit_at ON audit (at_ms);
CREATE INDEX audit_notify ON audit (notify_user, at_ms);
