-- cloudphone schema v7: placement by use. Each host carries its overcommit policy (set by an
-- operator) and the memory its agent last measured as available; each phone the private
-- memory and CPU time its VMM last measured. The scheduler counts phones by use within the
-- policy's limits (see scheduler::OvercommitPolicy).
ALTER TABLE hosts ADD COLUMN vcpu_overcommit_pct BIGINT NOT NULL DEFAULT 500;
ALTER TABLE hosts ADD COLUMN memory_overcommit_pct BIGINT NOT NULL DEFAULT 200;
ALTER TABLE hosts ADD COLUMN memory_reserve_mib BIGINT NOT NULL DEFAULT 512;
ALTER TABLE hosts ADD COLUMN mem_available_mib BIGINT;
ALTER TABLE phones ADD COLUMN private_mib BIGINT;
ALTER TABLE phones ADD COLUMN cpu_ms BIGINT;
