//! TTL lapses as a user sees them: a watcher of all services sees a node appear, leave when its
//! TTL check goes critical, and come back as soon as the node registers again — whether the
//! same client heartbeats or a restarted process registers it anew. An agent keeps the status
//! of a check it already has when the service is registered again, so the plugin passes the
//! check after registering; the second test pins that agent behaviour.

use crate::support;

use std::time::Duration;

use futures::StreamExt;
use micro_consul::ConsulRegistry;
use micro_core::Registry;
use micro_core::conformance::eventually;
use micro_core::registry::{Event, EventKind, Node, Service, Watcher};
use serde_json::{Value, json};
use tokio::time::Instant;

/// How long a watcher may take to report a node that registered again.
const PROMPTLY: Duration = Duration::from_secs(5);
/// How long a lapse (TTL plus the agent's reaction) may take to be reported.
const LAPSE: Duration = Duration::from_secs(15);

/// The next event about `name` within `within`.
async fn next_event(watcher: &mut Watcher, name: &str, within: Duration) -> Event {
    let deadline = Instant::now() + within;
    loop {
        let event = tokio::time::timeout_at(deadline, watcher.next())
            .await
            .unwrap_or_else(|_| panic!("an event about {name} within {within:?}"))
            .expect("the stream goes on")
            .expect("no watch error");
        if event.service.name == name {
            return event;
        }
    }
}

fn service(name: &str) -> Service {
    Service {
        name: name.to_string(),
        version: "1.0.0".into(),
        nodes: vec![Node {
            id: format!("{name}-1"),
            address: "127.0.0.1:4000".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn assert_gone(registry: &ConsulRegistry, name: &str) {
    assert!(registry.get_service(name).await.expect("get").is_empty());
    assert!(
        !registry
            .list_services()
            .await
            .expect("list")
            .iter()
            .any(|s| s.name == name)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_node_is_back_as_soon_as_it_registers_again() {
    let address = support::backend().await;
    let registry = ConsulRegistry::new(&address).expect("registry");
    let name = format!("ttl-watch-{:08x}", std::process::id());
    let service = service(&name);
    let mut watcher = registry.watch(None).await.expect("watch all");
    registry
        .register(&service, Duration::from_secs(1))
        .await
        .expect("register");

    let created = next_event(&mut watcher, &name, PROMPTLY).await;
    assert_eq!(created.kind, EventKind::Create);
    assert_eq!(
        created.service, service,
        "the event carries the registered record"
    );
    assert_eq!(
        registry.get_service(&name).await.expect("get"),
        vec![service.clone()]
    );

    // No heartbeat: the TTL check goes critical, the node drops out of `?passing`.
    let deleted = next_event(&mut watcher, &name, LAPSE).await;
    assert_eq!(deleted.kind, EventKind::Delete);
    assert_eq!(deleted.service.nodes[0].id, format!("{name}-1"));
    assert_gone(&registry, &name).await;

    // The process restarts: a new client, which remembers nothing, registers the node again.
    // The agent still has the critical check; the node is live when `register` returns.
    let restarted = ConsulRegistry::new(&address).expect("registry");
    restarted
        .register(&service, Duration::from_secs(2))
        .await
        .expect("register after a restart");
    assert_eq!(
        registry.get_service(&name).await.expect("get"),
        vec![service.clone()],
        "live at once, not after a heartbeat"
    );
    let back = next_event(&mut watcher, &name, PROMPTLY).await;
    assert_eq!(back.kind, EventKind::Create);
    assert_eq!(back.service, service);

    // It lapses again; the first client's heartbeat (an unchanged registration) revives it.
    assert_eq!(
        next_event(&mut watcher, &name, LAPSE).await.kind,
        EventKind::Delete
    );
    assert_gone(&registry, &name).await;
    registry
        .register(&service, Duration::from_secs(1))
        .await
        .expect("heartbeat after the lapse");
    assert_eq!(
        registry.get_service(&name).await.expect("get"),
        vec![service.clone()]
    );
    assert_eq!(
        next_event(&mut watcher, &name, PROMPTLY).await.kind,
        EventKind::Create
    );

    registry.deregister(&service).await.expect("deregister");
    assert_eq!(
        next_event(&mut watcher, &name, PROMPTLY).await.kind,
        EventKind::Delete
    );
}

/// One raw request to the backend, with `CONSUL_HTTP_TOKEN` when set.
async fn call(method: &str, path: &str, body: &Value) -> (u16, Vec<u8>) {
    let token = std::env::var("CONSUL_HTTP_TOKEN").unwrap_or_default();
    let headers: Vec<(&str, &str)> = if token.is_empty() {
        Vec::new()
    } else {
        vec![("X-Consul-Token", token.as_str())]
    };
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, _, answer) =
        support::raw(&support::current(), method, path, &body, &headers).await;
    (status, answer)
}

/// The status of check `check` of service `name`, from `/v1/health/service/<name>`.
async fn check_status(name: &str, check: &str) -> Option<String> {
    let (status, body) = call("GET", &format!("/v1/health/service/{name}"), &Value::Null).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let entries: Value = serde_json::from_slice(&body).expect("JSON");
    entries
        .as_array()?
        .iter()
        .flat_map(|e| e["Checks"].as_array().into_iter().flatten())
        .find(|c| c["CheckID"] == check)
        .and_then(|c| c["Status"].as_str())
        .map(str::to_string)
}

async fn register(body: &Value) {
    let (status, answer) = call("PUT", "/v1/agent/service/register", body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test(flavor = "multi_thread")]
async fn registering_again_keeps_a_lapsed_check_critical_until_it_is_passed() {
    support::backend().await;
    let name = format!("ttl-keep-{:08x}", std::process::id());
    let id = format!("{name}-1");
    let check = format!("service:{id}");
    let registration = |port: u16| {
        json!({
            "ID": id, "Name": name, "Port": port,
            "Check": {"CheckID": check, "TTL": "1s", "Status": "passing",
                      "DeregisterCriticalServiceAfter": "1m"},
        })
    };
    register(&registration(80)).await;
    assert_eq!(
        check_status(&name, &check).await.as_deref(),
        Some("passing")
    );

    eventually(LAPSE, "the TTL check lapses", || async {
        check_status(&name, &check).await.as_deref() == Some("critical")
    })
    .await;

    // `Status: passing` only sets the status of a check the agent does not have yet.
    register(&registration(80)).await;
    assert_eq!(
        check_status(&name, &check).await.as_deref(),
        Some("critical"),
        "the same registration again"
    );
    register(&registration(81)).await;
    assert_eq!(
        check_status(&name, &check).await.as_deref(),
        Some("critical"),
        "a changed registration"
    );

    let (status, _) = call(
        "PUT",
        &format!("/v1/agent/check/pass/{check}"),
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        check_status(&name, &check).await.as_deref(),
        Some("passing")
    );
    let (status, _) = call(
        "PUT",
        &format!("/v1/agent/service/deregister/{id}"),
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200);
}
