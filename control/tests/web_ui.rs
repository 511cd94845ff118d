//! The web UI's operator page in headless Chromium (tier 3; needs Debian `chromium` +
//! `chromium-driver`): an operator logs in, opens "Operator" from the navigation and sees the
//! hosts, the phones and the utilisation chart drawn from the service's own samples; a plain
//! user gets no operator link and no data.
//!
//! `cargo test -p cloudphone --test web_ui -- --ignored`

mod common;

use std::time::Duration;

use cloudphone_tests::webdriver::Browser;
use common::{lease_phone, ok, user, warm_pool, Kind, Server};
use serde_json::{json, Value};

const PASSWORD: &str = "correct-horse-battery";

/// What the operator page shows, read from the DOM.
const PROBE: &str = "const rows = (i) => [...(document.querySelectorAll('main table')[i]?.querySelectorAll('tr') || [])]
    .slice(1).map((r) => [...r.querySelectorAll('td')].map((c) => c.textContent));
  const canvas = document.querySelector('canvas.chart');
  return { hosts: rows(0), phones: rows(1), samples: Number(canvas?.dataset.samples || 0),
           status: document.querySelector('main p.muted')?.textContent || '',
           operatorLink: !!document.querySelector('a[href=\"#/operator\"]') };";

/// Blocking WebDriver calls from the async test: off the runtime's async threads.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Logs `name` in, waits for the catalogue (where a login lands), then opens page `hash`.
fn open_as(browser: &Browser, s: &Server, name: &str, hash: &str) -> anyhow::Result<()> {
    browser.log_in(&s.url, name, PASSWORD)?;
    browser.wait_for(
        "the catalogue",
        Duration::from_secs(20),
        ("return location.hash", &[]),
        |v| v == "#/catalogue",
    )?;
    browser.script("location.hash = arguments[0]; return true;", &[json!(hash)])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "browser: needs chromium"]
async fn operator_page_shows_hosts_phones_and_utilisation_over_time() {
    let s = Server::start(Kind::Sqlite, &["--utilisation-sample-ms", "300"]).await;
    let admin = s.admin.clone();
    for (name, role) in [("olivia", "operator"), ("uma", "user")] {
        let body = json!({"name": name, "role": role, "password": PASSWORD});
        ok(&s, "POST", "/users", &admin, Some(body), 201).await;
    }
    let (_, alice) = user(&s, "alice", "user", 2).await;
    warm_pool(&s, "rack1-host7", 4, 2).await;
    let lease = lease_phone(&s, &alice, "pixel").await;
    let leased = lease["lease"]["phone_id"].as_str().unwrap().to_owned();

    let browser = blocking(|| Browser::start((1000, 900))).expect("start chromium");
    blocking(|| browser.log_in(&s.url, "olivia", PASSWORD)).unwrap();
    blocking(|| {
        browser.wait_for(
            "the Operator link",
            Duration::from_secs(20),
            (
                "const a = document.querySelector('a[href=\"#/operator\"]'); if (a) a.click(); return !!a;",
                &[],
            ),
            |v| v == true,
        )
    })
    .unwrap();
    // The page refreshes every 5 s; by then the service has several samples.
    let page = blocking(|| {
        browser.wait_for(
            "hosts, phones and a chart with samples",
            Duration::from_secs(30),
            (PROBE, &[]),
            |v| {
                v["samples"].as_u64().unwrap_or(0) >= 2
                    && v["phones"].as_array().is_some_and(|p| p.len() >= 2)
            },
        )
    })
    .unwrap();
    let host_row = &page["hosts"][0];
    assert_eq!(host_row[0], "rack1-host7", "{page}");
    assert_eq!(host_row[1], "online", "{page}");
    assert_eq!(host_row[2], "2 / 4", "phones / max phones: {page}");
    assert!(
        host_row[4]
            .as_str()
            .unwrap()
            .starts_with("512 / 1048576 MiB"),
        "memory committed by the two pool phones: {page}"
    );
    let phones = page["phones"].as_array().unwrap();
    let leased_row = phones
        .iter()
        .find(|r| r[0] == leased.as_str())
        .unwrap_or_else(|| panic!("the leased phone is listed: {page}"));
    assert_eq!(leased_row[3], "assigned", "{page}");
    assert_eq!(
        leased_row[4], "watch",
        "an assigned phone can be watched: {page}"
    );
    let status = page["status"].as_str().unwrap();
    assert!(status.starts_with("1 of 4 phone slots in use"), "{status}");

    // A plain user has no operator link, and the page itself shows the refusal, not data.
    let other = blocking(|| Browser::start((1000, 900))).expect("start chromium");
    let seen: Value = blocking(|| {
        open_as(&other, &s, "uma", "#/operator")?;
        other.wait_for(
            "the operator page's refusal",
            Duration::from_secs(20),
            (PROBE, &[]),
            |v| !v["status"].as_str().unwrap_or("").is_empty(),
        )
    })
    .unwrap();
    assert_eq!(seen["operatorLink"], false, "{seen}");
    assert!(seen["hosts"].as_array().unwrap().is_empty(), "{seen}");
    assert!(
        seen["status"].as_str().unwrap().contains("operator"),
        "{seen}"
    );
}

