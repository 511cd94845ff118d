//! Lease reliability against real server processes on SQLite and PostgreSQL: concurrency,
//! FIFO hand-over, crash (kill -9) recovery, host loss, expiry, persistence and quotas.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{api, lease_phone, ok, profile, user, warm_pool, FakeHost, Kind, Server};
use serde_json::{json, Value};

const LONG_HEARTBEAT: &[&str] = &["--heartbeat-timeout-ms", "600000", "--tick-ms", "100"];

async fn users(s: &Server, n: usize, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let futs = chunk.iter().map(|i| {
            let (url, admin, name) = (s.url.clone(), s.admin.clone(), format!("{prefix}{i}"));
            async move {
                let body = json!({"name": name, "role": "user", "max_phones": 1}).to_string();
                let (code, v) =
                    common::raw(&url, "POST", "/api/v1/users", Some(&admin), Some(body)).await;
                assert_eq!(code, 201, "{v}");
                v["token"].as_str().unwrap().to_owned()
            }
        });
        out.extend(futures_join(futs).await);
    }
    out
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Active leases: no phone appears twice.
async fn assert_no_double_assignment(s: &Server) -> Vec<Value> {
    let leases = ok(s, "GET", "/leases", &s.admin.clone(), None, 200)
        .await
        .as_array()
        .unwrap()
        .clone();
    let phones: HashSet<&str> = leases
        .iter()
        .map(|l| l["phone_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        phones.len(),
        leases.len(),
        "a phone is in two active leases: {leases:?}"
    );
    leases
}

/// Waiting entries in queue order with positions 1..n.
async fn queue(s: &Server) -> Vec<Value> {
    let q = ok(s, "GET", "/queue", &s.admin.clone(), None, 200)
        .await
        .as_array()
        .unwrap()
        .clone();
    for (i, e) in q.iter().enumerate() {
        assert_eq!(e["position"], json!(i + 1), "queue positions: {q:?}");
        if i > 0 {
            assert!(
                e["seq"].as_i64() > q[i - 1]["seq"].as_i64(),
                "queue out of order"
            );
        }
    }
    q
}

/// Releases every active lease (by its owner), lets the host reset the phones, and checks
/// the phones went to the queue's head entries in order.
async fn release_round(s: &Server, host: &FakeHost, tokens_by_user: &BTreeMap<String, String>) {
    let before = queue(s).await;
    let active = assert_no_double_assignment(s).await;
    for l in &active {
        let t = &tokens_by_user[l["user_id"].as_str().unwrap()];
        ok(
            s,
            "DELETE",
            &format!("/leases/{}", l["id"].as_str().unwrap()),
            t,
            None,
            200,
        )
        .await;
    }
    host.converge(s).await;
    let served = active.len().min(before.len());
    for e in &before[..served] {
        let t = &tokens_by_user[e["user_id"].as_str().unwrap()];
        let now = ok(
            s,
            "GET",
            &format!("/queue/{}", e["id"].as_str().unwrap()),
            t,
            None,
            200,
        )
        .await;
        assert_eq!(
            now["state"], "granted",
            "head entry {} not served: {now}",
            e["seq"]
        );
        assert!(now["lease_id"].is_string());
    }
    let after = queue(s).await;
    assert_eq!(after.len(), before.len() - served);
    if let Some(first) = after.first() {
        assert_eq!(
            first["id"], before[served]["id"],
            "the rest keep their order"
        );
    }
    assert_no_double_assignment(s).await;
}

async fn user_ids(s: &Server, tokens: &[String]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for t in tokens {
        let me = ok(s, "GET", "/users/me", t, None, 200).await;
        m.insert(me["id"].as_str().unwrap().to_owned(), t.clone());
    }
    m
}

/// 200 concurrent requests for 10 phones: exactly 10 granted, 190 queued in order, no phone
/// assigned twice; releases hand phones to the queue head in order until the queue drains.
async fn two_hundred_for_ten(kind: Kind) {
    let s = Server::start(kind, LONG_HEARTBEAT).await;
    let host = warm_pool(&s, "h1", 10, 10).await;
    let tokens = users(&s, 200, "u").await;
    let url = s.url.clone();
    let results = futures_join(tokens.iter().cloned().map(move |t| {
        let url = url.clone();
        async move {
            common::raw(
                &url,
                "POST",
                "/api/v1/leases",
                Some(&t),
                Some(json!({"profile": "pixel", "duration_s": 3600}).to_string()),
            )
            .await
        }
    }))
    .await;
    let granted: Vec<&Value> = results
        .iter()
        .filter(|(c, _)| *c == 201)
        .map(|(_, v)| v)
        .collect();
    let queued: Vec<&Value> = results
        .iter()
        .filter(|(c, _)| *c == 202)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        granted.len(),
        10,
        "{:?}",
        results
            .iter()
            .filter(|(c, _)| *c != 202)
            .collect::<Vec<_>>()
    );
    assert_eq!(queued.len(), 190);
    let phones: HashSet<&str> = granted
        .iter()
        .map(|v| v["lease"]["phone_id"].as_str().unwrap())
        .collect();
    assert_eq!(phones.len(), 10, "double assignment");
    let mut positions: Vec<i64> = queued
        .iter()
        .map(|v| v["queue"]["position"].as_i64().unwrap())
        .collect();
    positions.sort_unstable();
    assert_eq!(
        positions,
        (1..=190).collect::<Vec<_>>(),
        "each waiter got a distinct place"
    );
    let etas: Vec<i64> = queued
        .iter()
        .map(|v| v["queue"]["eta_ms"].as_i64().unwrap())
        .collect();
    assert!(etas.iter().all(|e| *e > 0), "ETAs come from lease expiries");
    assert_eq!(queue(&s).await.len(), 190);
    let by_user = user_ids(&s, &tokens).await;
    for _ in 0..19 {
        release_round(&s, &host, &by_user).await;
    }
    assert!(queue(&s).await.is_empty());
    assert_eq!(assert_no_double_assignment(&s).await.len(), 10);
}
both!(two_hundred_for_ten);

