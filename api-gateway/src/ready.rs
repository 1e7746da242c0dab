//! `GET /health/ready`: whether the gateway can route what it is there for. 200 when the
//! registry answers within [`REGISTRY_TIMEOUT`] and every service named by `--require` has a
//! live node that is not stopping; otherwise 503 with a body naming what is missing or the
//! registry's error. `GET /health` stays the liveness probe (the process answers).

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use micro_core::Registry;
use micro_core::registry::Service;
use micro_core::server::{HEALTH_METADATA, NOT_SERVING};

/// How long the registry has to answer before the gateway is not ready.
pub(crate) const REGISTRY_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer to `GET /health/ready`.
pub(crate) async fn ready(registry: &dyn Registry, required: &[String]) -> Response {
    let plugin = registry.name();
    let checked = tokio::time::timeout(REGISTRY_TIMEOUT, check(registry, required)).await;
    let (status, body) = match checked {
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "status": "not_ready",
                "message": format!("the registry ({plugin}) did not answer within {}", humantime::format_duration(REGISTRY_TIMEOUT)),
                "registry": { "plugin": plugin, "reachable": false, "error": "timed out" },
                "missing": [],
            }),
        ),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "status": "not_ready",
                "message": format!("the registry ({plugin}) cannot be read: {error}"),
                "registry": { "plugin": plugin, "reachable": false, "error": error.to_string() },
                "missing": [],
            }),
        ),
        Ok(Ok(missing)) if missing.is_empty() => (
            StatusCode::OK,
            serde_json::json!({
                "status": "ready",
                "registry": { "plugin": plugin, "reachable": true },
                "required": required,
            }),
        ),
        Ok(Ok(missing)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "status": "not_ready",
                "message": format!("no live node of required service(s) {}", missing.join(", ")),
                "registry": { "plugin": plugin, "reachable": true },
                "missing": missing,
            }),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The required services without a serving node; an error when the registry cannot be read.
async fn check(registry: &dyn Registry, required: &[String]) -> micro_core::Result<Vec<String>> {
    // Asked even with nothing required: ready means the registry answers.
    registry.list_names().await?;
    let found =
        futures::future::join_all(required.iter().map(|name| registry.get_service(name))).await;
    let mut missing = Vec::new();
    for (name, found) in required.iter().zip(found) {
        if !found?.iter().any(serving) {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

/// Whether a registered version has a node that is not stopping.
fn serving(service: &Service) -> bool {
    service
        .nodes
        .iter()
        .any(|node| node.metadata.get(HEALTH_METADATA).map(String::as_str) != Some(NOT_SERVING))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use micro_core::registry::Node;

    use super::*;

    fn node(id: &str, stopping: bool) -> Node {
        let mut node = Node {
            id: id.into(),
            address: "127.0.0.1:1".into(),
            ..Node::default()
        };
        if stopping {
            node.metadata
                .insert(HEALTH_METADATA.into(), NOT_SERVING.into());
        }
        node
    }

    async fn body(response: Response) -> (u16, serde_json::Value) {
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn ready_when_every_required_service_has_a_serving_node() {
        let registry: Arc<dyn Registry> = Arc::new(micro_memory::MemoryRegistry::new());
        let required = vec!["greeter".to_string(), "orders".to_string()];
        let (status, json) = body(ready(&*registry, &[]).await).await;
        assert_eq!((status, json["status"].as_str()), (200, Some("ready")));
        let (status, json) = body(ready(&*registry, &required).await).await;
        assert_eq!(status, 503);
        assert_eq!(json["missing"], serde_json::json!(["greeter", "orders"]));
        let service = |name: &str, stopping: bool| Service {
            name: name.into(),
            version: "1".into(),
            nodes: vec![node(&format!("{name}-1"), stopping)],
            ..Service::default()
        };
        let ttl = Duration::from_secs(60);
        registry
            .register(&service("greeter", false), ttl)
            .await
            .expect("register");
        registry
            .register(&service("orders", true), ttl)
            .await
            .expect("register");
        let (status, json) = body(ready(&*registry, &required).await).await;
        assert_eq!(status, 503, "a stopping node does not count: {json}");
        assert_eq!(json["missing"], serde_json::json!(["orders"]));
        registry
            .register(&service("orders", false), ttl)
            .await
            .expect("register");
        let (status, json) = body(ready(&*registry, &required).await).await;
        assert_eq!(
            (status, json["status"].as_str()),
            (200, Some("ready")),
            "{json}"
        );
    }

    /// A registry whose backend is down: every read fails, or never answers.
    struct Down {
        hang: bool,
    }

    #[async_trait::async_trait]
    impl Registry for Down {
        fn name(&self) -> &str {
            "down"
        }
        async fn register(&self, _: &Service, _: Duration) -> micro_core::Result<()> {
            self.fail().await
        }
        async fn deregister(&self, _: &Service) -> micro_core::Result<()> {
            self.fail().await
        }
        async fn get_service(&self, _: &str) -> micro_core::Result<Vec<Service>> {
            self.fail().await
        }
        async fn list_services(&self) -> micro_core::Result<Vec<Service>> {
            self.fail().await
        }
        async fn watch(
            &self,
            _: Option<&str>,
        ) -> micro_core::Result<micro_core::registry::Watcher> {
            self.fail().await
        }
    }

    impl Down {
        async fn fail<T>(&self) -> micro_core::Result<T> {
            if self.hang {
                std::future::pending::<()>().await;
            }
            Err(micro_core::Error::backend_msg(
                "registry",
                "down",
                "connection refused at 127.0.0.1:2379",
            ))
        }
    }

    #[tokio::test]
    async fn not_ready_when_the_registry_fails_or_does_not_answer() {
        let (status, json) = body(ready(&Down { hang: false }, &[]).await).await;
        assert_eq!(status, 503);
        assert_eq!(json["registry"]["reachable"], false);
        assert!(
            json["registry"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("connection refused at 127.0.0.1:2379")),
            "names the registry's error: {json}"
        );
        // The timeout passes on the paused clock, without waiting for it.
        tokio::time::pause();
        let (status, json) = body(ready(&Down { hang: true }, &["greeter".into()]).await).await;
        assert_eq!(status, 503);
        assert_eq!(json["registry"]["error"], "timed out", "{json}");
    }
}
