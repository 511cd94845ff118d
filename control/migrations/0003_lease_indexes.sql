-- cloudphone schema v3: indexes shaped for the lease hot path (acquire/release).
-- Partial indexes (SQLite and PostgreSQL both have them) hold only the rows the hot queries
-- read, so ended leases and audit lines nobody is notified of cost no index writes.
DROP INDEX leases_state_expiry;
DROP INDEX leases_user;
DROP INDEX leases_phone;
-- Expiry loop: active leases by expiry.
CREATE INDEX leases_active_expiry ON leases (expires_ms) WHERE state = 'active';
-- Quota "phones held" and visibility: a user's active leases.
CREATE INDEX leases_active_user ON leases (user_id) WHERE state = 'active';
-- The active lease of a phone.
CREATE INDEX leases_active_phone ON leases (phone_id) WHERE state = 'active';
-- Quota "phones held": a user's waiting queue entries (the queue keeps served entries).
CREATE INDEX queue_waiting_user ON queue (user_id) WHERE state = 'waiting';
-- Quota "phone-minutes today": covering, so the check reads no table rows.
CREATE INDEX leases_user_span ON leases (user_id, ended_ms, started_ms);
-- Notifications of one user; most audit lines notify nobody and stay out of it.
DROP INDEX audit_notify;
CREATE INDEX audit_notify ON audit (notify_user, at_ms) WHERE notify_user IS NOT NULL;