/// kill -9 of the server in the middle of lease traffic, then restart: every answered
/// request is still there, nothing is duplicated, the queue keeps its order.
async fn crash_during_traffic(kind: Kind) {
    let mut s = Server::start(kind, LONG_HEARTBEAT).await;
    let host = warm_pool(&s, "h1", 5, 5).await;
    let tokens = users(&s, 60, "k").await;
    let by_user = user_ids(&s, &tokens).await;
    let url = s.url.clone();
    let toks = tokens.clone();
    let traffic = tokio::spawn(futures_join(toks.into_iter().enumerate().map(
        move |(i, t)| {
            let url = url.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(i as u64 * 5)).await;
                let c = reqwest::Client::new();
                let r = c
                    .post(format!("{url}/api/v1/leases"))
                    .bearer_auth(&t)
                    .json(&json!({"profile": "pixel"}))
                    .send()
                    .await;
                match r {
                    Ok(r) => Some((r.status().as_u16(), r.json::<Value>().await.ok()?)),
                    Err(_) => None,
                }
            }
        },
    )));
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.kill9();
    let answered: Vec<(u16, Value)> = traffic.await.unwrap().into_iter().flatten().collect();
    s.restart();
    let leases = assert_no_double_assignment(&s).await;
    let q = queue(&s).await;
    let lease_ids: HashSet<&str> = leases.iter().map(|l| l["id"].as_str().unwrap()).collect();
    let queue_ids: HashSet<&str> = q.iter().map(|e| e["id"].as_str().unwrap()).collect();
    for (code, v) in &answered {
        match code {
            201 => assert!(
                lease_ids.contains(v["lease"]["id"].as_str().unwrap()),
                "granted lease lost: {v}"
            ),
            202 => assert!(
                queue_ids.contains(v["queue"]["id"].as_str().unwrap()),
                "queue entry lost: {v}"
            ),
            other => panic!("unexpected answer {other}: {v}"),
        }
    }
    // Each user asked once (quota 1): nobody holds two things.
    let mut owners: Vec<&str> = leases
        .iter()
        .chain(q.iter())
        .map(|x| x["user_id"].as_str().unwrap())
        .collect();
    let n = owners.len();
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners.len(), n, "a request was duplicated");
    assert!(leases.len() <= 5);
    eprintln!(
        "crash test: {} answered before kill, {} leases, {} queued after restart",
        answered.len(),
        leases.len(),
        q.len()
    );
    // Still serving in order after the restart.
    release_round(&s, &host, &by_user).await;
}
both!(crash_during_traffic);

