//! The double keeps the documented behaviour of the Consul HTTP API that the plugin relies on.
//! These tests pin it (they run against the double only).

use crate::support;

use std::time::{Duration, Instant};

use micro_core::conformance::{PROMPT, eventually};
use serde_json::{Value, json};
use support::{ConsulApiDouble, raw};

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("JSON body")
}

#[tokio::test]
async fn service_checks_start_critical_and_ttl_checks_lapse() {
    let double = ConsulApiDouble::start().await;
    let addr = double.address();
    // No Status: the check starts critical (agent/service, Check.Status).
    let reg = json!({"Name": "web", "ID": "web-1", "Port": 80, "Check": {"TTL": "1s"}});
    let (status, _, body) = raw(
        &addr,
        "PUT",
        "/v1/agent/service/register",
        reg.to_string().as_bytes(),
        &[],
    )
    .await;
    assert_eq!((status, body.len()), (200, 0), "200 with an empty body");
    assert_eq!(
        double.check_status("service:web-1").as_deref(),
        Some("critical")
    );

    let (_, headers, body) = raw(&addr, "GET", "/v1/health/service/web?passing", b"", &[]).await;
    assert_eq!(
        json_of(&body),
        json!([]),
        "critical entries are filtered by ?passing"
    );
    assert!(headers.contains_key("x-consul-index"));
    let (_, _, body) = raw(&addr, "GET", "/v1/health/service/web", b"", &[]).await;
    let entries = json_of(&body);
    let checks: Vec<&str> = entries[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["serfHealth", "service:web-1"]);
    assert_eq!(
        entries[0]["Service"]["Address"], "",
        "empty Service.Address: use Node.Address"
    );
    assert_eq!(entries[0]["Node"]["Address"], "127.0.0.1");

    let (status, _, body) = raw(&addr, "PUT", "/v1/agent/check/pass/service:web-1", b"", &[]).await;
    assert_eq!((status, body.len()), (200, 0));
    let (_, _, body) = raw(&addr, "GET", "/v1/health/service/web?passing", b"", &[]).await;
    assert_eq!(json_of(&body).as_array().unwrap().len(), 1);
    // The TTL is 1 s: lapsed within it, with room for a loaded machine.
    eventually(Duration::from_secs(1) + PROMPT, "TTL lapsed", || async {
        double.check_status("service:web-1").as_deref() == Some("critical")
    })
    .await;

    let (status, _, body) = raw(&addr, "PUT", "/v1/agent/check/pass/nope", b"", &[]).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = raw(&addr, "PUT", "/v1/agent/service/deregister/nope", b"", &[]).await;
    assert_eq!(status, 404);
    let (status, _, _) = raw(&addr, "PUT", "/v1/agent/service/deregister/web-1", b"", &[]).await;
    assert_eq!(status, 200);
    let (status, _, body) = raw(
        &addr,
        "PUT",
        "/v1/agent/service/register",
        b"{not json",
        &[],
    )
    .await;
    assert_eq!(status, 400);
    assert!(!body.starts_with(b"{"), "errors are plain text");
}

#[tokio::test]
async fn kv_answers_as_documented() {
    let double = ConsulApiDouble::start().await;
    let addr = double.address();
    let (status, headers, body) = raw(&addr, "GET", "/v1/kv/app/missing", b"", &[]).await;
    assert_eq!(
        (status, body.len()),
        (404, 0),
        "missing key: 404, empty body"
    );
    assert!(headers.contains_key("x-consul-index"), "with an index");

    let (_, _, body) = raw(&addr, "PUT", "/v1/kv/app/a?cas=0", b"hello", &[]).await;
    assert_eq!(body, b"true");
    let (_, _, body) = raw(&addr, "PUT", "/v1/kv/app/a?cas=0", b"again", &[]).await;
    assert_eq!(body, b"false", "cas=0 only creates");
    raw(&addr, "PUT", "/v1/kv/app/empty", b"", &[]).await;
    let (_, _, body) = raw(&addr, "GET", "/v1/kv/app/?recurse", b"", &[]).await;
    let entries = json_of(&body);
    assert_eq!(entries[0]["Key"], "app/a");
    assert_eq!(entries[0]["Value"], "aGVsbG8=", "values are base64");
    assert_eq!(entries[1]["Value"], Value::Null, "empty values are null");
    let (_, _, body) = raw(&addr, "GET", "/v1/kv/app/?keys", b"", &[]).await;
    assert_eq!(json_of(&body), json!(["app/a", "app/empty"]));
    let (_, _, body) = raw(&addr, "GET", "/v1/kv/app/a?raw", b"", &[]).await;
    assert_eq!(body, b"hello");
    let (_, _, body) = raw(&addr, "DELETE", "/v1/kv/app/?recurse", b"", &[]).await;
    assert_eq!(body, b"true");
    let (status, _, _) = raw(&addr, "GET", "/v1/kv/app/a", b"", &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn blocking_queries_wait_for_a_greater_index_or_time_out() {
    let double = ConsulApiDouble::start().await;
    let addr = double.address();
    let (_, headers, _) = raw(&addr, "GET", "/v1/kv/w/?recurse", b"", &[]).await;
    let index: u64 = headers["x-consul-index"].parse().unwrap();

    let started = Instant::now();
    let (_, again, _) = raw(
        &addr,
        "GET",
        &format!("/v1/kv/w/?recurse&index={index}&wait=300ms"),
        b"",
        &[],
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "held until wait ran out"
    );
    assert_eq!(
        again["x-consul-index"],
        index.to_string(),
        "no change, same index"
    );

    let writer = {
        let addr = addr.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            raw(&addr, "PUT", "/v1/kv/w/x", b"1", &[]).await
        })
    };
    let started = Instant::now();
    let (_, changed, body) = raw(
        &addr,
        "GET",
        &format!("/v1/kv/w/?recurse&index={index}&wait=60s"),
        b"",
        &[],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered on the change, not when `wait` ran out"
    );
    assert!(changed["x-consul-index"].parse::<u64>().unwrap() > index);
    assert_eq!(json_of(&body)[0]["Key"], "w/x");
    writer.await.unwrap();
}

#[tokio::test]
async fn a_required_token_is_enforced_with_403() {
    let double = ConsulApiDouble::start().await;
    double.require_token("s3cret");
    let addr = double.address();
    let (status, _, body) = raw(&addr, "GET", "/v1/catalog/services", b"", &[]).await;
    assert_eq!(status, 403);
    assert_eq!(body, b"Permission denied");
    let (status, _, body) = raw(
        &addr,
        "GET",
        "/v1/catalog/services",
        b"",
        &[("X-Consul-Token", "s3cret")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body), json!({"consul": []}));
}