/// What the live phone page shows, read from the DOM.
const PHONE_PROBE: &str = "return { countdown: document.querySelector('.countdown')?.textContent || '',
           release: [...document.querySelectorAll('button')].some((b) => b.textContent === 'Release'),
           video: !!document.querySelector('video.screen'),
           ended: document.querySelector('.session-ended h2')?.textContent || '',
           reason: document.querySelector('.session-ended .reason')?.textContent || '' };";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "browser: needs chromium"]
async fn the_phone_page_shows_the_session_ended_when_an_operator_releases_the_lease() {
    let s = Server::start(Kind::Sqlite, &[]).await;
    let admin = s.admin.clone();
    let body = json!({"name": "alice", "role": "user", "password": PASSWORD, "max_phones": 1});
    let alice = ok(&s, "POST", "/users", &admin, Some(body), 201).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let host = warm_pool(&s, "rack1-host7", 1, 1).await;
    host.report_sockets(&s).await;
    let lease = lease_phone(&s, &alice, "pixel").await;
    let lease_id = lease["lease"]["id"].as_str().unwrap().to_owned();

    let browser = blocking(|| Browser::start((1000, 900))).expect("start chromium");
    let live = blocking(|| {
        open_as(&browser, &s, "alice", &format!("#/phone/{lease_id}"))?;
        browser.wait_for(
            "the live phone with its countdown",
            Duration::from_secs(20),
            (PHONE_PROBE, &[]),
            |v| v["countdown"].as_str().is_some_and(|c| c.ends_with("left")),
        )
    })
    .unwrap();
    assert_eq!(live["release"], true, "{live}");

    // An operator releases the lease through the API: the page drops the phone and says why.
    let released = std::time::Instant::now();
    ok(
        &s,
        "DELETE",
        &format!("/leases/{lease_id}"),
        &admin,
        None,
        200,
    )
    .await;
    let ended = blocking(|| {
        browser.wait_for(
            "the session-ended notice",
            Duration::from_secs(5),
            (PHONE_PROBE, &[]),
            |v| v["ended"] == "Your session ended",
        )
    })
    .unwrap();
    eprintln!(
        "the page showed the end {:?} after the release",
        released.elapsed()
    );
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "{:?}",
        released.elapsed()
    );
    assert_eq!(ended["reason"], "lease ended: released", "{ended}");
    assert_eq!(ended["countdown"], "", "no countdown left: {ended}");
    assert_eq!(ended["release"], false, "no Release button left: {ended}");
    assert_eq!(ended["video"], false, "no live phone left: {ended}");
}
