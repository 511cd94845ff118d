//! Host identity (issue 15): each host agent holds its own key, obtained once with the join
//! token an operator got at enrolment, and can act only as that host: never register,
//! heartbeat or report for another, never point a phone's VMM socket outside its state root
//! and never claim more capacity than it was enrolled with. Both databases.

mod common;

use common::{api, enrol, join, ok, user, warm_pool, FakeHost, Kind, Server};
use serde_json::json;

async fn hosts_act_only_as_themselves(kind: Kind) {
    let s = Server::start(kind, &["--tick-ms", "50"]).await;
    let a = warm_pool(&s, "pixel", 2, 1).await;
    let phones = a.heartbeat(&s, &[]).await;
    let phone = &phones[0];
    let phone_id = phone["phone"]["id"].as_str().unwrap();
    // Host B: enrolled and joined, with its own key.
    let (b_id, b_key) = join(&s, &enrol(&s, "b", "/var/lib/b", 2).await).await;
    assert_ne!(b_id, a.id);

    let hb = json!({"running": []});
    let (code, v) = api(
        &s,
        "POST",
        &format!("/hosts/{}/heartbeat", a.id),
        &b_key,
        Some(hb.clone()),
    )
    .await;
    assert_eq!(code, 403, "B heartbeats as A: {v}");
    assert!(v.to_string().contains("not "), "{v}");
    let report = json!({"state": "ready", "generation": phone["phone"]["generation"],
                        "api_socket": "/var/lib/b/evil.sock"});
    let as_a = format!("/hosts/{}/phones/{phone_id}/state", a.id);
    let (code, v) = api(&s, "PUT", &as_a, &b_key, Some(report.clone())).await;
    assert_eq!(code, 403, "B reports A's phone under A's id: {v}");
    let as_b = format!("/hosts/{b_id}/phones/{phone_id}/state");
    let (code, v) = api(&s, "PUT", &as_b, &b_key, Some(report)).await;
    assert_eq!(code, 404, "B reports A's phone under its own id: {v}");
    // B's registration changes B only: A keeps its capacity.
    let claim = json!({"vcpus": 2, "memory_mib": 1024, "max_phones": 1});
    let me = ok(&s, "POST", "/hosts/register", &b_key, Some(claim), 201).await;
    assert_eq!(me["id"], b_id.as_str());
    let a_now = ok(
        &s,
        "GET",
        &format!("/hosts/{}", a.id),
        &s.admin.clone(),
        None,
        200,
    )
    .await;
    assert_eq!(a_now["max_phones"], 2, "{a_now}");
    // The phone's socket is untouched by any of that.
    let ph = ok(
        &s,
        "GET",
        &format!("/phones/{phone_id}"),
        &s.admin.clone(),
        None,
        200,
    )
    .await;
    assert!(ph["api_socket"].is_null(), "{ph}");

    // A itself may heartbeat; user tokens and unknown keys are no host keys.
    ok(
        &s,
        "POST",
        &format!("/hosts/{}/heartbeat", a.id),
        &a.token,
        Some(hb.clone()),
        200,
    )
    .await;
    let (_, alice) = user(&s, "alice", "user", 1).await;
    for bad in [alice.as_str(), s.admin.as_str(), "cph_0000", ""] {
        let (code, v) = api(
            &s,
            "POST",
            &format!("/hosts/{}/heartbeat", a.id),
            bad,
            Some(hb.clone()),
        )
        .await;
        assert_eq!(code, 401, "{bad:?}: {v}");
    }
}
both!(hosts_act_only_as_themselves);

async fn join_tokens_work_once_and_reenrolment_replaces_the_key(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    let (_, alice) = user(&s, "alice", "user", 1).await;
    let body = json!({"name": "h", "state_root": "/srv/h", "vcpus": 4, "memory_mib": 4096, "max_phones": 2});
    let (code, _) = api(&s, "POST", "/hosts", &alice, Some(body)).await;
    assert_eq!(code, 403, "only operators enrol hosts");
    for root in ["relative/dir", "/", "/srv/../etc", "/srv/./h", "/srv/\u{7}"] {
        let body = json!({"name": "h", "state_root": root, "vcpus": 4, "memory_mib": 4096, "max_phones": 2});
        let (code, v) = api(&s, "POST", "/hosts", &s.admin.clone(), Some(body)).await;
        assert_eq!(code, 400, "state root {root:?}: {v}");
    }

    let token = enrol(&s, "h", "/srv/h", 2).await;
    let (id, key) = join(&s, &token).await;
    let (code, v) = api(
        &s,
        "POST",
        "/hosts/join",
        "",
        Some(json!({"join_token": token})),
    )
    .await;
    assert_eq!(code, 401, "a join token works once: {v}");
    let claim = json!({"vcpus": 4, "memory_mib": 4096, "max_phones": 2});
    ok(
        &s,
        "POST",
        "/hosts/register",
        &key,
        Some(claim.clone()),
        201,
    )
    .await;

    // Enrolling again (a lost or stolen key) voids the old key; the new token joins the same host.
    let token2 = enrol(&s, "h", "/srv/h", 2).await;
    let (code, _) = api(&s, "POST", "/hosts/register", &key, Some(claim.clone())).await;
    assert_eq!(code, 401, "the old key is void after re-enrolment");
    let (id2, key2) = join(&s, &token2).await;
    assert_eq!(id2, id);
    ok(&s, "POST", "/hosts/register", &key2, Some(claim), 201).await;

    // Only hashes are stored.
    if kind == Kind::Sqlite {
        let db = rusqlite::Connection::open(s.data_dir().join("cloudphone.db")).unwrap();
        let dump: String = db
            .query_row(
                "SELECT COALESCE(join_hash, '') || key_hash FROM hosts",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            !dump.contains(&key2[4..]) && !dump.contains(&token2[4..]),
            "{dump}"
        );
    }
    let audit = ok(&s, "GET", "/audit?limit=100", &s.admin.clone(), None, 200)
        .await
        .to_string();
    for action in ["host.enrol", "host.join", "host.register"] {
        assert!(audit.contains(action), "{action} audited");
    }
}
both!(join_tokens_work_once_and_reenrolment_replaces_the_key);

