//! The OpenAPI 3.0 document served at `/api/v1/openapi.json`, generated from [`ROUTES`]
//! (a test requests every listed route and checks the router knows it).

use axum::Json;
use serde_json::{json, Map, Value};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    AnyUser,
    Operator,
    /// A host agent with its own host key, for its own host only.
    Host,
}

/// One documented operation: method, path (under `/api/v1` unless it starts with `//`),
/// summary, access, request schema, success status and response schema.
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub access: Access,
    pub request: Option<&'static str>,
    pub status: u16,
    pub response: Option<&'static str>,
}

const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    access: Access,
    request: Option<&'static str>,
    status: u16,
    response: Option<&'static str>,
) -> RouteDoc {
    RouteDoc {
        method,
        path,
        summary,
        access,
        request,
        status,
        response,
    }
}

use Access::*;

/// Every route of the API.
pub const ROUTES: &[RouteDoc] = &[
    r(
        "post",
        "/auth/login",
        "Log in (web UI): sets the HttpOnly SameSite=Strict session cookie; 5 failures per user name or 20 per address lock it with doubling backoff (429 + Retry-After)",
        Public,
        Some("LoginRequest"),
        200,
        Some("User"),
    ),
    r(
        "post",
        "/auth/logout",
        "End the session",
        AnyUser,
        None,
        204,
        None,
    ),
    r(
        "get",
        "/auth/whoami",
        "The caller",
        AnyUser,
        None,
        200,
        Some("User"),
    ),
    r(
        "get",
        "/leases/{id}/adb",
        "adb tunnel (WebSocket, binary messages) to the lease's phone, offering adbd the lease user's keys; the lease holder or an operator; closes with 4001 when the lease ends (`cloudphone adb`)",
        AnyUser,
        None,
        101,
        None,
    ),
    r(
        "get",
        "/keys",
        "The caller's adb public keys (with fingerprints)",
        AnyUser,
        None,
        200,
        Some("AdbKeyList"),
    ),
    r(
        "post",
        "/keys",
        "Register an adb public key (base64 of the 524-byte Android RSA key; at most 16 per user): phones the caller leases accept it",
        AnyUser,
        Some("AddKey"),
        201,
        Some("AdbKey"),
    ),
    r(
        "delete",
        "/keys/{id}",
        "Remove one of the caller's adb keys (tunnels opened after this no longer offer it)",
        AnyUser,
        None,
        200,
        Some("AdbKey"),
    ),
    r(
        "get",
        "/users",
        "List users",
        Operator,
        None,
        200,
        Some("UserList"),
    ),
    r(
        "post",
        "/users",
        "Create a user and its first API token (shown once)",
        Operator,
        Some("CreateUser"),
        201,
        Some("UserWithToken"),
    ),
    r(
        "get",
        "/users/me",
        "The caller",
        AnyUser,
        None,
        200,
        Some("User"),
    ),
    r(
        "patch",
        "/users/{id}",
        "Change quotas (operators) or a password (your own needs current_password); a password change revokes the user's other tokens and sessions",
        AnyUser,
        Some("UpdateUser"),
        200,
        Some("User"),
    ),
    r(
        "post",
        "/users/{id}/tokens",
        "Mint another API token",
        AnyUser,
        None,
        201,
        Some("NewToken"),
    ),
    r(
        "delete",
        "/users/{id}/tokens/{token_id}",
        "Revoke an API token",
        AnyUser,
        None,
        204,
        None,
    ),
    r(
        "get",
        "/profiles",
        "List device profiles",
        AnyUser,
        None,
        200,
        Some("ProfileList"),
    ),
    r(
        "post",
        "/profiles",
        "Create a device profile",
        Operator,
        Some("CreateProfile"),
        201,
        Some("Profile"),
    ),
    r(
        "get",
        "/profiles/{key}",
        "A profile by id or name",
        AnyUser,
        None,
        200,
        Some("Profile"),
    ),
    r(
        "patch",
        "/profiles/{key}",
        "Resize the warm pool",
        Operator,
        Some("UpdateProfile"),
        200,
        Some("Profile"),
    ),
    r(
        "get",
        "/phones",
        "Phones visible to the caller (own; operators all); ?state=",
        AnyUser,
        None,
        200,
        Some("PhoneList"),
    ),
    r(
        "get",
        "/phones/{id}",
        "A phone (another user's phone is 404)",
        AnyUser,
        None,
        200,
        Some("Phone"),
    ),
    r(
        "delete",
        "/phones/{id}",
        "Stop a phone (operators; owners of a parked persistent phone)",
        AnyUser,
        None,
        200,
        Some("Phone"),
    ),
    r(
        "post",
        "/leases",
        "Ask for a phone: 201 granted or 202 queued",
        AnyUser,
        Some("AcquireRequest"),
        201,
        Some("AcquireResponse"),
    ),
    r(
        "get",
        "/leases",
        "Own leases (operators all); ?all=true includes ended",
        AnyUser,
        None,
        200,
        Some("LeaseList"),
    ),
    r(
        "get",
        "/leases/{id}",
        "A lease",
        AnyUser,
        None,
        200,
        Some("Lease"),
    ),
    r(
        "delete",
        "/leases/{id}",
        "Release a lease (the phone is reset unless persistent)",
        AnyUser,
        None,
        200,
        Some("Lease"),
    ),
    r(
        "post",
        "/leases/{id}/renew",
        "Extend a lease to duration_s from now",
        AnyUser,
        Some("RenewRequest"),
        200,
        Some("Lease"),
    ),
    r(
        "get",
        "/queue",
        "Waiting requests with position and ETA",
        AnyUser,
        None,
        200,
        Some("QueueList"),
    ),
    r(
        "get",
        "/queue/{id}",
        "One queue entry (granted ones carry lease_id)",
        AnyUser,
        None,
        200,
        Some("QueueEntry"),
    ),
    r(
        "delete",
        "/queue/{id}",
        "Leave the queue",
        AnyUser,
        None,
        200,
        Some("QueueEntry"),
    ),
    r(
        "get",
        "/hosts",
        "List hosts",
        Operator,
        None,
        200,
        Some("HostList"),
    ),
    r(
        "post",
        "/hosts",
        "Enrol a host (name, state root, capacity caps), or enrol it again to replace its key; returns a one-time join token",
        Operator,
        Some("EnrolHost"),
        201,
        Some("Enrolled"),
    ),
    r(
        "post",
        "/hosts/join",
        "Trade a join token (works once) for the host's own key",
        Public,
        Some("JoinHost"),
        200,
        Some("Joined"),
    ),
    r(
        "post",
        "/hosts/register",
        "The calling host's capacity (within its caps) and stream relay",
        Host,
        Some("RegisterHost"),
        201,
        Some("Host"),
    ),
    r(
        "get",
        "/hosts/{id}",
        "A host",
        Operator,
        None,
        200,
        Some("Host"),
    ),
    r(
        "post",
        "/hosts/{id}/heartbeat",
        "Heartbeat of the calling host; the reply lists the phones it must act on",
        Host,
        Some("Heartbeat"),
        200,
        Some("HeartbeatReply"),
    ),
    r(
        "put",
        "/hosts/{id}/policy",
        "Set a host's overcommit policy (vCPU and nominal-memory limits in %, memory reserve)",
        Operator,
        Some("OvercommitPolicy"),
        200,
        Some("Host"),
    ),
    r(
        "put",
        "/hosts/{id}/phones/{phone_id}/state",
        "Report a phone's new state (api_socket under the host's state root)",
        Host,
        Some("StateReport"),
        200,
        Some("Phone"),
    ),
    r(
        "get",
        "/audit",
        "Audit log, newest first; ?limit=",
        Operator,
        None,
        200,
        Some("AuditList"),
    ),
    r(
        "get",
        "/utilisation",
        "Fleet utilisation samples (hosts online, slots, phones, assigned, queued), oldest first; ?minutes= (default 60)",
        Operator,
        None,
        200,
        Some("UtilisationList"),
    ),
    r(
        "get",
        "/events",
        "The caller's notifications (lease granted/lost/expired); ?limit=",
        AnyUser,
        None,
        200,
        Some("AuditList"),
    ),
    r(
        "get",
        "/openapi.json",
        "This document",
        Public,
        None,
        200,
        None,
    ),
    r(
        "get",
        "//metrics",
        "Prometheus metrics (public only with `serve --public-metrics`)",
        Operator,
        None,
        200,
        None,
    ),
    r(
        "get",
        "//healthz",
        "Liveness and database check",
        Public,
        None,
        200,
        None,
    ),
];

