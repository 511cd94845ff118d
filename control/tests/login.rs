//! Login and session tests against real `serve` processes, on SQLite and PostgreSQL: login
//! throttling under a burst (status codes and the server's memory), equal work for unknown
//! users, password change, token expiry, and two replicas on one PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::{api, ok, raw, user, warm_pool, Kind, Server};
use serde_json::json;

/// One login; returns the status, the Retry-After header and the session cookie.
async fn login(s: &Server, name: &str, password: &str) -> (u16, Option<u64>, Option<String>) {
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/login", s.url))
        .json(&json!({"name": name, "password": password}))
        .send()
        .await
        .expect("login request sent");
    let header = |h: reqwest::header::HeaderName| {
        res.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry = header(reqwest::header::RETRY_AFTER).and_then(|v| v.parse().ok());
    let cookie =
        header(reqwest::header::SET_COOKIE).and_then(|c| c.split(';').next().map(str::to_owned));
    (res.status().as_u16(), retry, cookie)
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A user with a password; returns (id, token).
async fn user_with_password(s: &Server, name: &str, password: &str) -> (String, String) {
    let body = json!({"name": name, "role": "user", "password": password});
    let v = ok(s, "POST", "/users", &s.admin.clone(), Some(body), 201).await;
    (
        v["user"]["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

/// 1000 wrong passwords in a burst: at most 5 are checked (401) before the user is locked,
/// the rest get 429 with Retry-After without hashing, memory stays bounded, and the right
/// password works once the backoff has passed.
async fn wrong_password_burst(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    user_with_password(&s, "victim", "right password 1").await;
    let rss_before = rss_kib(s.pid());
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..50 {
        let url = s.url.clone();
        workers.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut seen = Vec::new();
            for i in 0..20 {
                let res = c
                    .post(format!("{url}/api/v1/auth/login"))
                    .json(&json!({"name": "victim", "password": format!("guess {w} {i}")}))
                    .send()
                    .await
                    .unwrap();
                let retry = res.headers().get("retry-after").is_some();
                seen.push((res.status().as_u16(), retry));
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for w in workers {
        seen.extend(w.await.unwrap());
    }
    let elapsed = start.elapsed();
    let rss_after = rss_kib(s.pid());
    let unauthorized = seen.iter().filter(|(c, _)| *c == 401).count();
    let throttled = seen.iter().filter(|(c, r)| *c == 429 && *r).count();
    println!(
        "1000 wrong logins in {elapsed:?}: {unauthorized} x 401, {throttled} x 429; server RSS {} -> {} KiB (+{} KiB)",
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before)
    );
    assert_eq!(
        unauthorized + throttled,
        1000,
        "only 401 and 429 with Retry-After"
    );
    // 5 checks, then one more per elapsed backoff window (1 s, 2 s, 4 s, ...).
    let windows = (elapsed.as_secs_f64() + 1.0).log2().floor() as usize;
    assert!(
        (1..=5 + windows).contains(&unauthorized),
        "{unauthorized} passwords checked in {elapsed:?}"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 160 * 1024,
        "a burst of logins must not grow memory by more than a few argon2 hashes"
    );
    let (code, retry, _) = login(&s, "victim", "right password 1").await;
    assert_eq!(code, 429, "still locked right after the burst");
    tokio::time::sleep(
        Duration::from_secs(retry.expect("Retry-After")) + Duration::from_millis(100),
    )
    .await;
    let (code, _, cookie) = login(&s, "victim", "right password 1").await;
    assert_eq!(code, 200, "the right password works after the backoff");
    assert!(cookie.is_some_and(|c| c.starts_with("cloudphone_session=")));
}
both!(wrong_password_burst);

/// 20 failures from one address lock it for every user name, even names never tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limit_spans_user_names() {
    let s = Server::start(Kind::Sqlite, &[]).await;
    user_with_password(&s, "frank", "right password 4").await;
    for n in 0..20 {
        assert_eq!(
            login(&s, &format!("guess{n}"), "wrong").await.0,
            401,
            "failure {n}"
        );
    }
    let (code, retry, _) = login(&s, "frank", "right password 4").await;
    assert_eq!(code, 429, "the address is locked, whatever the name");
    assert!(retry.is_some_and(|r| r >= 1));
}

/// An unknown user name costs an argon2 hash like a known one (no name enumeration by
/// timing). The times are a sanity bound, not a speed claim: a rejection before hashing
/// takes milliseconds, a hash takes far longer.
async fn unknown_user_costs_a_hash(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    user_with_password(&s, "known", "right password 2").await;
    let time = |name: &'static str| {
        let s = &s;
        async move {
            let mut total = Duration::ZERO;
            for i in 0..3 {
                let t = Instant::now();
                let (code, _, _) = login(s, name, &format!("wrong {i}")).await;
                total += t.elapsed();
                assert_eq!(code, 401, "{name}");
            }
            total / 3
        }
    };
    let known = time("known").await;
    let unknown = time("nobody-by-this-name").await;
    let t = Instant::now();
    let (code, _, _) = login(&s, &"x".repeat(65), "too long a name").await;
    let rejected_early = t.elapsed();
    assert_eq!(code, 401);
    println!("wrong password: known user {known:?}, unknown user {unknown:?}, rejected before hashing {rejected_early:?}");
    assert!(
        unknown * 4 > known && unknown > rejected_early * 5,
        "an unknown user must cost a hash too: {unknown:?} vs {known:?} (no hash: {rejected_early:?})"
    );
}
both!(unknown_user_costs_a_hash);

/// Changing your own password needs the current one; a change ends every other token and
/// web session of the user, and keeps the one it was made with.
async fn password_change_ends_other_sessions(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    let (id, token_a) = user_with_password(&s, "carol", "old password 3").await;
    let token_b = ok(
        &s,
        "POST",
        &format!("/users/{id}/tokens"),
        &token_a,
        None,
        201,
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, _, cookie) = login(&s, "carol", "old password 3").await;
    assert_eq!(code, 200);
    let cookie = cookie.unwrap();
    let with_cookie = || async {
        reqwest::Client::new()
            .get(format!("{}/api/v1/auth/whoami", s.url))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(with_cookie().await, 200);
    let path = format!("/users/{id}");
    let (code, v) = api(
        &s,
        "PATCH",
        &path,
        &token_a,
        Some(json!({"password": "new password 3"})),
    )
    .await;
    assert_eq!(code, 400, "no current password: {v}");
    assert!(
        v["error"].as_str().unwrap().contains("current_password"),
        "{v}"
    );
    let wrong = json!({"password": "new password 3", "current_password": "not it"});
    assert_eq!(api(&s, "PATCH", &path, &token_a, Some(wrong)).await.0, 403);
    assert_eq!(
        login(&s, "carol", "new password 3").await.0,
        401,
        "unchanged so far"
    );
    let right = json!({"password": "new password 3", "current_password": "old password 3"});
    ok(&s, "PATCH", &path, &token_a, Some(right), 200).await;
    assert_eq!(api(&s, "GET", "/auth/whoami", &token_b, None).await.0, 401);
    assert_eq!(with_cookie().await, 401, "the web session ended");
    ok(&s, "GET", "/auth/whoami", &token_a, None, 200).await;
    assert_eq!(login(&s, "carol", "new password 3").await.0, 200);
    // An operator resets someone else's password without knowing it; all their sessions end.
    let reset = json!({"password": "reset password 3"});
    ok(&s, "PATCH", &path, &s.admin.clone(), Some(reset), 200).await;
    assert_eq!(api(&s, "GET", "/auth/whoami", &token_a, None).await.0, 401);
    assert_eq!(login(&s, "carol", "reset password 3").await.0, 200);
    // The CLI: `users password` needs --current for yourself.
    let token_c = ok(
        &s,
        "POST",
        &format!("/users/{id}/tokens"),
        &s.admin.clone(),
        None,
        201,
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cli = |current: Option<&str>| {
        let mut c = std::process::Command::new(common::bin());
        c.args([
            "--url", &s.url, "--token", &token_c, "users", "password", "me",
        ])
        .args(["--new", "cli password 3"])
        .env_remove("CLOUDPHONE_CURRENT_PASSWORD")
        .env_remove("CLOUDPHONE_NEW_PASSWORD");
        if let Some(p) = current {
            c.args(["--current", p]);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (changed, err) = cli(None);
    assert!(!changed && err.contains("current_password"), "{err}");
    let (changed, err) = cli(Some("reset password 3"));
    assert!(changed, "{err}");
    assert_eq!(login(&s, "carol", "cli password 3").await.0, 200);
}
both!(password_change_ends_other_sessions);

/// Tokens expire `--token-ttl-s` after minting.
async fn tokens_expire(kind: Kind) {
    let s = Server::start(kind, &["--token-ttl-s", "3"]).await;
    let (_, token) = user(&s, "dave", "user", 1).await;
    ok(&s, "GET", "/auth/whoami", &token, None, 200).await;
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let (code, v) = api(&s, "GET", "/auth/whoami", &token, None).await;
    assert_eq!(code, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
}
both!(tokens_expire);

/// Two replicas on one PostgreSQL: a token revoked through one is refused by the other
/// within a second, and leases granted through both never share a phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres() {
    let a = Server::start(Kind::Postgres, &["--heartbeat-timeout-ms", "60000"]).await;
    let b = a.replica();
    let (id, token) = user(&a, "erin", "user", 1).await;
    ok(&b, "GET", "/auth/whoami", &token, None, 200).await;
    let token_id = cloudphone::auth::token_id(&token).unwrap().to_owned();
    ok(
        &a,
        "DELETE",
        &format!("/users/{id}/tokens/{token_id}"),
        &token,
        None,
        204,
    )
    .await;
    let revoked = Instant::now();
    while api(&b, "GET", "/auth/whoami", &token, None).await.0 != 401 {
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "replica b still honours the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "replica b refused the revoked token after {:?}",
        revoked.elapsed()
    );

    const PHONES: usize = 8;
    let _host = warm_pool(&a, "h1", PHONES as u32, PHONES as u32).await;
    let mut tokens = Vec::new();
    for n in 0..PHONES {
        tokens.push(user(&a, &format!("lessee{n}"), "user", 2).await.1);
    }
    let mut asks = Vec::new();
    for t in &tokens {
        for url in [&a.url, &b.url] {
            let (url, t) = (url.clone(), t.clone());
            asks.push(tokio::spawn(async move {
                let body = json!({"profile": "pixel", "wait": false}).to_string();
                raw(&url, "POST", "/api/v1/leases", Some(&t), Some(body)).await
            }));
        }
    }
    let mut phones = Vec::new();
    for ask in asks {
        let (code, v) = ask.await.unwrap();
        match code {
            201 => phones.push(v["lease"]["phone_id"].as_str().unwrap().to_owned()),
            409 => {}
            other => panic!("lease through a replica: {other} {v}"),
        }
    }
    let granted = phones.len();
    phones.sort();
    phones.dedup();
    assert_eq!(phones.len(), granted, "a phone was leased twice");
    assert_eq!(granted, PHONES, "every free phone was granted once");
}
