//! `/api/v1/users`: accounts, quotas and API tokens.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};

use super::auth::{credential, Auth, Operator};
use super::error::ApiResult;
use super::extract::{self, ApiJson};
use super::AppState;
use crate::error::Error;
use crate::model::{Role, User};
use crate::store::{audit, users};
use crate::wire::users::{CreateUser, NewToken, UpdateUser, UserWithToken};

/// Routes under `/api/v1/users`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(list).post(create))
        .route("/users/me", get(me))
        .route("/users/{id}", patch(update))
        .route("/users/{id}/tokens", post(new_token))
        .route("/users/{id}/tokens/{token_id}", delete(revoke))
}

/// Validates and hashes a new password on the bounded hash pool.
async fn password(st: &AppState, p: Option<&str>) -> Result<Option<String>, Error> {
    let Some(p) = p else { return Ok(None) };
    if !(8..=256).contains(&p.len()) {
        return Err(Error::Invalid("password: must be 8-256 bytes".into()));
    }
    let p = p.to_owned();
    st.hashes
        .run(move || crate::auth::hash_password(&p))
        .await
        .map(Some)
}

fn quota(field: &str, v: Option<u32>) -> Result<Option<i64>, Error> {
    v.map(|v| extract::range(field, v.into(), 0, 1_000_000))
        .transpose()
}

/// Creates a user and their first token (shared by the route and `serve --bootstrap-admin`).
pub async fn create_user(st: &AppState, actor: &str, req: CreateUser) -> ApiResult<UserWithToken> {
    extract::name("name", &req.name)?;
    let hash = password(st, req.password.as_deref()).await?;
    let max_phones = quota("max_phones", req.max_phones)?.unwrap_or(users::DEFAULT_MAX_PHONES);
    let max_minutes = quota("max_minutes_per_day", req.max_minutes_per_day)?
        .unwrap_or(users::DEFAULT_MAX_MINUTES);
    let token = st.hashes.run(crate::auth::mint_token).await?;
    let mut tx = st.db.begin().await?;
    let user = users::create(
        &mut tx,
        users::NewUser {
            name: &req.name,
            role: req.role,
            password_hash: hash,
            max_phones,
            max_minutes_per_day: max_minutes,
        },
    )
    .await?;
    users::insert_token(&mut tx, &token.id, &user.id, &token.hash).await?;
    audit::record(
        &mut tx,
        actor,
        "user.create",
        &user.id,
        &format!("{} ({})", user.name, user.role.as_str()),
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(UserWithToken {
        user,
        token: token.token,
        token_id: token.id,
    })
}

async fn create(
    State(st): State<AppState>,
    Operator(op): Operator,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserWithToken>)> {
    Ok((
        StatusCode::CREATED,
        Json(create_user(&st, &op.name, req).await?),
    ))
}

async fn list(State(st): State<AppState>, Operator(_): Operator) -> ApiResult<Json<Vec<User>>> {
    let mut tx = st.db.begin().await?;
    Ok(Json(users::list(&mut tx).await?))
}

async fn me(Auth(user): Auth) -> Json<User> {
    Json(user)
}

/// The target user id if `caller` may manage it (self or operator); others get 404.
fn managed<'a>(caller: &User, id: &'a str) -> Result<&'a str, Error> {
    let id = extract::id(id, "u", "user")?;
    if caller.role != Role::Operator && caller.id != id {
        return Err(Error::NotFound("user".into()));
    }
    Ok(id)
}

/// Checks `current` against `id`'s stored password: changing one's own password needs it
/// (a stolen session must not be able to lock the owner out); an operator resetting
/// someone else's does not.
async fn check_current_password(
    st: &AppState,
    id: &str,
    current: Option<String>,
) -> Result<(), Error> {
    let current = current.ok_or_else(|| {
        Error::Invalid("current_password: required to change your own password".into())
    })?;
    let mut tx = st.db.begin().await?;
    let stored = users::password_hash(&mut tx, id).await?;
    drop(tx);
    if !st
        .hashes
        .run(move || crate::auth::verify_password(&current, stored.as_deref()))
        .await?
    {
        return Err(Error::Forbidden(
            "current_password is wrong: the password was not changed".into(),
        ));
    }
    Ok(())
}

/// `PATCH /users/{id}`: quotas (operators) and passwords. A password change ends every
/// other session of the user: all their API tokens but the one used for this request are
/// revoked and all their web sessions but this one are deleted.
async fn update(
    State(st): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<User>> {
    let id = managed(&caller, &id)?;
    let quotas_changed = req.max_phones.is_some() || req.max_minutes_per_day.is_some();
    if quotas_changed && caller.role != Role::Operator {
        return Err(Error::Forbidden("only operators change quotas".into()).into());
    }
    let max_phones = quota("max_phones", req.max_phones)?;
    let max_minutes = quota("max_minutes_per_day", req.max_minutes_per_day)?;
    if req.password.is_some() && caller.id == id {
        check_current_password(&st, id, req.current_password).await?;
    }
    let hash = password(&st, req.password.as_deref()).await?;
    let changed_password = hash.is_some();
    let mut tx = st.db.begin().await?;
    let user = users::update(&mut tx, id, max_phones, max_minutes, hash).await?;
    if changed_password {
        let (token, session) = if caller.id == id {
            credential(&headers)
        } else {
            (None, None)
        };
        users::end_other_sessions(&mut tx, id, token.as_deref(), session.as_deref()).await?;
    }
    let what = if changed_password { "password" } else { "" };
    audit::record(&mut tx, &caller.name, "user.update", id, what, None).await?;
    tx.commit().await?;
    Ok(Json(user))
}

async fn new_token(
    State(st): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    let id = managed(&caller, &id)?;
    let t = st.hashes.run(crate::auth::mint_token).await?;
    let mut tx = st.db.begin().await?;
    users::get(&mut tx, id).await?;
    users::insert_token(&mut tx, &t.id, id, &t.hash).await?;
    audit::record(&mut tx, &caller.name, "token.create", &t.id, id, None).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            token_id: t.id,
            token: t.token,
        }),
    ))
}

async fn revoke(
    State(st): State<AppState>,
    Auth(caller): Auth,
    Path((id, token_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = managed(&caller, &id)?;
    let mut tx = st.db.begin().await?;
    if !users::revoke_token(&mut tx, id, &token_id).await? {
        return Err(Error::NotFound("token".into()).into());
    }
    audit::record(&mut tx, &caller.name, "token.revoke", &token_id, id, None).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
