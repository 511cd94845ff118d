//! HTTP API tests against a real server process, on SQLite and PostgreSQL: authorization of
//! every route, hostile input on every route, the OpenAPI document, cookie login + CSRF.

mod common;

use common::{api, lease_phone, ok, profile, raw, user, warm_pool, Kind, Server};
use serde_json::{json, Value};

/// Every documented route answers (no `no_route`/405), so the document matches the router.
async fn openapi_matches_router(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    let (code, doc) = raw(&s.url, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(code, 200);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{} paths", paths.len());
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "x")
                .replace("{key}", "x")
                .replace("{token_id}", "x")
                .replace("{phone_id}", "x");
            let body = (method != "get" && method != "delete").then(|| "{}".to_owned());
            let (code, v) = raw(
                &s.url,
                &method.to_uppercase(),
                &concrete,
                Some(&s.admin),
                body,
            )
            .await;
            assert!(
                code != 405 && v["code"] != "no_route",
                "{method} {path} not routed: {code} {v}"
            );
        }
    }
}
both!(openapi_matches_router);

/// Unauthenticated calls get 401 on every non-public route; users get 403 on operator and
/// agent routes; another user's phone, lease and queue entry are 404.
async fn authorization(kind: Kind) {
    let s = Server::start(kind, &["--heartbeat-timeout-ms", "60000"]).await;
    let (alice_id, alice) = user(&s, "alice", "user", 2).await;
    let (_, bob) = user(&s, "bob", "user", 2).await;
    let host = warm_pool(&s, "h1", 4, 2).await;
    let lease = lease_phone(&s, &alice, "pixel").await;
    let lease_id = lease["lease"]["id"].as_str().unwrap();
    let phone_id = lease["lease"]["phone_id"].as_str().unwrap();
    // alice sees her phone; bob does not, and cannot touch it.
    ok(&s, "GET", &format!("/phones/{phone_id}"), &alice, None, 200).await;
    assert_eq!(
        ok(&s, "GET", "/phones", &alice, None, 200)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for (m, p) in [
        ("GET", format!("/phones/{phone_id}")),
        ("DELETE", format!("/phones/{phone_id}")),
        ("GET", format!("/leases/{lease_id}")),
        ("DELETE", format!("/leases/{lease_id}")),
    ] {
        let (code, v) = api(&s, m, &p, &bob, None).await;
        assert_eq!(code, 404, "bob {m} {p}: {v}");
        assert_eq!(v["code"], "not_found");
    }
    let (code, _) = api(
        &s,
        "POST",
        &format!("/leases/{lease_id}/renew"),
        &bob,
        Some(json!({"duration_s": 60})),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        ok(&s, "GET", "/phones", &bob, None, 200)
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        ok(&s, "GET", "/leases", &bob, None, 200)
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // Operators see everything.
    ok(
        &s,
        "GET",
        &format!("/phones/{phone_id}"),
        &s.admin.clone(),
        None,
        200,
    )
    .await;
    assert_eq!(
        ok(&s, "GET", "/phones", &s.admin.clone(), None, 200)
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Role checks.
    for (m, p, body) in [
        ("GET", "/users".to_owned(), None),
        (
            "POST",
            "/users".to_owned(),
            Some(json!({"name": "x", "role": "operator"})),
        ),
        (
            "POST",
            "/profiles".to_owned(),
            Some(
                json!({"name": "y", "width": 100, "height": 100, "dpi": 100, "vcpus": 1, "memory_mib": 100, "image": ""}),
            ),
        ),
        (
            "PATCH",
            "/profiles/pixel".to_owned(),
            Some(json!({"pool_size": 0})),
        ),
        ("GET", "/hosts".to_owned(), None),
        (
            "POST",
            "/hosts".to_owned(),
            Some(
                json!({"name": "evil", "state_root": "/x", "vcpus": 1, "memory_mib": 100, "max_phones": 1}),
            ),
        ),
        (
            "POST",
            format!("/hosts/{}/heartbeat", host.id),
            Some(json!({"running": []})),
        ),
        ("GET", "/audit".to_owned(), None),
        (
            "PATCH",
            format!("/users/{alice_id}"),
            Some(json!({"max_phones": 100})),
        ),
    ] {
        let (code, v) = api(&s, m, &p, &bob, body).await;
        assert!(matches!(code, 401 | 403 | 404), "bob {m} {p}: {code} {v}");
    }
    // A host key is no user token: it cannot lease or list users.
    for (m, p) in [("GET", "/users"), ("POST", "/leases")] {
        let (code, _) = api(&s, m, p, &host.token, None).await;
        assert_eq!(code, 401, "host key {m} {p}");
    }
    // No credentials / bad credentials.
    for (m, p) in [
        ("GET", "/phones"),
        ("GET", "/leases"),
        ("POST", "/leases"),
        ("GET", "/queue"),
        ("GET", "/users/me"),
        ("GET", "/profiles"),
        ("GET", "/events"),
    ] {
        let (code, v) = raw(&s.url, m, &format!("/api/v1{p}"), None, None).await;
        assert_eq!(code, 401, "{m} {p}: {v}");
        let (code, _) = raw(
            &s.url,
            m,
            &format!("/api/v1{p}"),
            Some("cpt_000000000000_000000000000000000000000000000000000000000000000"),
            None,
        )
        .await;
        assert_eq!(code, 401);
    }
    // Releasing tells nobody else; alice releases her own.
    ok(
        &s,
        "DELETE",
        &format!("/leases/{lease_id}"),
        &alice,
        None,
        200,
    )
    .await;
    let (code, v) = api(&s, "DELETE", &format!("/leases/{lease_id}"), &alice, None).await;
    assert_eq!(code, 409, "double release: {v}");
    // Revoked tokens stop working at once.
    let t = ok(
        &s,
        "POST",
        &format!("/users/{alice_id}/tokens"),
        &alice,
        None,
        201,
    )
    .await;
    let tok = t["token"].as_str().unwrap();
    ok(&s, "GET", "/users/me", tok, None, 200).await;
    ok(
        &s,
        "DELETE",
        &format!(
            "/users/{alice_id}/tokens/{}",
            t["token_id"].as_str().unwrap()
        ),
        &alice,
        None,
        204,
    )
    .await;
    assert_eq!(api(&s, "GET", "/users/me", tok, None).await.0, 401);
}
both!(authorization);

/// Hostile bodies on every route with a body: 4xx with a reason, and nothing stored.
async fn bad_input(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    let admin = s.admin.clone();
    let (uid, _) = user(&s, "carol", "user", 1).await;
    profile(&s, "pixel", 0).await;
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(200_000));
    let routes: Vec<(&str, String)> = vec![
        ("POST", "/users".into()),
        ("PATCH", format!("/users/{uid}")),
        ("POST", "/profiles".into()),
        ("PATCH", "/profiles/pixel".into()),
        ("POST", "/leases".into()),
        ("POST", "/hosts".into()),
        ("POST", "/auth/login".into()),
    ];
    let bodies: Vec<String> = vec![
        "{".into(),
        "[]".into(),
        "null".into(),
        "\"x\"".into(),
        r#"{"name": 5, "role": [], "width": "wide", "profile": {}, "pool_size": "1"}"#.into(),
        r#"{"name": "x'; DROP TABLE users; --", "role": "user", "width": 720, "height": 1280, "dpi": 320, "vcpus": 1, "memory_mib": 256, "image": "", "profile": "' OR 1=1 --", "vcpus_x": 1, "max_phones": 1, "memory_mib_": 1, "password": "x"}"#.into(),
        r#"{"name": "ok", "role": "user", "width": -1, "height": 1280, "dpi": 320, "vcpus": 1, "memory_mib": 256, "image": "", "pool_size": -5, "max_phones": -1, "duration_s": -10, "profile": "pixel"}"#.into(),
        r#"{"name": "ok2", "role": "user", "width": 99999999999999999999, "height": 1280, "dpi": 320, "vcpus": 1, "memory_mib": 256, "image": "", "pool_size": 4294967296, "max_phones": 18446744073709551616, "duration_s": 1e30, "profile": "pixel"}"#.into(),
        r#"{"name": "ok3", "role": "superuser", "width": 720, "height": 1280, "dpi": 320, "vcpus": 1, "memory_mib": 256, "image": "", "unknown_field": true, "profile": "pixel", "extra": 1}"#.into(),
        huge.clone(),
    ];
    for (m, p) in &routes {
        for b in &bodies {
            let (code, v) = raw(
                &s.url,
                m,
                &format!("/api/v1{p}"),
                Some(&admin),
                Some(b.clone()),
            )
            .await;
            assert!(
                (400..500).contains(&code),
                "{m} {p} body {:.80}: {code} {v}",
                b
            );
            assert!(
                v["error"].is_string() && v["code"].is_string() && v["detail"].is_string(),
                "{m} {p}: no reason: {v}"
            );
        }
        let (code, v) = raw(
            &s.url,
            m,
            &format!("/api/v1{p}"),
            Some(&admin),
            Some(huge.clone()),
        )
        .await;
        assert_eq!(code, 413, "{m} {p}: huge body: {v}");
    }
    // Valid shapes with out-of-range values are 400 with the field named.
    let (code, v) = api(&s, "POST", "/profiles", &admin, Some(json!({"name": "p2", "width": 0, "height": 1280, "dpi": 320, "vcpus": 1, "memory_mib": 256, "image": ""}))).await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("width"), "{v}");
    let (code, _) = api(
        &s,
        "POST",
        "/leases",
        &admin,
        Some(json!({"profile": "pixel", "duration_s": 0})),
    )
    .await;
    assert_eq!(code, 400);
    let (code, _) = api(
        &s,
        "POST",
        "/leases",
        &admin,
        Some(json!({"profile": "nope"})),
    )
    .await;
    assert_eq!(code, 404);
    // Bad ids and query strings.
    for p in [
        "/phones/ph_'%20OR%201=1",
        "/leases/..%2F..%2Fetc",
        "/queue/q_zz",
        "/profiles/%27%3B",
    ] {
        let (code, v) = api(&s, "GET", p, &admin, None).await;
        assert_eq!(code, 404, "{p}: {v}");
    }
    let (code, v) = api(&s, "GET", "/phones?state=exploded", &admin, None).await;
    assert_eq!(code, 400, "{v}");
    let (code, _) = api(&s, "GET", "/audit?limit=-1", &admin, None).await;
    assert_eq!(code, 400);
    // Nothing was stored: still exactly the users/profiles we made.
    let users = ok(&s, "GET", "/users", &admin, None, 200).await;
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "carol"]);
    assert_eq!(
        ok(&s, "GET", "/profiles", &admin, None, 200)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        ok(&s, "GET", "/hosts", &admin, None, 200)
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        ok(&s, "GET", "/leases?all=true", &admin, None, 200)
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        ok(&s, "GET", "/profiles/pixel", &admin, None, 200).await["pool_size"],
        0
    );
}
both!(bad_input);

