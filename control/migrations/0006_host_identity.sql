-- cloudphone schema v6: a credential per host (issue 15). An operator enrols a host by name with
-- the state root its agent keeps phones under and the most capacity it may claim; the agent
-- trades the one-time join token for its own key. Only SHA-256 hashes of both are stored
-- (each is 192 random bits, so a fast hash suffices).
ALTER TABLE hosts ADD COLUMN state_root TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN cap_vcpus BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN cap_memory_mib BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN cap_max_phones BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN join_hash TEXT;
ALTER TABLE hosts ADD COLUMN key_hash TEXT;
CREATE UNIQUE INDEX hosts_join_hash ON hosts (join_hash);
CREATE UNIQUE INDEX hosts_key_hash ON hosts (key_hash);
-- The shared agent role is gone: its tokens stop working, its users become plain users.
UPDATE api_tokens SET revoked = 1 WHERE user_id IN (SELECT id FROM users WHERE role = 'agent');
UPDATE users SET role = 'user' WHERE role = 'agent';
