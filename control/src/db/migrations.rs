//! Versioned schema migrations, embedded in the binary and shared by both backends.

/// `(version, sql)` in order; a version, once released, is never edited (add a new one).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_host_relay.sql")),
    (3, include_str!("../../migrations/0003_lease_indexes.sql")),
    (4, include_str!("../../migrations/0004_utilisation.sql")),
    (6, include_str!("../../migrations/0006_host_identity.sql")),
    (
        7,
        include_str!("../../migrations/0007_placement_by_use.sql"),
    ),
    (8, include_str!("../../migrations/0008_adb_keys.sql")),
    (
        9,
        include_str!("../../migrations/0009_placement_by_cpu.sql"),
    ),
];