fn obj(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": props})
}
fn int() -> Value {
    json!({"type": "integer", "format": "int64"})
}
fn uint(max: u64) -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": max})
}
fn s() -> Value {
    json!({"type": "string"})
}
fn refr(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}
fn list(name: &str) -> Value {
    json!({"type": "array", "items": refr(name)})
}

fn schemas() -> Value {
    let phone_states = json!({"type": "string", "enum": ["creating","booting","ready","assigned","resetting","stopping","stopped","failed","lost"]});
    let mut all = json!({
        "Error": obj(&["error","code","detail"], json!({"error": s(), "code": s(), "detail": s()})),
        "User": obj(&["id","name","role","max_phones","max_minutes_per_day","created_ms"], json!({
            "id": s(), "name": s(), "role": {"type":"string","enum":["user","operator"]},
            "max_phones": int(), "max_minutes_per_day": int(), "created_ms": int()})),
        "UserList": list("User"),
        "LoginRequest": obj(&["name","password"], json!({"name": s(), "password": s()})),
        "CreateUser": obj(&["name","role"], json!({"name": s(), "role": {"type":"string","enum":["user","operator"]},
            "password": s(), "max_phones": uint(1_000_000), "max_minutes_per_day": uint(1_000_000)})),
        "UpdateUser": obj(&[], json!({"max_phones": uint(1_000_000), "max_minutes_per_day": uint(1_000_000), "password": s(), "current_password": s()})),
        "UserWithToken": obj(&["user","token","token_id"], json!({"user": refr("User"), "token": s(), "token_id": s()})),
        "NewToken": obj(&["token","token_id"], json!({"token": s(), "token_id": s()})),
        "Profile": obj(&["id","name","width","height","dpi","vcpus","memory_mib","image","pool_size","created_ms"], json!({
            "id": s(), "name": s(), "width": int(), "height": int(), "dpi": int(), "vcpus": int(), "memory_mib": int(),
            "image": s(), "pool_size": int(), "created_ms": int()})),
        "ProfileList": list("Profile"),
        "CreateProfile": obj(&["name","width","height","dpi","vcpus","memory_mib","image"], json!({
            "name": s(), "width": uint(8192), "height": uint(8192), "dpi": uint(1000), "vcpus": uint(64),
            "memory_mib": uint(262_144), "image": s(), "pool_size": uint(10_000)})),
        "UpdateProfile": obj(&["pool_size"], json!({"pool_size": uint(10_000)})),
        "Phone": obj(&["id","profile_id","host_id","state","generation","created_ms","updated_ms"], json!({
            "id": s(), "profile_id": s(), "host_id": s(), "state": phone_states, "generation": int(),
            "reserved_for": s(), "api_socket": s(), "reason": s(), "created_ms": int(), "updated_ms": int()})),
        "PhoneList": list("Phone"),
        "Lease": obj(&["id","user_id","phone_id","profile_id","state","persistent","started_ms","expires_ms"], json!({
            "id": s(), "user_id": s(), "phone_id": s(), "profile_id": s(),
            "state": {"type":"string","enum":["active","released","expired","lost"]}, "persistent": {"type":"boolean"},
            "started_ms": int(), "expires_ms": int(), "ended_ms": int()})),
        "LeaseList": list("Lease"),
        "AcquireRequest": obj(&["profile"], json!({"profile": s(), "duration_s": uint(86_400), "persistent": {"type":"boolean"}, "wait": {"type":"boolean"}})),
        "AcquireResponse": {"oneOf": [
            obj(&["status","lease"], json!({"status": {"type":"string","enum":["granted"]}, "lease": refr("Lease")})),
            obj(&["status","queue"], json!({"status": {"type":"string","enum":["queued"]}, "queue": refr("QueueEntry")}))]},
        "RenewRequest": obj(&["duration_s"], json!({"duration_s": uint(86_400)})),
        "QueueEntry": obj(&["id","seq","user_id","profile_id","duration_s","persistent","state","created_ms"], json!({
            "id": s(), "seq": int(), "user_id": s(), "profile_id": s(), "duration_s": int(), "persistent": {"type":"boolean"},
            "state": {"type":"string","enum":["waiting","granted","cancelled"]}, "lease_id": s(), "position": int(), "eta_ms": int(), "created_ms": int()})),
        "QueueList": list("QueueEntry"),
        "Host": obj(&["id","name","state","vcpus","memory_mib","max_phones","last_heartbeat_ms","created_ms","policy","load","state_root","cap_vcpus","cap_memory_mib","cap_max_phones"], json!({
            "id": s(), "name": s(), "state": {"type":"string","enum":["online","offline"]}, "vcpus": int(), "memory_mib": int(),
            "max_phones": int(), "last_heartbeat_ms": int(), "created_ms": int(), "policy": refr("OvercommitPolicy"),
            "mem_available_mib": int(), "cpu_busy_pct": int(), "load": obj(&["phones","committed_vcpus","committed_memory_mib","used_memory_mib","counted_memory_mib"],
                json!({"phones": int(), "committed_vcpus": int(), "committed_memory_mib": int(), "used_memory_mib": int(), "counted_memory_mib": int()})),
            "state_root": s(), "cap_vcpus": int(), "cap_memory_mib": int(), "cap_max_phones": int()})),
        "OvercommitPolicy": obj(&["vcpu_pct","memory_pct","reserve_mib"], json!({"vcpu_pct": int(), "memory_pct": int(), "reserve_mib": int(), "cpu_busy_limit_pct": int()})),
        "HostList": list("Host"),
        "RegisterHost": obj(&["vcpus","memory_mib","max_phones"], json!({"vcpus": uint(4096), "memory_mib": uint(64 << 20), "max_phones": uint(10_000), "relay_url": {"type": "string", "maxLength": 512}, "relay_key": {"type": "string", "minLength": 16, "maxLength": 256}})),
        "Heartbeat": obj(&["running"], json!({"running": {"type":"array","items": s(), "maxItems": 10_000},
            "usage": obj(&["mem_available_mib","phones"], json!({"mem_available_mib": uint(64 << 20), "cpu_busy_pct": uint(100), "phones": {"type":"array","maxItems": 10_000,
                "items": obj(&["id","private_mib","pss_mib","cpu_ms"], json!({"id": s(), "private_mib": uint(64 << 20), "pss_mib": uint(64 << 20), "cpu_ms": int()}))}}))})),
        "HeartbeatReply": obj(&["host","phones","heartbeat_timeout_ms"], json!({"host": refr("Host"),
            "phones": {"type":"array","items": obj(&["phone","profile"], json!({"phone": refr("Phone"), "profile": refr("Profile")}))},
            "heartbeat_timeout_ms": int()})),
        "StateReport": obj(&["state","generation"], json!({"state": phone_states, "generation": int(), "reason": s(), "api_socket": s()})),
        "AuditEvent": obj(&["id","at_ms","actor","action","target","detail"], json!({"id": s(), "at_ms": int(), "actor": s(),
            "action": s(), "target": s(), "detail": s(), "notify_user": s()})),
        "AuditList": list("AuditEvent"),
        "UtilisationSample": obj(&["at_ms","hosts_online","capacity","phones","assigned","queued"], json!({"at_ms": int(),
            "hosts_online": int(), "capacity": int(), "phones": int(), "assigned": int(), "queued": int()})),
        "UtilisationList": list("UtilisationSample"),
    });
    // Host enrolment (kept apart: one json! of everything passes the macro recursion limit).
    let enrolment = json!({
        "EnrolHost": obj(&["name","state_root","vcpus","memory_mib","max_phones"], json!({"name": s(), "state_root": {"type": "string", "maxLength": 1024},
            "vcpus": uint(4096), "memory_mib": uint(64 << 20), "max_phones": uint(10_000)})),
        "Enrolled": obj(&["host","join_token"], json!({"host": refr("Host"), "join_token": s()})),
        "JoinHost": obj(&["join_token"], json!({"join_token": s()})),
        "Joined": obj(&["host","host_key"], json!({"host": refr("Host"), "host_key": s()})),
    });
    let adb = json!({
        "AdbKey": obj(&["id","user_id","fingerprint","key","comment","created_ms"], json!({"id": s(), "user_id": s(),
            "fingerprint": s(), "key": s(), "comment": s(), "created_ms": int()})),
        "AdbKeyList": list("AdbKey"),
        "AddKey": obj(&["key"], json!({"key": {"type": "string", "maxLength": 1024}, "comment": {"type": "string", "maxLength": 128}})),
    });
    for (k, v) in adb.as_object().expect("an object").clone() {
        all[k] = v;
    }
    for (k, v) in enrolment.as_object().expect("an object").clone() {
        all[k] = v;
    }
    all
}

