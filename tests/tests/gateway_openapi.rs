//! The gateway's OpenAPI documents (`/openapi.json`, `/{service}/openapi.json`), built from the
//! reflected descriptors: valid OpenAPI 3.1 (`openapi-spec-validator`), kept by the gateway
//! (`schemathesis` fuzzes a live gateway in front of the greeter and the `everything` echo
//! service with bodies drawn from the document and checks every reply against it), current
//! (a service registered later appears without a restart) and honest about auth.
//!
//! The Python tools are installed by `scripts/setup`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use micro_core::auth::{Access, Account, Resource, Rule, Rules, Token, TokenOptions};
use micro_core::registry::Registry;
use micro_core::{Auth, Error, Result};
use micro_gateway::{Gateway, GatewayAuth, GatewayOptions, RunningGateway};
use micro_memory::MemoryRegistry;
use micro_testkit::{
    Finished, PROPAGATION, get, run_command, start_everything, start_greeter, wait_until,
};
use serde_json::Value;

fn start_gateway(
    runtime: &tokio::runtime::Runtime,
    registry: Arc<dyn Registry>,
    auth: Option<GatewayAuth>,
) -> RunningGateway {
    let options = GatewayOptions::load_from([
        "gateway",
        "--address",
        "127.0.0.1:0",
        "--registry-listen",
        "127.0.0.1:0",
    ])
    .expect("gateway options");
    runtime.block_on(async {
        let mut gateway = Gateway::new(options, registry);
        if let Some(auth) = auth {
            gateway = gateway.with_auth(auth);
        }
        gateway.start().await.expect("start gateway")
    })
}

/// The document at `path`, which must answer 200 with JSON.
fn fetch(gateway: &RunningGateway, path: &str) -> Value {
    let response = get(gateway.http_address(), path);
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{path}"
    );
    response.json()
}

/// Waits until `/openapi.json` describes `path`, and returns that document.
fn document_with(gateway: &RunningGateway, path: &str) -> Value {
    let mut last = Value::Null;
    wait_until(
        PROPAGATION,
        &format!("/openapi.json describes {path}"),
        || {
            last = fetch(gateway, "/openapi.json");
            last["paths"].get(path).is_some()
        },
    );
    last
}