/// A host that stops heartbeating: its phones go lost, leases end, users are told; when it
/// comes back, a surviving VMM is reset and a gone one stopped; the pool is refilled.
async fn host_lost_and_back(kind: Kind) {
    let s = Server::start(
        kind,
        &[
            "--heartbeat-timeout-ms",
            "1500",
            "--lost-after-ms",
            "1500",
            "--tick-ms",
            "100",
        ],
    )
    .await;
    let (_, alice) = user(&s, "alice", "user", 1).await;
    let host = warm_pool(&s, "h1", 4, 2).await;
    let lease = lease_phone(&s, &alice, "pixel").await;
    let lease_id = lease["lease"]["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let l = ok(&s, "GET", &format!("/leases/{lease_id}"), &alice, None, 200).await;
    assert_eq!(l["state"], "lost", "{l}");
    let phones = ok(&s, "GET", "/phones", &s.admin.clone(), None, 200).await;
    assert!(
        phones
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "lost"),
        "{phones}"
    );
    let hosts = ok(&s, "GET", "/hosts", &s.admin.clone(), None, 200).await;
    assert_eq!(hosts[0]["state"], "offline");
    let events = ok(&s, "GET", "/events", &alice, None, 200).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "lease.lost" && e["target"] == lease_id),
        "{events}"
    );
    // Back, claiming only the leased phone's VMM survived.
    let survivor = l["phone_id"].as_str().unwrap().to_owned();
    let desired = host.heartbeat(&s, std::slice::from_ref(&survivor)).await;
    let state_of = |id: &str| {
        desired
            .iter()
            .find(|p| p["phone"]["id"] == id)
            .map(|p| p["phone"]["state"].clone())
    };
    assert_eq!(state_of(&survivor), Some(json!("resetting")));
    let all = ok(&s, "GET", "/phones", &s.admin.clone(), None, 200).await;
    let other = all
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] != survivor.as_str())
        .unwrap();
    assert_eq!(other["state"], "stopped");
    // The pool is refilled and the survivor comes back clean.
    host.bring_up(&s, 2).await;
}
both!(host_lost_and_back);

/// Expiry resets the phone (new generation) and tells the user; persistent phones are
/// parked for their owner; quotas refuse with 429; renew extends.
async fn expiry_persistence_quota(kind: Kind) {
    let s = Server::start(kind, LONG_HEARTBEAT).await;
    let (_, alice) = user(&s, "alice", "user", 1).await;
    let (_, bob) = user(&s, "bob", "user", 1).await;
    let host = warm_pool(&s, "h1", 2, 1).await;
    // Expiry.
    let l = ok(
        &s,
        "POST",
        "/leases",
        &alice,
        Some(json!({"profile": "pixel", "duration_s": 1})),
        201,
    )
    .await;
    let phone = l["lease"]["phone_id"].as_str().unwrap().to_owned();
    let (code, v) = api(
        &s,
        "POST",
        "/leases",
        &alice,
        Some(json!({"profile": "pixel"})),
    )
    .await;
    assert_eq!(code, 429, "quota: {v}");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let l = ok(
        &s,
        "GET",
        &format!("/leases/{}", l["lease"]["id"].as_str().unwrap()),
        &alice,
        None,
        200,
    )
    .await;
    assert_eq!(l["state"], "expired");
    let p = ok(
        &s,
        "GET",
        &format!("/phones/{phone}"),
        &s.admin.clone(),
        None,
        200,
    )
    .await;
    assert_eq!(p["state"], "resetting");
    assert_eq!(p["generation"], 1, "a reset is a new generation");
    let events = ok(&s, "GET", "/events", &alice, None, 200).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "lease.expired"),
        "{events}"
    );
    host.converge(&s).await;
    // Persistent: parked for alice, invisible to bob's request.
    let l = ok(
        &s,
        "POST",
        "/leases",
        &alice,
        Some(json!({"profile": "pixel", "persistent": true})),
        201,
    )
    .await;
    let lid = l["lease"]["id"].as_str().unwrap();
    let renewed = ok(
        &s,
        "POST",
        &format!("/leases/{lid}/renew"),
        &alice,
        Some(json!({"duration_s": 7200})),
        200,
    )
    .await;
    assert!(renewed["expires_ms"].as_i64() > l["lease"]["expires_ms"].as_i64());
    ok(&s, "DELETE", &format!("/leases/{lid}"), &alice, None, 200).await;
    let p = ok(&s, "GET", &format!("/phones/{phone}"), &alice, None, 200).await;
    assert_eq!(p["state"], "ready");
    assert_eq!(p["generation"], 1, "persistent phones are not reset");
    let (code, _) = api(
        &s,
        "POST",
        "/leases",
        &bob,
        Some(json!({"profile": "pixel", "wait": false})),
    )
    .await;
    assert_eq!(code, 409, "bob cannot take alice's parked phone");
    let again = lease_phone(&s, &alice, "pixel").await;
    assert_eq!(again["lease"]["phone_id"], json!(phone));
    // Illegal agent reports are refused.
    let desired = host.heartbeat(&s, &[]).await;
    let (code, v) = host.report(&s, &desired[0], "booting").await;
    assert_eq!(code, 409, "assigned -> booting must be refused: {v}");
    let audit = ok(&s, "GET", "/audit?limit=1000", &s.admin.clone(), None, 200).await;
    for action in [
        "lease.grant",
        "lease.expired",
        "lease.released",
        "lease.renew",
        "phone.resetting",
        "user.create",
        "profile.create",
    ] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action),
            "audit lacks {action}"
        );
    }
}
both!(expiry_persistence_quota);