fn operation(d: &RouteDoc) -> Value {
    let err =
        json!({"description": "error", "content": {"application/json": {"schema": refr("Error")}}});
    let mut responses = Map::new();
    let ok = match d.response {
        Some(name) => {
            json!({"description": "success", "content": {"application/json": {"schema": refr(name)}}})
        }
        None => json!({"description": "success"}),
    };
    responses.insert(d.status.to_string(), ok);
    if d.path == "/leases" && d.method == "post" {
        responses.insert("202".into(), json!({"description": "queued", "content": {"application/json": {"schema": refr("AcquireResponse")}}}));
    }
    responses.insert("4XX".into(), err.clone());
    responses.insert("5XX".into(), err);
    let params: Vec<Value> = d
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let mut op = json!({"summary": d.summary, "parameters": params, "responses": responses,
        "x-access": format!("{:?}", d.access).to_lowercase()});
    if d.access != Public {
        op["security"] = json!([{"bearer": []}, {"session": []}]);
    }
    if let Some(req) = d.request {
        op["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": refr(req)}}});
    }
    op
}

/// The full document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for d in ROUTES {
        let path = d
            .path
            .strip_prefix("//")
            .map_or_else(|| format!("/api/v1{}", d.path), |p| format!("/{p}"));
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[d.method] = operation(d);
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "cloudphone control API", "version": env!("CARGO_PKG_VERSION"),
            "description": "Errors are {error, code, detail}. Cookie-authenticated state-changing requests need the X-CloudPhone-CSRF header. Request bodies are limited to 64 KiB; unknown fields are rejected."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": super::auth::SESSION_COOKIE}
            }
        }
    })
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<Value> {
    Json(build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_reference_resolves() {
        let doc = build();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(schemas.contains_key(&name), "dangling $ref {name}");
        }
        assert!(doc["paths"]["/api/v1/leases"]["post"]["requestBody"].is_object());
    }
}