/// A scratch file holding `document`, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, document: &Value) -> Self {
        let path = std::env::temp_dir().join(format!(
            "micro-openapi-{}-{}-{name}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::write(&path, document.to_string()).expect("write the document");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `python3` with `args` in a scratch directory of its own (schemathesis and hypothesis
/// leave their caches in the working directory, removed afterwards); killed past `deadline`.
fn python(args: &[&str], deadline: Duration) -> Finished {
    let scratch = std::env::temp_dir().join(format!(
        "micro-openapi-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let mut command = Command::new("python3");
    command.args(args).current_dir(&scratch);
    // scripts/setup installs openapi-spec-validator and schemathesis.
    let finished = run_command(command, "", deadline);
    let _ = std::fs::remove_dir_all(&scratch);
    finished
}

/// `openapi-spec-validator` on `document`: panics with its report when it finds an error.
fn validate(document: &Value) {
    let file = Scratch::new("openapi.json", document);
    let path = file.0.to_string_lossy().into_owned();
    let output = python(
        &["-m", "openapi_spec_validator", "--schema", "3.1", &path],
        Duration::from_secs(60),
    );
    let report = format!("{}{}", output.stdout, output.stderr);
    assert!(
        output.code == Some(0),
        "openapi-spec-validator refuses the document:\n{report}\n{document:#}"
    );
}

fn operation<'a>(document: &'a Value, path: &str) -> &'a Value {
    &document["paths"][path]["post"]
}

#[test]
fn the_document_is_valid_and_the_gateway_keeps_to_it() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let gateway = start_gateway(&runtime, registry.clone(), None);
    let (greeter, everything) = runtime.block_on(async {
        (
            start_greeter(registry.clone(), "Hello").await,
            start_everything(registry.clone(), "everything").await,
        )
    });
    document_with(&gateway, "/greeter/Greeter/SayHello");
    let document = document_with(&gateway, "/everything/Everything/Echo");

    // What is described, and how.
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["title"], "micro-gateway");
    assert_eq!(document["servers"], serde_json::json!([{"url": "/"}]));
    let say_hello = operation(&document, "/greeter/Greeter/SayHello");
    assert_eq!(say_hello["operationId"], "greeter.Greeter.SayHello");
    assert_eq!(say_hello["summary"], "Replies \"Hello <name>\".");
    let description = say_hello["description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with("Replies \"Hello &lt;name&gt;\"."),
        "CommonMark would take <name> for a tag: {description}"
    );
    assert_eq!(
        say_hello["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/greeter.v1.HelloRequest"
    );
    assert_eq!(
        say_hello["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/greeter.v1.HelloReply.out"
    );
    let stream = operation(&document, "/greeter/Greeter/SayHelloStream");
    assert!(
        stream["responses"]["200"]["content"]["application/x-ndjson"].is_object(),
        "server streaming is NDJSON: {stream}"
    );
    assert!(
        document["paths"].get("/greeter/Greeter/Chat").is_none(),
        "bidi streaming needs a WebSocket"
    );
    let about = document["info"]["description"].as_str().expect("info");
    assert!(
        about.contains("`greeter` greeter.v1.Greeter.Chat"),
        "{about}"
    );
    let schemas = &document["components"]["schemas"];
    let shapes = &schemas["testing.v1.Shapes.out"];
    assert_eq!(shapes["description"], "A message with a bit of everything.");
    assert_eq!(
        shapes["properties"]["bigNumbers"]["items"]["type"],
        "string"
    );
    assert_eq!(
        shapes["properties"]["displayName"]["description"],
        "A plain string with a snake_case name (`displayName` in JSON)."
    );
    assert!(
        schemas["micro.gateway.Error"]["required"].is_array(),
        "{schemas}"
    );
    assert!(
        document.get("security").is_none(),
        "no auth rules, no security"
    );

    // One service's document; an unknown one is 404.
    let one = fetch(&gateway, "/everything/openapi.json");
    assert!(one["paths"].get("/everything/Everything/Ping").is_some());
    assert!(one["paths"].get("/greeter/Greeter/SayHello").is_none());
    assert_eq!(
        get(gateway.http_address(), "/nobody/openapi.json").status,
        404
    );

    validate(&document);
    validate(&one);
    fuzz(&gateway);

    runtime.block_on(async {
        greeter.stop().await.expect("stop greeter");
        everything.stop().await.expect("stop everything");
        gateway.stop().await.expect("stop gateway");
    });
}

/// `schemathesis run` against the live gateway, with the document it serves: no 5xx, every
/// reply valid against its schema, every status documented, and every body drawn from a request
/// schema accepted (the request schemas never promise what the gateway refuses). Streaming
/// operations are left out: their NDJSON replies are no JSON document to check.
fn fuzz(gateway: &RunningGateway) {
    let url = format!("http://{}/openapi.json", gateway.http_address());
    let output = python(
        &[
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "run",
            &url,
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,\
         content_type_conformance,positive_data_acceptance",
            "--exclude-by",
            "/x-micro-streaming == server",
            "--max-examples",
            "100",
            "--seed",
            "20250101",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
            "--generation-database",
            "none",
        ],
        Duration::from_secs(240),
    );
    let (stdout, stderr) = (&output.stdout, &output.stderr);
    let summary = stdout
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Selected") || l.contains("Tested"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!("schemathesis: {summary}");
    assert!(
        output.code == Some(0),
        "schemathesis found the gateway breaking its own document:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("Tested: 6"), "{stdout}");
}

#[test]
fn a_service_registered_later_appears_without_a_restart() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let gateway = start_gateway(&runtime, registry.clone(), None);
    let greeter = runtime.block_on(start_greeter(registry.clone(), "Hello"));
    let before = document_with(&gateway, "/greeter/Greeter/SayHello");
    assert!(before["paths"].get("/later/Everything/Echo").is_none());
    let later = runtime.block_on(start_everything(registry.clone(), "later"));
    let after = document_with(&gateway, "/later/Everything/Echo");
    assert!(after["paths"].get("/greeter/Greeter/SayHello").is_some());
    // And leaves it when it stops.
    runtime.block_on(later.stop()).expect("stop later");
    wait_until(
        PROPAGATION,
        "the stopped service leaves the document",
        || {
            fetch(&gateway, "/openapi.json")["paths"]
                .get("/later/Everything/Echo")
                .is_none()
        },
    );
    runtime.block_on(async {
        greeter.stop().await.expect("stop greeter");
        gateway.stop().await.expect("stop gateway");
    });
}

/// Tokens are never checked here: the document only reads the rules.
struct NoTokens;

#[tonic::async_trait]
impl Auth for NoTokens {
    fn name(&self) -> &str {
        "none-valid"
    }
    async fn token(&self, _: &Account, _: &TokenOptions) -> Result<Token> {
        Err(Error::invalid("account", "issues nothing"))
    }
    async fn refresh(&self, _: &str) -> Result<Token> {
        Err(Error::invalid("token", "refreshes nothing"))
    }
    async fn inspect(&self, _: &str) -> Result<Account> {
        Err(Error::invalid("token", "no token is valid"))
    }
}

#[test]
fn with_auth_rules_the_document_has_bearer_security() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    // Descriptions are public here: with rules on, `/openapi.json` shows only the services the
    // caller may describe (tests/tests/auth.rs checks the refusals with real tokens).
    let describe_public = || {
        Rule::new(
            "describe-public",
            "",
            Resource::new("gateway", "describe", "*"),
            Access::Grant,
            0,
        )
    };
    let rules = Rules::fixed(vec![
        describe_public(),
        Rule::new(
            "hello-public",
            "",
            Resource::new("service", "greeter", "Greeter.SayHello"),
            Access::Grant,
            10,
        ),
        Rule::new(
            "any-account",
            "*",
            Resource::new("service", "*", "*"),
            Access::Grant,
            0,
        ),
    ])
    .expect("rules");
    let auth = GatewayAuth::new(Arc::new(NoTokens), rules.clone(), None);
    let gateway = start_gateway(&runtime, registry.clone(), Some(auth));
    let greeter = runtime.block_on(start_greeter(registry.clone(), "Hello"));
    let document = document_with(&gateway, "/greeter/Greeter/SayHello");
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"],
        serde_json::json!({
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": document["components"]["securitySchemes"]["bearer"]["description"],
        })
    );
    assert_eq!(document["security"], serde_json::json!([{"bearer": []}]));
    assert_eq!(
        operation(&document, "/greeter/Greeter/SayHello")["security"],
        serde_json::json!([]),
        "a public endpoint needs no token"
    );
    assert!(
        operation(&document, "/greeter/Greeter/SayHelloStream")
            .get("security")
            .is_none()
    );
    validate(&document);
    // New rules make a new document.
    rules
        .set(vec![
            describe_public(),
            Rule::new(
                "any-account",
                "*",
                Resource::new("service", "*", "*"),
                Access::Grant,
                0,
            ),
        ])
        .expect("set rules");
    let document = fetch(&gateway, "/openapi.json");
    assert!(
        operation(&document, "/greeter/Greeter/SayHello")
            .get("security")
            .is_none(),
        "no longer public"
    );
    runtime.block_on(async {
        greeter.stop().await.expect("stop greeter");
        gateway.stop().await.expect("stop gateway");
    });
}
