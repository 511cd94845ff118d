-- cloudphone schema v9: placement by measured CPU. Each host carries the CPU busy share its
-- agent last measured (percent of all its CPUs over one heartbeat interval) and the policy's
-- limit above which it takes no new phone (see scheduler::OvercommitPolicy).
ALTER TABLE hosts ADD COLUMN cpu_busy_limit_pct BIGINT NOT NULL DEFAULT 90;
ALTER TABLE hosts ADD COLUMN cpu_busy_pct BIGINT;