async fn sockets_stay_under_the_root_and_capacity_under_the_caps(kind: Kind) {
    let s = Server::start(kind, &["--tick-ms", "50"]).await;
    let a: FakeHost = warm_pool(&s, "pixel", 2, 1).await;
    let phones = a.heartbeat(&s, &[]).await;
    let phone = &phones[0];
    let id = phone["phone"]["id"].as_str().unwrap();
    let path = format!("/hosts/{}/phones/{id}/state", a.id);
    let root = &a.root;
    let report = |sock: &str| json!({"state": phone["phone"]["state"], "generation": phone["phone"]["generation"], "api_socket": sock});
    for sock in [
        "/etc/passwd".to_owned(),
        format!("{root}/../other/api.sock"),
        format!("{root}/phones/../../x.sock"),
        format!("{root}x/api.sock"),
        root.clone(),
        "relative/api.sock".to_owned(),
        format!("{root}/a\nb.sock"),
    ] {
        let (code, v) = api(&s, "PUT", &path, &a.token, Some(report(&sock))).await;
        assert_eq!(code, 400, "{sock:?}: {v}");
        assert!(v.to_string().contains("state root"), "{v}");
    }
    let good = format!("{root}/phones/{id}/api.sock");
    let v = ok(&s, "PUT", &path, &a.token, Some(report(&good)), 200).await;
    assert_eq!(v["api_socket"], good.as_str());

    // Capacity: the caps of the enrolment (max_phones 2, 1024 vCPUs, 1 TiB) bound each claim.
    for (claim, field) in [
        (
            json!({"vcpus": 1025, "memory_mib": 4096, "max_phones": 2}),
            "vcpus",
        ),
        (
            json!({"vcpus": 4, "memory_mib": (1u64 << 20) + 1, "max_phones": 2}),
            "memory_mib",
        ),
        (
            json!({"vcpus": 4, "memory_mib": 4096, "max_phones": 3}),
            "max_phones",
        ),
    ] {
        let (code, v) = api(&s, "POST", "/hosts/register", &a.token, Some(claim)).await;
        assert_eq!(code, 400, "{field}: {v}");
        assert!(v.to_string().contains(field), "{v}");
    }
    let host = ok(
        &s,
        "GET",
        &format!("/hosts/{}", a.id),
        &s.admin.clone(),
        None,
        200,
    )
    .await;
    assert_eq!(
        (host["max_phones"].as_i64(), host["cap_max_phones"].as_i64()),
        (Some(2), Some(2))
    );
}
both!(sockets_stay_under_the_root_and_capacity_under_the_caps);

/// A persistent phone lost with its host is never reset (a fresh disk) when the host comes
/// back: it is stopped, so the agent quarantines its disk. A wipe is explicit and audited.
async fn lost_persistent_phones_are_not_reset(kind: Kind) {
    let s = Server::start(
        kind,
        &[
            "--tick-ms",
            "50",
            "--heartbeat-timeout-ms",
            "300",
            "--lost-after-ms",
            "600",
        ],
    )
    .await;
    let a = warm_pool(&s, "h", 3, 2).await;
    let (_, alice) = user(&s, "alice", "user", 2).await;
    let mut phone_ids = Vec::new();
    for persistent in [true, false] {
        let body = json!({"profile": "pixel", "persistent": persistent});
        let l = ok(&s, "POST", "/leases", &alice, Some(body), 201).await;
        phone_ids.push(l["lease"]["phone_id"].as_str().unwrap().to_owned());
    }
    let phone = |id: String| {
        let s = &s;
        async move {
            ok(
                s,
                "GET",
                &format!("/phones/{id}"),
                &s.admin.clone(),
                None,
                200,
            )
            .await
        }
    };
    // Silent past the offline limit: the host is offline, the phones still assigned.
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let host = ok(
        &s,
        "GET",
        &format!("/hosts/{}", a.id),
        &s.admin.clone(),
        None,
        200,
    )
    .await;
    assert_eq!(host["state"], "offline", "{host}");
    assert_eq!(phone(phone_ids[0].clone()).await["state"], "assigned");
    // Past the lost limit: lost.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(phone(phone_ids[0].clone()).await["state"], "lost");
    a.heartbeat(&s, &phone_ids).await;
    let (kept, reset) = (
        phone(phone_ids[0].clone()).await,
        phone(phone_ids[1].clone()).await,
    );
    assert_eq!(
        (kept["state"].as_str(), kept["generation"].as_i64()),
        (Some("stopped"), Some(0)),
        "{kept}"
    );
    assert_eq!(reset["state"], "resetting", "{reset}");

    let (_, bob) = user(&s, "bob", "user", 1).await;
    let (code, _) = api(
        &s,
        "DELETE",
        &format!("/phones/{}", phone_ids[1]),
        &bob,
        None,
    )
    .await;
    assert_eq!(code, 404, "a user cannot wipe another's phone");
    let out = std::process::Command::new(common::bin())
        .args([
            "--url",
            &s.url,
            "--token",
            &s.admin,
            "phones",
            "wipe",
            &phone_ids[1],
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = ok(&s, "GET", "/audit?limit=100", &s.admin.clone(), None, 200).await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "phone.wipe" && e["target"] == phone_ids[1].as_str()),
        "{audit}"
    );
}
both!(lost_persistent_phones_are_not_reset);
