//! Device profiles.

use crate::db::{Row, Tx};
use crate::error::Result;
use crate::ids::new_id;
use crate::model::Profile;

const COLS: &str = "SELECT id, name, width, height, dpi, vcpus, memory_mib, image, pool_size, created_ms FROM profiles";

fn decode(r: &Row) -> Result<Profile> {
    Ok(Profile {
        id: r.text(0)?,
        name: r.text(1)?,
        width: r.int(2)?,
        height: r.int(3)?,
        dpi: r.int(4)?,
        vcpus: r.int(5)?,
        memory_mib: r.int(6)?,
        image: r.text(7)?,
        pool_size: r.int(8)?,
        created_ms: r.int(9)?,
    })
}

/// Inserts a profile (fields already validated; `id`/`created_ms` are filled here).
pub async fn create(tx: &mut Tx, mut p: Profile) -> Result<Profile> {
    p.id = new_id("pr");
    p.created_ms = crate::now_ms();
    tx.execute(
        "INSERT INTO profiles (id, name, width, height, dpi, vcpus, memory_mib, image, pool_size, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            (&p.id).into(),
            (&p.name).into(),
            p.width.into(),
            p.height.into(),
            p.dpi.into(),
            p.vcpus.into(),
            p.memory_mib.into(),
            (&p.image).into(),
            p.pool_size.into(),
            p.created_ms.into(),
        ],
    )
    .await?;
    Ok(p)
}

/// A profile by id or name.
pub async fn get(tx: &mut Tx, key: &str) -> Result<Profile> {
    decode(
        &super::one(
            tx,
            "profile",
            &format!("{COLS} WHERE id = ? OR name = ?"),
            &[key.into(), key.into()],
        )
        .await?,
    )
}

/// A profile by id or name, row-locked for the rest of the transaction (see module docs of
/// `store` for the lock order).
pub async fn get_locked(tx: &mut Tx, key: &str) -> Result<Profile> {
    let sql = format!("{COLS} WHERE id = ? OR name = ?{}", tx.lock_suffix());
    decode(&super::one(tx, "profile", &sql, &[key.into(), key.into()]).await?)
}

/// All profiles by name.
pub async fn list(tx: &mut Tx) -> Result<Vec<Profile>> {
    tx.query(&format!("{COLS} ORDER BY name"), &[])
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Changes the warm-pool size (the only field that may change while phones exist: the
/// others describe phones already running).
pub async fn set_pool_size(tx: &mut Tx, key: &str, pool_size: i64) -> Result<Profile> {
    let p = get_locked(tx, key).await?;
    tx.execute(
        "UPDATE profiles SET pool_size = ? WHERE id = ?",
        &[pool_size.into(), (&p.id).into()],
    )
    .await?;
    get(tx, &p.id).await
}