/// Web login: cookie flags, CSRF header required for state changes, logout.
async fn cookie_login(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    let admin = s.admin.clone();
    ok(
        &s,
        "POST",
        "/users",
        &admin,
        Some(json!({"name": "dave", "role": "user", "password": "hunter2hunter2"})),
        201,
    )
    .await;
    let c = reqwest::Client::new();
    let bad = c
        .post(format!("{}/api/v1/auth/login", s.url))
        .json(&json!({"name": "dave", "password": "wrong-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let res = c
        .post(format!("{}/api/v1/auth/login", s.url))
        .json(&json!({"name": "dave", "password": "hunter2hunter2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let me: Value = c
        .get(format!("{}/api/v1/users/me", s.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "dave");
    // A state-changing request with only the cookie (what a cross-site form sends) is refused.
    let r = c
        .post(format!("{}/api/v1/leases", s.url))
        .header("cookie", &cookie)
        .json(&json!({"profile": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(format!("{}/api/v1/leases", s.url))
        .header("cookie", &cookie)
        .header("x-cloudphone-csrf", "1")
        .json(&json!({"profile": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "with the header it reaches the handler (profile x does not exist)"
    );
    let r = c
        .post(format!("{}/api/v1/auth/logout", s.url))
        .header("cookie", &cookie)
        .header("x-cloudphone-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .get(format!("{}/api/v1/users/me", s.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
both!(cookie_login);

/// Metrics (operators only unless `--public-metrics`) and health.
async fn metrics_and_health(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    assert_eq!(raw(&s.url, "GET", "/healthz", None, None).await.0, 200);
    ok(&s, "GET", "/profiles", &s.admin.clone(), None, 200).await;
    assert_eq!(raw(&s.url, "GET", "/metrics", None, None).await.0, 401);
    let (_, user_token) = user(&s, "metrics-reader", "user", 1).await;
    let (code, _) = raw(&s.url, "GET", "/metrics", Some(&user_token), None).await;
    assert_eq!(code, 403, "plain users do not see fleet metrics");
    let public = Server::start(kind, &["--public-metrics"]).await;
    assert_eq!(raw(&public.url, "GET", "/metrics", None, None).await.0, 200);
    let (code, body) = raw(&s.url, "GET", "/metrics", Some(&s.admin), None).await;
    assert_eq!(code, 200);
    let text = body.as_str().unwrap();
    for needle in ["cloudphone_phones{state=\"ready\"} 0", "cloudphone_leases_active 0", "cloudphone_queue_length 0", "cloudphone_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/profiles\",status=\"200\""] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
both!(metrics_and_health);

/// The scheduler samples the fleet; operators read the history, users may not, bad windows
/// are refused.
async fn utilisation_history(kind: Kind) {
    let s = Server::start(kind, &["--utilisation-sample-ms", "200"]).await;
    let admin = s.admin.clone();
    let (_, alice) = user(&s, "alice", "user", 2).await;
    warm_pool(&s, "h1", 4, 2).await;
    lease_phone(&s, &alice, "pixel").await;

    let mut latest = Value::Null;
    for _ in 0..50 {
        let samples = ok(&s, "GET", "/utilisation?minutes=5", &admin, None, 200).await;
        latest = samples
            .as_array()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or(Value::Null);
        if latest["assigned"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(latest["hosts_online"], 1, "{latest}");
    assert_eq!(latest["capacity"], 4, "{latest}");
    assert_eq!(latest["assigned"], 1, "{latest}");
    assert!(latest["phones"].as_i64().unwrap() >= 2, "{latest}");
    assert_eq!(latest["queued"], 0, "{latest}");
    let samples = ok(&s, "GET", "/utilisation", &admin, None, 200).await;
    let times: Vec<i64> = samples
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["at_ms"].as_i64().unwrap())
        .collect();
    assert!(
        times.len() >= 2 && times.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {times:?}"
    );

    assert_eq!(api(&s, "GET", "/utilisation", &alice, None).await.0, 403);
    for bad in ["minutes=0", "minutes=10081", "minutes=abc", "hours=1"] {
        let (code, body) = api(&s, "GET", &format!("/utilisation?{bad}"), &admin, None).await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
}
both!(utilisation_history);
