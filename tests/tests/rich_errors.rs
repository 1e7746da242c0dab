//! Rich errors through the gateway: a service's `google.rpc.Status` details become the error
//! body's `details` as proto3 JSON with `@type`, and a RetryInfo becomes `Retry-After`. The
//! greeter example (a real process) refuses an empty name with a BadRequest; an in-process
//! service throttles with RetryInfo, ErrorInfo, a detail of its own message type (decoded with
//! the descriptors the gateway got by reflection) and one of a type nobody knows (kept as base64).

use std::sync::Arc;
use std::time::Duration;

use micro_core::Server;
use micro_core::status;
use micro_testkit::greeter::v2::greeter_server::{Greeter, GreeterServer};
use micro_testkit::greeter::v2::{GoodbyeReply, GoodbyeRequest, HelloReply, HelloRequest};
use micro_testkit::{GatewayProcess, PROPAGATION, get, greeter, post, test_options, wait_until};
use prost::Message;
use tonic::{Request, Response, Status};

const BAD_REQUEST: &str = "type.googleapis.com/google.rpc.BadRequest";

#[test]
fn an_empty_name_is_a_400_with_a_field_violation_on_name() {
    let gateway = GatewayProcess::start(&[]);
    let _greeter = gateway.greeter(&[]);
    wait_until(
        PROPAGATION,
        "the greeter answers through the gateway",
        || {
            post(
                gateway.http,
                "/greeter/Greeter/SayHello",
                r#"{"name":"Al"}"#,
            )
            .status
                == 200
        },
    );
    for body in [r#"{"name":""}"#, r#"{"name":"  \t"}"#, "{}"] {
        let response = post(gateway.http, "/greeter/Greeter/SayHello", body);
        assert_eq!(response.status, 400, "{body}: {}", response.body);
        let json = response.json();
        assert_eq!(json["code"], 3, "INVALID_ARGUMENT: {json}");
        assert_eq!(json["details"][0]["@type"], BAD_REQUEST, "{json}");
        let violation = &json["details"][0]["fieldViolations"][0];
        assert_eq!(violation["field"], "name", "{json}");
        assert!(
            violation["description"]
                .as_str()
                .is_some_and(|d| d.contains("empty")),
            "{json}"
        );
        assert!(response.header("retry-after").is_none(), "no RetryInfo");
    }
    // The same through /rpc and GET, which share the call path.
    let rpc = post(
        gateway.http,
        "/rpc",
        r#"{"service":"greeter","endpoint":"Greeter.SayHello","request":{"name":""}}"#,
    );
    assert_eq!(
        (rpc.status, rpc.json()["details"][0]["@type"].clone()),
        (400, BAD_REQUEST.into()),
        "{}",
        rpc.body
    );
    let query = get(gateway.http, "/greeter/SayHello?name=");
    assert_eq!(query.status, 400, "{}", query.body);
    // A name still greets, and an error without details keeps `"details": []`.
    let hello = post(
        gateway.http,
        "/greeter/Greeter/SayHello",
        r#"{"name":"Al"}"#,
    );
    assert_eq!(hello.json()["message"], "Hello Al");
    let unknown = post(gateway.http, "/greeter/Greeter/Nope", "{}");
    assert_eq!(unknown.json()["details"], serde_json::json!([]));
}

/// `greeter.v2` whose SayHello is always throttled, with rich details.
#[derive(Clone, Debug)]
struct Throttled;

#[tonic::async_trait]
impl Greeter for Throttled {
    async fn say_hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        // Its own type: the gateway knows it only from this service's descriptors. int64 is a
        // string in proto3 JSON, and the field names are lowerCamelCase.
        let own = GoodbyeReply {
            message: "come back later".into(),
            request_id: 42,
            polite: true,
        };
        Err(status::resource_exhausted("too many greetings")
            .retry_after(Duration::from_millis(1200))
            .error_info("RATE_LIMITED", "greeter.example.com", [("limit", "10/s")])
            .any(status::Any {
                type_url: format!("{}greeter.v2.GoodbyeReply", status::TYPE_URL_PREFIX),
                value: own.encode_to_vec(),
            })
            .any(status::Any {
                type_url: format!("{}shop.v1.Secret", status::TYPE_URL_PREFIX),
                value: vec![8, 1],
            })
            .into())
    }

    async fn say_goodbye(
        &self,
        _: Request<GoodbyeRequest>,
    ) -> Result<Response<GoodbyeReply>, Status> {
        Err(Status::unavailable("no goodbyes today"))
    }
}

#[test]
fn retry_info_sets_retry_after_and_every_detail_is_shown() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let gateway = GatewayProcess::start(&[]);
    let server = runtime.block_on(async {
        let registry = Arc::new(
            micro_remote::RemoteRegistry::new(&gateway.registry.to_string())
                .expect("remote registry"),
        );
        Server::new(test_options("throttled"), registry)
            .descriptors(greeter::DESCRIPTORS_V2)
            .expect("greeter.v2 descriptors")
            .add_service(GreeterServer::new(Throttled))
            .start()
            .await
            .expect("start the throttled service")
    });
    wait_until(PROPAGATION, "the throttled service is routed", || {
        post(gateway.http, "/throttled/Greeter/SayHello", "{}").status == 429
    });
    let response = post(gateway.http, "/throttled/Greeter/SayHello", "{}");
    assert_eq!(response.status, 429, "{}", response.body);
    assert_eq!(
        response.header("retry-after"),
        Some("2"),
        "1.2 s rounded up"
    );
    let json = response.json();
    assert_eq!(json["code"], 8, "RESOURCE_EXHAUSTED: {json}");
    assert_eq!(json["message"], "too many greetings");
    let details = json["details"].as_array().expect("details array");
    let of = |kind: &str| {
        details
            .iter()
            .find(|d| d["@type"].as_str().is_some_and(|t| t.ends_with(kind)))
            .unwrap_or_else(|| panic!("no {kind} in {json}"))
    };
    assert_eq!(
        of("google.rpc.RetryInfo")["retryDelay"],
        "1.200s",
        "a Duration is proto3 JSON"
    );
    let info = of("google.rpc.ErrorInfo");
    assert_eq!(
        (&info["reason"], &info["domain"], &info["metadata"]["limit"]),
        (
            &serde_json::json!("RATE_LIMITED"),
            &serde_json::json!("greeter.example.com"),
            &serde_json::json!("10/s")
        )
    );
    let own = of("greeter.v2.GoodbyeReply");
    assert_eq!(
        (&own["message"], &own["requestId"], &own["polite"]),
        (
            &serde_json::json!("come back later"),
            &serde_json::json!("42"),
            &serde_json::json!(true)
        ),
        "decoded with the service's own descriptors: {json}"
    );
    assert_eq!(
        of("shop.v1.Secret")["value"],
        "CAE=",
        "unknown types are base64"
    );
    assert_eq!(details.len(), 4, "{json}");
    // A status without details: none, and no Retry-After.
    let plain = post(gateway.http, "/throttled/Greeter/SayGoodbye", "{}");
    assert_eq!(plain.status, 503, "{}", plain.body);
    assert_eq!(plain.json()["details"], serde_json::json!([]));
    assert!(plain.header("retry-after").is_none());
    runtime.block_on(server.stop()).expect("stop");
}