/// Owners re-leasing their parked persistent phones (a path that skips the profile lock)
/// while other users compete for the free phones: every owner always gets back their own
/// phone, no phone is ever in two active leases, parked phones are never handed to the
/// queue, and the others get exactly the free phones and queue in order for the rest.
async fn parked_phones_under_churn(kind: Kind) {
    const OWNERS: usize = 6;
    const POOL: u32 = 8;
    let s = Server::start(kind, LONG_HEARTBEAT).await;
    profile(&s, "pixel", POOL).await;
    let host = FakeHost::register(&s, "h1", POOL).await;
    host.bring_up(&s, POOL as usize).await;
    let owners = users(&s, OWNERS, "owner").await;
    let others = users(&s, OWNERS, "other").await;
    let persistent = json!({"profile": "pixel", "persistent": true, "wait": false});
    let mut parked = Vec::new();
    for t in &owners {
        let l = ok(&s, "POST", "/leases", t, Some(persistent.clone()), 201).await;
        let id = l["lease"]["id"].as_str().unwrap();
        ok(&s, "DELETE", &format!("/leases/{id}"), t, None, 200).await;
        parked.push(l["lease"]["phone_id"].as_str().unwrap().to_owned());
    }
    let churn = owners.iter().zip(parked.clone()).map(|(t, phone)| {
        let (url, t, body) = (s.url.clone(), t.clone(), persistent.to_string());
        async move {
            for _ in 0..15 {
                let (code, l) =
                    common::raw(&url, "POST", "/api/v1/leases", Some(&t), Some(body.clone())).await;
                assert_eq!(code, 201, "an owner's parked phone is always theirs: {l}");
                assert_eq!(
                    l["lease"]["phone_id"],
                    json!(phone),
                    "the owner's own phone"
                );
                let path = format!("/api/v1/leases/{}", l["lease"]["id"].as_str().unwrap());
                let (code, v) = common::raw(&url, "DELETE", &path, Some(&t), None).await;
                assert_eq!(code, 200, "{v}");
            }
        }
    });
    let competing = others.iter().map(|t| {
        let (url, t) = (s.url.clone(), t.clone());
        async move {
            let body = json!({"profile": "pixel"}).to_string();
            let (code, v) = common::raw(&url, "POST", "/api/v1/leases", Some(&t), Some(body)).await;
            assert!(matches!(code, 201 | 202), "{code} {v}");
            v
        }
    });
    let churn: Vec<_> = churn.map(tokio::spawn).collect();
    let answers = futures_join(competing).await;
    for _ in 0..5 {
        assert_no_double_assignment(&s).await;
    }
    for h in churn {
        h.await.unwrap();
    }
    let granted: Vec<&Value> = answers
        .iter()
        .filter(|v| v["status"] == "granted")
        .collect();
    assert_eq!(
        granted.len(),
        POOL as usize - OWNERS,
        "only the unparked phones are free: {answers:?}"
    );
    for g in &granted {
        let phone = g["lease"]["phone_id"].as_str().unwrap();
        assert!(
            !parked.iter().any(|p| p == phone),
            "a parked phone went to someone else"
        );
    }
    assert_eq!(queue(&s).await.len(), OWNERS - granted.len());
    assert_eq!(assert_no_double_assignment(&s).await.len(), granted.len());
}
both!(parked_phones_under_churn);
