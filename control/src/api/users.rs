//! `/api/v1/users`: accounts, quotas and API tokens.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};

use super::auth::{Auth, Operator};
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

fn password(p: &str) -> Result<String, Error> {
    if !(8..=256).contains(&p.len()) {
        return Err(Error::Invalid("password: must be 8-256 bytes".into()));
    }
    Ok(crate::auth::hash_password(p))
}

fn quota(field: &str, v: Option<u32>) -> Result<Option<i64>, Error> {
    v.map(|v| extract::range(field, v.into(), 0, 1_000_000))
        .transpose()
}

/// Creates a user and their first token (shared by the route and `serve --bootstrap-admin`).
pub async fn create_user(st: &AppState, actor: &str, req: CreateUser) -> ApiResult<UserWithToken> {
    extract::name("name", &req.name)?;
    let hash = req.password.as_deref().map(password).transpose()?;
    let max_phones = quota("max_phones", req.max_phones)?.unwrap_or(users::DEFAULT_MAX_PHONES);
    let max_minutes = quota("max_minutes_per_day", req.max_minutes_per_day)?
        .unwrap_or(users::DEFAULT_MAX_MINUTES);
    let token = tokio::task::spawn_blocking(crate::auth::mint_token)
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
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

async fn update(
    State(st): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<User>> {
    let id = managed(&caller, &id)?;
    let quotas_changed = req.max_phones.is_some() || req.max_minutes_per_day.is_some();
    if quotas_changed && caller.role != Role::Operator {
        return Err(Error::Forbidden("only operators change quotas".into()).into());
    }
    let max_phones = quota("max_phones", req.max_phones)?;
    let max_minutes = quota("max_minutes_per_day", req.max_minutes_per_day)?;
    let hash = req.password.as_deref().map(password).transpose()?;
    let mut tx = st.db.begin().await?;
    let user = users::update(&mut tx, id, max_phones, max_minutes, hash).await?;
    audit::record(&mut tx, &caller.name, "user.update", id, "", None).await?;
    tx.commit().await?;
    st.tokens.forget(None, id);
    Ok(Json(user))
}

async fn new_token(
    State(st): State<AppState>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    let id = managed(&caller, &id)?;
    let t = tokio::task::spawn_blocking(crate::auth::mint_token)
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
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
    st.tokens.forget(Some(&token_id), id);
    Ok(StatusCode::NO_CONTENT)
}
