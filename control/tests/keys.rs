//! `/api/v1/keys` and `cloudphone keys` against a real server, on SQLite and PostgreSQL:
//! validation, fingerprints, per-user visibility, the per-user limit; and who may open a
//! lease's adb tunnel (`/leases/{id}/adb`). The tunnel's bytes are tested end to end in
//! relay.rs.

mod common;

use common::{api, bin, lease_phone, ok, user, warm_pool, Kind, Server};
use serde_json::{json, Value};

const KEY1: &str = include_str!("fixtures/adbkey1.pub");
const KEY2: &str = include_str!("fixtures/adbkey2.pub");

fn base64_of(file: &str) -> &str {
    file.split_whitespace().next().unwrap()
}

/// A structurally valid key struct (not a usable RSA key) numbered `i`, for the limit test.
fn structural_key(i: u32) -> String {
    use base64::Engine as _;
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(base64_of(KEY1))
        .unwrap();
    // Change a modulus byte n0inv does not depend on (it covers only the lowest word).
    raw[8 + 100..8 + 104].copy_from_slice(&i.to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

async fn keys_api(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    let (_, alice) = user(&s, "alice", "user", 2).await;
    let (_, bob) = user(&s, "bob", "user", 2).await;

    let k = ok(
        &s,
        "POST",
        "/keys",
        &alice,
        Some(json!({"key": base64_of(KEY1), "comment": "alice@laptop"})),
        201,
    )
    .await;
    let fp = k["fingerprint"].as_str().unwrap();
    assert!(fp.starts_with("SHA256:"), "{k}");
    assert_eq!(k["key"], base64_of(KEY1));
    assert_eq!(k["comment"], "alice@laptop");

    // The same key again, garbage, a wrong-size blob, a bad comment: clear errors, no row.
    let (code, v) = api(
        &s,
        "POST",
        "/keys",
        &alice,
        Some(json!({"key": base64_of(KEY1)})),
    )
    .await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains(fp), "{v}");
    for (body, words) in [
        (json!({"key": "!!!"}), "not base64"),
        (json!({"key": "QUFBQQ=="}), "4 bytes"),
        (
            json!({"key": base64_of(KEY2), "comment": "a\u{7}b"}),
            "comment",
        ),
        (json!({"key": base64_of(KEY2), "extra": 1}), "JSON"),
    ] {
        let (code, v) = api(&s, "POST", "/keys", &alice, Some(body)).await;
        assert!(code == 400 || code == 422, "{code} {v}");
        let text = v.to_string();
        assert!(text.contains(words), "{words}: {v}");
    }
    let listed = ok(&s, "GET", "/keys", &alice, None, 200).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["fingerprint"], fp);

    // Bob neither sees nor removes alice's key; the same key is his to register too.
    assert_eq!(ok(&s, "GET", "/keys", &bob, None, 200).await, json!([]));
    let id = k["id"].as_str().unwrap();
    ok(&s, "DELETE", &format!("/keys/{id}"), &bob, None, 404).await;
    ok(&s, "DELETE", "/keys/ak_%27%20OR%201=1", &bob, None, 404).await;
    ok(
        &s,
        "POST",
        "/keys",
        &bob,
        Some(json!({"key": base64_of(KEY1)})),
        201,
    )
    .await;

    // At most 16 per user.
    for i in 0..15 {
        ok(
            &s,
            "POST",
            "/keys",
            &alice,
            Some(json!({"key": structural_key(i)})),
            201,
        )
        .await;
    }
    let (code, v) = api(
        &s,
        "POST",
        "/keys",
        &alice,
        Some(json!({"key": structural_key(99)})),
    )
    .await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("at most 16"), "{v}");

    let removed = ok(&s, "DELETE", &format!("/keys/{id}"), &alice, None, 200).await;
    assert_eq!(removed["fingerprint"], fp);
    let left = ok(&s, "GET", "/keys", &alice, None, 200).await;
    assert!(left
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["fingerprint"] != fp));
    ok(&s, "DELETE", &format!("/keys/{id}"), &alice, None, 404).await;
}
both!(keys_api);

fn cli(s: &Server, token: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .args(["--url", &s.url, "--token", token])
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `cloudphone keys add FILE`, `keys`, `keys rm ID` with an adbkey.pub file as adb writes it.
async fn keys_cli(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    let (_, alice) = user(&s, "alice", "user", 1).await;
    let file = format!("{}/tests/fixtures/adbkey2.pub", env!("CARGO_MANIFEST_DIR"));
    let (good, out) = cli(&s, &alice, &["--json", "keys", "add", &file]);
    assert!(good, "{out}");
    let added: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(added[0]["comment"], "tester2@cloudphone");
    let (good, out) = cli(&s, &alice, &["keys"]);
    assert!(
        good && out.contains(added[0]["fingerprint"].as_str().unwrap()),
        "{out}"
    );
    let (good, out) = cli(&s, &alice, &["keys", "add", "/etc/hostname"]);
    assert!(!good && out.contains("adb public key"), "{out}");
    let id = added[0]["id"].as_str().unwrap();
    let (good, out) = cli(&s, &alice, &["keys", "rm", id]);
    assert!(good, "{out}");
    assert_eq!(ok(&s, "GET", "/keys", &alice, None, 200).await, json!([]));
}
both!(keys_cli);

/// The status of a tunnel handshake for `lease` as `token` (101 when it opened).
async fn tunnel_status(s: &Server, lease: &str, token: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/api/v1/leases/{lease}/adb",
        s.url.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("tunnel handshake failed oddly: {e}"),
    }
}

/// Only the lease's user or an operator passes; a lease that ended or expired, an unknown or
/// malformed id and a missing token are refused before anything reaches the phone. A phone
/// whose VMM socket is dead (this fake host runs none) is a clean 502.
async fn tunnel_authorisation(kind: Kind) {
    let s = Server::start(kind, &["--heartbeat-timeout-ms", "60000"]).await;
    let (_, alice) = user(&s, "alice", "user", 2).await;
    let (_, bob) = user(&s, "bob", "user", 2).await;
    let host = warm_pool(&s, "h1", 4, 2).await;
    host.report_sockets(&s).await;
    let lease = lease_phone(&s, &alice, "pixel").await;
    let id = lease["lease"]["id"].as_str().unwrap().to_owned();

    assert_eq!(tunnel_status(&s, &id, None).await, 401);
    assert_eq!(tunnel_status(&s, &id, Some(&bob)).await, 403);
    assert_eq!(
        tunnel_status(&s, "ls_0123456789abcdef", Some(&alice)).await,
        404
    );
    assert_eq!(tunnel_status(&s, "ls_'--", Some(&alice)).await, 404);
    let admin = s.admin.clone();
    assert_eq!(tunnel_status(&s, &id, Some(&alice)).await, 502);
    assert_eq!(tunnel_status(&s, &id, Some(&admin)).await, 502);

    ok(&s, "DELETE", &format!("/leases/{id}"), &alice, None, 200).await;
    assert_eq!(tunnel_status(&s, &id, Some(&alice)).await, 403);

    let short = json!({"profile": "pixel", "duration_s": 1});
    let lease = ok(&s, "POST", "/leases", &alice, Some(short), 201).await;
    let id = lease["lease"]["id"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(tunnel_status(&s, id, Some(&alice)).await, 403);
}
both!(tunnel_authorisation);
