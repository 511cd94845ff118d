//! Placement by measured CPU (issue 13): a host whose agent measures its CPUs busier than the
//! policy's limit takes no new phone, whatever its vCPU ratio still allows; an operator may
//! lift the limit; bad measurements and limits are refused. Scripted agents over real HTTP,
//! both databases.

mod common;

use std::time::{Duration, Instant};

use common::{api, ok, profile, FakeHost, Kind, Server};
use serde_json::{json, Value};

/// Heartbeat from `host` claiming no VMMs and the CPU busy share `cpu` (absent: not
/// measured this time); returns the phones the service wants on it.
async fn heartbeat(s: &Server, host: &FakeHost, cpu: Option<u64>) -> Vec<Value> {
    let mut usage = json!({"mem_available_mib": 1 << 19, "phones": []});
    if let Some(c) = cpu {
        usage["cpu_busy_pct"] = c.into();
    }
    let path = format!("/hosts/{}/heartbeat", host.id);
    let body = json!({"running": [], "usage": usage});
    let v = ok(s, "POST", &path, &host.token, Some(body), 200).await;
    v["phones"].as_array().unwrap().clone()
}

/// Heartbeats from `host` with `cpu` until the service wants `n` phones on it.
async fn wait_for_phones(s: &Server, host: &FakeHost, cpu: Option<u64>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let phones = heartbeat(s, host, cpu).await;
        if phones.len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} phones on {}, expected {n}",
            phones.len(),
            host.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Gives the scheduler some ticks, then checks that `host` still holds exactly `n` phones.
async fn still_holds(s: &Server, host: &FakeHost, cpu: Option<u64>, n: usize) {
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(heartbeat(s, host, cpu).await.len(), n, "on {}", host.id);
}

async fn placement_by_measured_cpu(kind: Kind) {
    let s = Server::start(kind, &["--tick-ms", "50"]).await;
    let admin = s.admin.clone();
    // The busy host has more free slots, so by slots alone it would be chosen first.
    let busy = FakeHost::register(&s, "busy", 4).await;
    let calm = FakeHost::register(&s, "calm", 2).await;
    heartbeat(&s, &busy, Some(95)).await;
    heartbeat(&s, &calm, Some(10)).await;
    let pixel = profile(&s, "pixel", 4).await;
    wait_for_phones(&s, &calm, Some(10), 2).await;
    still_holds(&s, &busy, Some(95), 0).await;
    // A heartbeat without a CPU figure keeps the last one: still too busy.
    still_holds(&s, &busy, None, 0).await;
    let host = ok(&s, "GET", &format!("/hosts/{}", busy.id), &admin, None, 200).await;
    assert_eq!(host["cpu_busy_pct"], 95, "{host}");
    assert_eq!(
        host["policy"]["cpu_busy_limit_pct"], 90,
        "the default: {host}"
    );

    // Its phones calm down: it takes the rest of the pool.
    wait_for_phones(&s, &busy, Some(40), 2).await;

    // Busy again, a bigger pool gets nothing until the operator lifts the CPU limit.
    heartbeat(&s, &busy, Some(95)).await;
    let path = format!("/profiles/{pixel}");
    ok(
        &s,
        "PATCH",
        &path,
        &admin,
        Some(json!({"pool_size": 6})),
        200,
    )
    .await;
    still_holds(&s, &busy, Some(95), 2).await;
    let policy = format!("/hosts/{}/policy", busy.id);
    let lifted =
        json!({"vcpu_pct": 500, "memory_pct": 200, "reserve_mib": 0, "cpu_busy_limit_pct": 100});
    let h = ok(&s, "PUT", &policy, &admin, Some(lifted), 200).await;
    assert_eq!(h["policy"]["cpu_busy_limit_pct"], 100, "{h}");
    wait_for_phones(&s, &busy, Some(95), 4).await;

    // A policy body without the field gets the default; bad limits and figures are refused.
    let old = json!({"vcpu_pct": 500, "memory_pct": 200, "reserve_mib": 0});
    let h = ok(&s, "PUT", &policy, &admin, Some(old), 200).await;
    assert_eq!(h["policy"]["cpu_busy_limit_pct"], 90, "{h}");
    for limit in [0, 9, 101] {
        let bad = json!({"vcpu_pct": 500, "memory_pct": 200, "reserve_mib": 0, "cpu_busy_limit_pct": limit});
        let (code, v) = api(&s, "PUT", &policy, &admin, Some(bad)).await;
        assert_eq!(code, 400, "limit {limit}: {v}");
        assert!(v.to_string().contains("CPU busy limit"), "{v}");
    }
    let hb = format!("/hosts/{}/heartbeat", busy.id);
    for (cpu, status) in [(json!(101), 400), (json!(-1), 422), (json!("x"), 422)] {
        let body = json!({"running": [], "usage": {"mem_available_mib": 1, "phones": [], "cpu_busy_pct": cpu}});
        let (code, v) = api(&s, "POST", &hb, &busy.token, Some(body)).await;
        assert_eq!(code, status, "cpu_busy_pct {cpu}: {v}");
    }
    let host = ok(&s, "GET", &format!("/hosts/{}", busy.id), &admin, None, 200).await;
    assert_eq!(
        host["cpu_busy_pct"], 95,
        "refused figures change nothing: {host}"
    );
}
both!(placement_by_measured_cpu);
