//! `/mcp` driven by the official MCP Python SDK (`mcp` on PyPI), a client no one here wrote:
//! initialize, the tool list, a call and a call with bad arguments, and the tool list changing
//! when a service registers. Then the protocol's edges with raw HTTP. (Auth rules on tools are
//! in `auth.rs`, beside the other auth tests.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use micro_testkit::{GatewayProcess, KillOnDrop, PROPAGATION, get, python, raw_http, wait_until};
use serde_json::{Value, json};

/// How long one run of the Python client may take.
const CLIENT: Duration = Duration::from_secs(60);

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn routable(gateway: &GatewayProcess, service: &str) -> bool {
    get(gateway.http, &format!("/{service}")).status == 200
}

fn mcp_post(
    gateway: &GatewayProcess,
    extra_headers: &str,
    body: &str,
) -> micro_testkit::HttpResponse {
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        gateway.http,
        body.len()
    );
    raw_http(gateway.http, request.as_bytes())
}

#[test]
fn the_mcp_sdk_lists_and_calls_the_greeter() {
    let gateway = GatewayProcess::start(&[]);
    let _greeter = gateway.greeter(&[]);
    wait_until(PROPAGATION, "greeter registered", || {
        routable(&gateway, "greeter")
    });
    let url = format!("http://{}/mcp", gateway.http);
    let run = python("mcp_client.py", &[&url, "basic"], CLIENT);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = lines(&run.stdout);
    let tool = "greeter.Greeter.SayHello";
    assert_eq!(out[0]["server"], "micro-gateway");
    assert_eq!(out[0]["protocol"], "2025-11-25");
    // Unary methods only: the streaming ones are not tools.
    assert_eq!(out[0]["tools"], json!([tool]));
    let description = out[0]["descriptions"][tool].as_str().unwrap_or_default();
    assert!(
        description.starts_with("Replies \"Hello <name>\"."),
        "from the proto comment: {description}"
    );
    let schema = &out[0]["schemas"][tool];
    assert_eq!(schema["type"], "object", "{schema}");
    assert_eq!(schema["properties"]["name"]["type"], "string", "{schema}");

    assert_eq!(out[1]["ok"]["isError"], false);
    assert_eq!(
        out[1]["ok"]["structured"],
        json!({"message": "Hello Agent"})
    );
    assert_eq!(out[1]["ok"]["text"], r#"{"message":"Hello Agent"}"#);
    assert_eq!(out[2]["bad"]["isError"], true);
    let text = out[2]["bad"]["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("INVALID_ARGUMENT: ") && text.contains("'nam'"),
        "names the field: {text}"
    );
}

#[test]
fn the_tool_list_changes_when_a_service_registers() {
    let gateway = GatewayProcess::start(&[]);
    let _greeter = gateway.greeter(&[]);
    wait_until(PROPAGATION, "greeter registered", || {
        routable(&gateway, "greeter")
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/mcp_client.py");
    let mut client = KillOnDrop(
        Command::new("python3")
            .args([script, &format!("http://{}/mcp", gateway.http), "changes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the MCP client"),
    );
    let mut stdout = BufReader::new(client.stdout.take().expect("stdout")).lines();
    let ready = stdout.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(
        lines(&ready),
        [json!({"ready": ["greeter.Greeter.SayHello"]})]
    );

    // A new service registers while the client holds its event stream open.
    let _other = gateway.greeter(&["--server-name", "other"]);
    let changed = stdout.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(
        lines(&changed),
        [json!({"changed": ["greeter.Greeter.SayHello", "other.Greeter.SayHello"]})],
        "notifications/tools/list_changed arrived and the new list has the new service"
    );
    assert!(client.wait().expect("the client exits").success());
}

#[test]
fn the_protocol_edges_answer_as_json_rpc_says() {
    let gateway = GatewayProcess::start(&[]);
    let not_json = mcp_post(&gateway, "", "{");
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["error"]["code"], -32700);
    let unknown = mcp_post(
        &gateway,
        "",
        r#"{"jsonrpc":"2.0","id":1,"method":"resources/list"}"#,
    );
    assert_eq!(unknown.status, 200);
    assert_eq!(
        unknown.json(),
        json!({"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"method `resources/list` is not supported; this server offers tools"}})
    );
    let no_tool = mcp_post(
        &gateway,
        "",
        r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"nope.X.Y"}}"#,
    );
    assert_eq!(no_tool.json()["error"]["code"], -32602, "{}", no_tool.body);
    let notification = mcp_post(
        &gateway,
        "",
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!((notification.status, notification.body.as_str()), (202, ""));
    let batch = mcp_post(
        &gateway,
        "",
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
    );
    assert_eq!(batch.json(), json!([{"jsonrpc":"2.0","id":1,"result":{}}]));
    let initialized = mcp_post(
        &gateway,
        "",
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert_eq!(
        initialized.json()["result"]["protocolVersion"],
        "2025-06-18"
    );
    assert!(
        initialized
            .headers
            .iter()
            .any(|(k, v)| k == "mcp-session-id" && v.len() == 32),
        "{:?}",
        initialized.headers
    );
    let old_version = mcp_post(
        &gateway,
        "MCP-Protocol-Version: 1999-01-01\r\n",
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(old_version.status, 400);
    // A web page on another origin may not drive the tools (DNS rebinding).
    let foreign = mcp_post(
        &gateway,
        "Origin: http://evil.example\r\n",
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    let own = mcp_post(
        &gateway,
        &format!("Origin: http://{}\r\n", gateway.http),
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    assert_eq!(own.status, 200, "{}", own.body);
    let put = raw_http(
        gateway.http,
        format!(
            "PUT /mcp HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            gateway.http
        )
        .as_bytes(),
    );
    assert_eq!(put.status, 405);
}
