//! Auth through the gateway, real processes: the `auth` example (Login/Refresh, a greeter that
//! needs a scope) behind `micro-gateway --auth jwt --auth-rules`. Login → protected call 200; no
//! token 401; a token without the scope 403; refresh → a new pair that works, the refresh token
//! refused as an access token; the token in a cookie; a rules change taking effect without a
//! restart. Then the gateway alone: a plain greeter with no auth of its own behind it (the
//! 401/403 are the gateway's), and, in process with an Auth that is not JWT, the verified
//! account reaching the service as metadata while a client's own `x-micro-account-*` is dropped.
//! MCP tools follow the same rules as HTTP calls. The gateway's own descriptions (`GET /`,
//! `GET /{service}`) are resources too: 401/403 as for calls, node addresses only under their
//! own grant.

use std::time::Duration;

use micro_testkit::{
    GatewayProcess, HttpResponse, PROPAGATION, Process, SHORT_TTL_ARGS, python, raw_http,
    wait_until,
};

/// The `jwt` plugin's settings shared by the gateway and the `auth` example.
const ENV: [(&str, &str); 3] = micro_testkit::JWT_ENV;

const RULES: &str = r#"[
  {"id": "accounts", "scope": "", "resource": {"kind": "service", "name": "auth", "endpoint": "Accounts.*"}, "access": "grant", "priority": 10},
  {"id": "greet", "scope": "greeter", "resource": {"kind": "service", "name": "auth", "endpoint": "Greeter.SayHello"}, "access": "grant", "priority": 10}
]"#;

fn call(
    http: std::net::SocketAddr,
    path: &str,
    body: &str,
    extra_header: Option<String>,
) -> HttpResponse {
    let extra = extra_header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(http, request.as_bytes())
}

fn login(http: std::net::SocketAddr, user: &str, password: &str) -> HttpResponse {
    call(
        http,
        "/auth/Accounts/Login",
        &format!(r#"{{"username":"{user}","password":"{password}"}}"#),
        None,
    )
}

/// The `auth` example (Login, Refresh and a greeter), registered with `gateway`'s registry and
/// reading `rules`, once it listens.
fn start_auth_example(gateway: &GatewayProcess, rules: &str) -> Process {
    let registry = gateway.registry.to_string();
    let mut args = vec!["--registry-address", registry.as_str(), "--rules", rules];
    args.extend_from_slice(&SHORT_TTL_ARGS);
    let mut service = Process::start("auth", &args, &ENV, None);
    service.listening_address();
    service
}

#[test]
fn login_scopes_refresh_cookie_and_live_rules_through_the_gateway() {
    let dir = std::env::temp_dir().join(format!("micro-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = dir.join("rules.json");
    std::fs::write(&rules, RULES).expect("rules");
    let rules_path = rules.to_str().expect("utf-8 path");

    let gateway = GatewayProcess::start_with_env(
        &[
            "--auth",
            "jwt",
            "--auth-rules",
            rules_path,
            "--auth-cookie",
            "token",
        ],
        &ENV,
    );
    let http = gateway.http;
    let _service = start_auth_example(&gateway, rules_path);
    wait_until(PROPAGATION, "the auth service is routable", || {
        login(http, "alice", "wonderland").status == 200
    });

    let alice = login(http, "alice", "wonderland").json();
    let (access, refresh) = (
        alice["accessToken"]
            .as_str()
            .expect("accessToken")
            .to_string(),
        alice["refreshToken"]
            .as_str()
            .expect("refreshToken")
            .to_string(),
    );
    let bearer = |token: &str| Some(format!("Authorization: Bearer {token}"));
    let hello = r#"{"name":"alice"}"#;

    let ok = call(http, "/auth/Greeter/SayHello", hello, bearer(&access));
    assert_eq!(
        (ok.status, ok.json()["message"].clone()),
        (200, "Hello alice".into()),
        "{}",
        ok.body
    );

    let none = call(http, "/auth/Greeter/SayHello", hello, None);
    assert_eq!(
        (none.status, none.json()["code"].clone()),
        (401, 16.into()),
        "{}",
        none.body
    );

    let wrong_password = login(http, "alice", "nope");
    assert_eq!(
        wrong_password.status, 401,
        "the service's UNAUTHENTICATED is 401: {}",
        wrong_password.body
    );

    let bob = login(http, "bob", "builder").json();
    let forbidden = call(
        http,
        "/auth/Greeter/SayHello",
        hello,
        bearer(bob["accessToken"].as_str().expect("token")),
    );
    assert_eq!(
        (forbidden.status, forbidden.json()["code"].clone()),
        (403, 7.into()),
        "{}",
        forbidden.body
    );

    let refused = call(http, "/auth/Greeter/SayHello", hello, bearer(&refresh));
    assert_eq!(
        refused.status, 401,
        "a refresh token is no access token: {}",
        refused.body
    );
    let garbage = call(http, "/auth/Greeter/SayHello", hello, bearer("not.a.token"));
    assert_eq!(garbage.status, 401);

    let renewed = call(
        http,
        "/auth/Accounts/Refresh",
        &format!(r#"{{"refreshToken":"{refresh}"}}"#),
        None,
    );
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    let new_access = renewed.json()["accessToken"]
        .as_str()
        .expect("new access token")
        .to_string();
    assert_eq!(
        call(http, "/auth/Greeter/SayHello", hello, bearer(&new_access)).status,
        200,
        "the new pair works"
    );

    let by_cookie = call(
        http,
        "/auth/Greeter/SayHello",
        hello,
        Some(format!("Cookie: theme=dark; token={access}")),
    );
    assert_eq!(
        by_cookie.status, 200,
        "the token from the cookie: {}",
        by_cookie.body
    );

    // Withdraw the greeter grant: refused within the poll interval, no restart.
    std::fs::write(
        &rules,
        RULES.replace("\"scope\": \"greeter\"", "\"scope\": \"admin\""),
    )
    .expect("rewrite rules");
    wait_until(
        Duration::from_secs(5),
        "the rules change takes effect",
        || call(http, "/auth/Greeter/SayHello", hello, bearer(&access)).status == 403,
    );
    assert!(!gateway.process.stderr().contains("panicked"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// The gateway's rules for a plain greeter: logins public (on the `auth` example, which only
/// issues the tokens here), `greeter`'s SayHello needs the scope `greeter`.
const GATEWAY_RULES: &str = r#"[
  {"id": "accounts", "scope": "", "access": "grant",
   "resource": {"kind": "service", "name": "auth", "endpoint": "Accounts.*"}},
  {"id": "greet", "scope": "greeter", "access": "grant",
   "resource": {"kind": "service", "name": "greeter", "endpoint": "Greeter.SayHello"}}
]"#;

#[test]
fn the_gateway_alone_refuses_for_a_service_without_auth() {
    let dir = std::env::temp_dir().join(format!("micro-auth-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = dir.join("rules.json");
    std::fs::write(&rules, GATEWAY_RULES).expect("rules");
    let rules_path = rules.to_str().expect("utf-8 path");

    let gateway =
        GatewayProcess::start_with_env(&["--auth", "jwt", "--auth-rules", rules_path], &ENV);
    let http = gateway.http;
    // The token issuer, and a greeter with no AuthLayer, no rules and no keys.
    let _issuer = start_auth_example(&gateway, rules_path);
    let mut greeter = gateway.greeter(&[]);
    let greeter_address = greeter.listening_address();

    // Called directly, the greeter answers anyone: it checks nothing itself.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let direct = runtime.block_on(async {
        use micro_testkit::greeter::v1::HelloRequest;
        use micro_testkit::greeter::v1::greeter_client::GreeterClient;
        let mut client = GreeterClient::connect(format!("http://{greeter_address}"))
            .await
            .expect("connect to the greeter");
        client
            .say_hello(HelloRequest {
                name: "anyone".into(),
            })
            .await
            .map(|r| r.into_inner().message)
    });
    assert_eq!(direct.expect("direct call"), "Hello anyone");

    let hello = r#"{"name":"alice"}"#;
    wait_until(PROPAGATION, "both services are routable", || {
        login(http, "alice", "wonderland").status == 200
            && call(http, "/greeter/Greeter/SayHello", hello, None).status == 401
    });
    let token = |user: &str, password: &str| {
        let reply = login(http, user, password);
        reply.json()["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("login of {user}: {} {}", reply.status, reply.body))
            .to_string()
    };
    let (alice, bob) = (token("alice", "wonderland"), token("bob", "builder"));
    let bearer = |token: &str| Some(format!("Authorization: Bearer {token}"));

    let none = call(http, "/greeter/Greeter/SayHello", hello, None);
    assert_eq!(
        (none.status, none.json()["code"].clone()),
        (401, 16.into()),
        "{}",
        none.body
    );
    assert!(
        none.json()["message"].as_str().is_some_and(
            |m| m.contains("no access token") && m.contains("service:greeter:Greeter.SayHello")
        ),
        "the reason and the resource: {}",
        none.body
    );
    let forged = call(
        http,
        "/greeter/Greeter/SayHello",
        hello,
        bearer(&format!("{alice}x")),
    );
    assert_eq!(forged.status, 401, "{}", forged.body);
    let forbidden = call(http, "/greeter/Greeter/SayHello", hello, bearer(&bob));
    assert_eq!(
        (forbidden.status, forbidden.json()["code"].clone()),
        (403, 7.into()),
        "{}",
        forbidden.body
    );
    assert!(
        forbidden.body.contains("bob"),
        "names the account: {}",
        forbidden.body
    );
    let ok = call(http, "/greeter/Greeter/SayHello", hello, bearer(&alice));
    assert_eq!(
        (ok.status, ok.json()["message"].clone()),
        (200, "Hello alice".into()),
        "{}",
        ok.body
    );

    // The same rules hold for MCP tools, with the bearer token of the MCP request (the official
    // MCP Python SDK as the client).
    let url = format!("http://{http}/mcp");
    let tool_call = |token: Option<&str>| {
        let mut args = vec![url.as_str(), "call"];
        args.extend(token);
        let run = python("mcp_client.py", &args, Duration::from_secs(60));
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let line: serde_json::Value =
            serde_json::from_str(run.stdout.trim()).expect("one JSON line");
        line["call"].clone()
    };
    let refused = tool_call(None);
    assert_eq!(refused["isError"], true, "{refused}");
    assert!(
        refused["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("UNAUTHENTICATED: ")),
        "{refused}"
    );
    let forbidden = tool_call(Some(&bob));
    assert!(
        forbidden["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("PERMISSION_DENIED: ")),
        "{forbidden}"
    );
    let allowed = tool_call(Some(&alice));
    assert_eq!(
        (
            allowed["isError"].clone(),
            allowed["structured"]["message"].clone()
        ),
        (false.into(), "Hello Agent".into()),
        "{allowed}"
    );

    assert!(!gateway.process.stderr().contains("panicked"));
    drop(greeter);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Rules for what the gateway tells about services: logins public, descriptions for any
/// account, node addresses for accounts with the scope `greeter` (alice, not bob).
const DESCRIBE_RULES: &str = r#"[
  {"id": "accounts", "scope": "", "access": "grant",
   "resource": {"kind": "service", "name": "auth", "endpoint": "Accounts.*"}},
  {"id": "describe", "scope": "*", "access": "grant",
   "resource": {"kind": "gateway", "name": "describe", "endpoint": "*"}},
  {"id": "nodes", "scope": "greeter", "access": "grant",
   "resource": {"kind": "gateway", "name": "nodes", "endpoint": "*"}}
]"#;

/// [`DESCRIBE_RULES`] with `from` replaced by `to` (which must be there).
fn describe_rules_with(from: &str, to: &str) -> String {
    assert!(
        DESCRIBE_RULES.contains(from),
        "{from:?} is not in the rules"
    );
    DESCRIBE_RULES.replace(from, to)
}

/// `GET path`, with one more header line when given.
fn get_with(http: std::net::SocketAddr, path: &str, header: Option<&str>) -> HttpResponse {
    let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n");
    raw_http(http, request.as_bytes())
}

/// The node addresses of every version in a `GET /{service}` body.
fn addresses(body: &serde_json::Value) -> Vec<String> {
    body["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["nodes"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n["address"].as_str().map(String::from))
        .collect()
}

#[test]
fn describing_services_follows_the_rules_and_addresses_need_their_own_grant() {
    let dir = std::env::temp_dir().join(format!("micro-auth-describe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = dir.join("rules.json");
    std::fs::write(&rules, DESCRIBE_RULES).expect("rules");
    let rules_path = rules.to_str().expect("utf-8 path");

    let gateway =
        GatewayProcess::start_with_env(&["--auth", "jwt", "--auth-rules", rules_path], &ENV);
    let http = gateway.http;
    let _issuer = start_auth_example(&gateway, rules_path);
    let mut greeter = gateway.greeter(&[]);
    let greeter_address = greeter.listening_address();
    wait_until(PROPAGATION, "the auth service is routable", || {
        login(http, "alice", "wonderland").status == 200
    });
    let token = |user: &str, password: &str| {
        let reply = login(http, user, password);
        let token = reply.json()["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("login of {user}: {} {}", reply.status, reply.body))
            .to_string();
        format!("Authorization: Bearer {token}")
    };
    let (alice, bob) = (token("alice", "wonderland"), token("bob", "builder"));
    wait_until(PROPAGATION, "alice sees the greeter's node", || {
        let reply = get_with(http, "/greeter", Some(&alice));
        reply.status == 200 && addresses(&reply.json()).contains(&greeter_address)
    });

    // A stranger learns nothing: not the list, not a description, not whether a service exists.
    for path in ["/", "/greeter", "/no-such-service"] {
        let reply = get_with(http, path, None);
        assert_eq!(
            (reply.status, reply.json()["code"].clone()),
            (401, 16.into()),
            "GET {path} without a token: {}",
            reply.body
        );
        let resource = format!("gateway:describe:{path}");
        assert!(
            reply.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("no access token") && m.contains(&resource)),
            "the reason and {resource}: {}",
            reply.body
        );
        assert!(
            !reply.body.contains(&greeter_address) && !reply.body.contains("greeter\""),
            "GET {path} without a token shows nothing of the greeter: {}",
            reply.body
        );
        let forged = get_with(http, path, Some(&format!("{alice}x")));
        assert_eq!(forged.status, 401, "GET {path}, forged: {}", forged.body);
    }

    // bob may describe but not see where the nodes are.
    let list = get_with(http, "/", Some(&bob));
    assert_eq!(list.status, 200, "{}", list.body);
    let names = list.json()["services"].clone();
    assert!(
        names
            .as_array()
            .is_some_and(|n| n.contains(&"greeter".into())),
        "{}",
        list.body
    );
    let described = get_with(http, "/greeter", Some(&bob));
    assert_eq!(described.status, 200, "{}", described.body);
    let body = described.json();
    assert_eq!(body["name"], "greeter", "{body}");
    let versions = body["services"].as_array().expect("services");
    assert!(!versions.is_empty(), "{body}");
    for version in versions {
        assert!(
            version["endpoints"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["name"] == "Greeter.SayHello")),
            "the endpoints are there: {version}"
        );
        assert!(version.get("nodes").is_none(), "no nodes: {version}");
    }
    assert!(
        !described.body.contains(&greeter_address),
        "no address anywhere: {}",
        described.body
    );

    // alice holds the scope the nodes rule names: the same description, with the addresses.
    let full = get_with(http, "/greeter", Some(&alice));
    assert_eq!(full.status, 200, "{}", full.body);
    assert_eq!(
        addresses(&full.json()),
        vec![greeter_address.clone()],
        "{}",
        full.body
    );

    // Without a grant on describing, an account is refused as for an endpoint: 403.
    std::fs::write(
        &rules,
        describe_rules_with(
            r#""id": "describe", "scope": "*""#,
            r#""id": "describe", "scope": "greeter""#,
        ),
    )
    .expect("rewrite rules");
    wait_until(Duration::from_secs(5), "bob is refused", || {
        get_with(http, "/greeter", Some(&bob)).status == 403
    });
    for path in ["/", "/greeter"] {
        let refused = get_with(http, path, Some(&bob));
        assert_eq!(
            (refused.status, refused.json()["code"].clone()),
            (403, 7.into()),
            "GET {path} as bob: {}",
            refused.body
        );
        assert!(
            refused.body.contains("bob") && !refused.body.contains(&greeter_address),
            "names the account, shows no address: {}",
            refused.body
        );
    }
    assert_eq!(get_with(http, "/greeter", Some(&alice)).status, 200);

    // A rule names one path: the greeter's description made public leaves the list closed,
    // and shows no node to a stranger.
    std::fs::write(
        &rules,
        describe_rules_with(
            r#""id": "describe", "scope": "*", "access": "grant",
   "resource": {"kind": "gateway", "name": "describe", "endpoint": "*"}"#,
            r#""id": "describe", "scope": "", "access": "grant",
   "resource": {"kind": "gateway", "name": "describe", "endpoint": "/greeter"}"#,
        ),
    )
    .expect("rewrite rules");
    wait_until(
        Duration::from_secs(5),
        "the greeter's description is public",
        || get_with(http, "/greeter", None).status == 200,
    );
    let public = get_with(http, "/greeter", None);
    assert!(
        addresses(&public.json()).is_empty() && !public.body.contains(&greeter_address),
        "{}",
        public.body
    );
    assert_eq!(get_with(http, "/", None).status, 401);
    assert_eq!(
        get_with(http, "/", Some(&alice)).status,
        403,
        "only /greeter is granted"
    );
    assert_eq!(
        addresses(&get_with(http, "/greeter", Some(&alice)).json()),
        vec![greeter_address.clone()],
        "alice still sees the nodes"
    );

    assert!(!gateway.process.stderr().contains("panicked"));
    drop(greeter);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// The account reaches the service as metadata, whatever Auth plugin the gateway runs: here
/// one that is not JWT at all (a fixed table of opaque tokens).
mod account_metadata {
    use std::sync::Arc;

    use micro_core::auth::{Account, Rules, Token, TokenOptions};
    use micro_core::registry::Registry;
    use micro_core::{Auth, Error, Result, Server};
    use micro_gateway::{Gateway, GatewayAuth, GatewayOptions};
    use micro_memory::MemoryRegistry;
    use micro_testkit::greeter::v1::greeter_server::{Greeter, GreeterServer};
    use micro_testkit::greeter::v1::{HelloReply, HelloRequest};
    use micro_testkit::{
        NoStream, PROPAGATION, greeter, no_stream, post, raw_http, test_options, wait_until,
    };
    use tonic::{Request, Response, Status};

    /// Opaque tokens: `alice-token` is alice with scope `greeter`, `bob-token` bob without.
    struct TableAuth;

    #[tonic::async_trait]
    impl Auth for TableAuth {
        fn name(&self) -> &str {
            "table"
        }
        async fn token(&self, _: &Account, _: &TokenOptions) -> Result<Token> {
            Err(Error::invalid("account", "the table issues nothing"))
        }
        async fn refresh(&self, _: &str) -> Result<Token> {
            Err(Error::invalid("token", "the table refreshes nothing"))
        }
        async fn inspect(&self, token: &str) -> Result<Account> {
            let (id, scopes) = match token {
                "alice-token" => ("alice", vec!["greeter".to_string(), "admin".to_string()]),
                "bob-token" => ("bob", vec![]),
                _ => return Err(Error::invalid("token", "not in the table")),
            };
            Ok(Account {
                id: id.into(),
                scopes,
                ..Default::default()
            })
        }
    }

    /// Replies with the account metadata it was called with.
    struct Echo;

    #[tonic::async_trait]
    impl Greeter for Echo {
        type SayHelloStreamStream = NoStream;
        type ChatStream = NoStream;

        async fn say_hello_stream(
            &self,
            _: Request<micro_testkit::greeter::v1::StreamRequest>,
        ) -> std::result::Result<Response<NoStream>, Status> {
            no_stream()
        }

        async fn chat(
            &self,
            _: Request<tonic::Streaming<HelloRequest>>,
        ) -> std::result::Result<Response<NoStream>, Status> {
            no_stream()
        }

        async fn say_hello(
            &self,
            request: Request<HelloRequest>,
        ) -> std::result::Result<Response<HelloReply>, Status> {
            let get = |key: &str| {
                request
                    .metadata()
                    .get(key)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string()
            };
            Ok(Response::new(HelloReply {
                message: format!(
                    "id={} scopes={} authorization={}",
                    get("x-micro-account-id"),
                    get("x-micro-account-scopes"),
                    get("authorization")
                ),
            }))
        }
    }

    fn call(http: std::net::SocketAddr, headers: &str) -> micro_testkit::HttpResponse {
        let body = r#"{"name":"x"}"#;
        let request = format!(
            "POST /greeter/Greeter/SayHello HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        raw_http(http, request.as_bytes())
    }

    #[test]
    fn the_verified_account_reaches_the_service_and_spoofs_do_not() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let (gateway, server) = runtime.block_on(async {
            let file = std::env::temp_dir()
                .join(format!("micro-auth-metadata-{}.json", std::process::id()));
            std::fs::write(&file, super::GATEWAY_RULES).expect("rules");
            let rules = Rules::from_file(&file).expect("rules file");
            std::fs::remove_file(&file).expect("cleanup");
            let options = GatewayOptions::load_from([
                "gateway",
                "--address",
                "127.0.0.1:0",
                "--registry-listen",
                "127.0.0.1:0",
            ])
            .expect("gateway options");
            let gateway = Gateway::new(options, registry.clone())
                .with_auth(GatewayAuth::new(
                    Arc::new(TableAuth),
                    rules,
                    Some("session".into()),
                ))
                .start()
                .await
                .expect("start gateway");
            let server = Server::new(test_options("greeter"), registry.clone())
                .descriptors(greeter::DESCRIPTORS)
                .expect("descriptors")
                .add_service(GreeterServer::new(Echo))
                .start()
                .await
                .expect("start the echo greeter");
            (gateway, server)
        });
        let http = gateway.http_address();
        wait_until(PROPAGATION, "the greeter is routable", || {
            post(http, "/greeter/Greeter/SayHello", "{}").status == 401
        });

        let message = |headers: &str| {
            let response = call(http, headers);
            assert_eq!(response.status, 200, "{headers:?}: {}", response.body);
            response.json()["message"]
                .as_str()
                .expect("message")
                .to_string()
        };
        assert_eq!(
            message("Authorization: Bearer alice-token\r\n"),
            "id=alice scopes=greeter,admin authorization=Bearer alice-token"
        );
        assert_eq!(
            message(
                "Authorization: Bearer alice-token\r\nX-Micro-Account-Id: root\r\nX-Micro-Account-Scopes: everything\r\n"
            ),
            "id=alice scopes=greeter,admin authorization=Bearer alice-token",
            "a client's own account headers are dropped"
        );
        assert_eq!(
            message("Cookie: theme=dark; session=alice-token\r\n"),
            "id=alice scopes=greeter,admin authorization=Bearer alice-token",
            "a cookie's token goes on as authorization, for the service to verify again"
        );
        let spoofed = call(http, "X-Micro-Account-Id: alice\r\n");
        assert_eq!(
            spoofed.status, 401,
            "no token, only a claim: {}",
            spoofed.body
        );
        let bob = call(http, "Authorization: Bearer bob-token\r\n");
        assert_eq!(bob.status, 403, "{}", bob.body);
        let unknown = call(http, "Authorization: Bearer mallory-token\r\n");
        assert_eq!(unknown.status, 401, "{}", unknown.body);
        assert!(
            unknown.body.contains("not in the table"),
            "the plugin's reason: {}",
            unknown.body
        );

        runtime.block_on(async {
            server.stop().await.expect("stop greeter");
            gateway.stop().await.expect("stop gateway");
        });
    }
}

/// Rules for the listings: logins public, the greeter's description public, everything
/// described for accounts with the scope `greeter` (alice, not bob), and alice may call it.
const LISTING_RULES: &str = r#"[
  {"id": "accounts", "scope": "", "access": "grant",
   "resource": {"kind": "service", "name": "auth", "endpoint": "Accounts.*"}},
  {"id": "greet", "scope": "greeter", "access": "grant",
   "resource": {"kind": "service", "name": "greeter", "endpoint": "Greeter.SayHello"}},
  {"id": "describe-greeter", "scope": "", "access": "grant",
   "resource": {"kind": "gateway", "name": "describe", "endpoint": "/greeter"}},
  {"id": "describe-all", "scope": "greeter", "access": "grant",
   "resource": {"kind": "gateway", "name": "describe", "endpoint": "*"}}
]"#;

/// The service tags of an OpenAPI document, and whether anything in it names the `auth`
/// service: a tag, a path, a websocket-only method, or a schema only its paths reach.
fn openapi_services(document: &serde_json::Value) -> (Vec<String>, bool) {
    let tags: Vec<String> = document["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect();
    let paths = document["paths"].as_object().cloned().unwrap_or_default();
    let schemas = document["components"]["schemas"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let about = document["info"]["description"].as_str().unwrap_or_default();
    let names_auth = tags.iter().any(|t| t == "auth")
        || paths.keys().any(|p| p.starts_with("/auth/"))
        || schemas.keys().any(|s| s.starts_with("auth.v1."))
        || about.contains("`auth`");
    (tags, names_auth)
}

#[test]
fn listings_show_only_the_services_the_caller_may_describe() {
    let dir = std::env::temp_dir().join(format!("micro-auth-listings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = dir.join("rules.json");
    std::fs::write(&rules, LISTING_RULES).expect("rules");
    let rules_path = rules.to_str().expect("utf-8 path");

    let gateway = GatewayProcess::start_with_env(
        &[
            "--auth",
            "jwt",
            "--auth-rules",
            rules_path,
            "--auth-cookie",
            "token",
        ],
        &ENV,
    );
    let http = gateway.http;
    let _issuer = start_auth_example(&gateway, rules_path);
    let greeter = gateway.greeter(&[]);
    wait_until(PROPAGATION, "the auth service is routable", || {
        login(http, "alice", "wonderland").status == 200
    });
    let token = |user: &str, password: &str| {
        let reply = login(http, user, password);
        reply.json()["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("login of {user}: {} {}", reply.status, reply.body))
            .to_string()
    };
    let (alice, bob) = (token("alice", "wonderland"), token("bob", "builder"));
    let bearer = |token: &str| format!("Authorization: Bearer {token}");
    let openapi = |header: Option<&str>| {
        let reply = get_with(http, "/openapi.json", header);
        assert_eq!(reply.status, 200, "/openapi.json: {}", reply.body);
        reply.json()
    };
    wait_until(PROPAGATION, "alice's document has both services", || {
        openapi(Some(&bearer(&alice)))["tags"]
            .as_array()
            .is_some_and(|t| t.len() == 2)
    });

    // alice may describe everything: both services, with their paths and schemas.
    let full = openapi(Some(&bearer(&alice)));
    let (tags, names_auth) = openapi_services(&full);
    assert_eq!(tags, ["auth", "greeter"], "{full}");
    assert!(names_auth, "the auth service is all there: {full}");
    assert!(
        full["paths"].get("/auth/Accounts/Login").is_some(),
        "{full}"
    );
    assert!(full["paths"].get("/greeter/Greeter/SayHello").is_some());
    // The document the browser's /docs page loads: same origin, so the cookie goes with it.
    let with_cookie = openapi(Some(&format!("Cookie: token={alice}")));
    assert_eq!(
        with_cookie, full,
        "the cookie's account sees what its bearer sees"
    );
    assert_eq!(
        get_with(http, "/docs", None).status,
        200,
        "the page is static"
    );

    // Anyone else may describe only the greeter: nothing of the auth service is in theirs, not
    // even the schemas only its paths reach. A refused token counts as none.
    let forged = bearer(&format!("{alice}x"));
    for (who, header) in [
        ("a stranger", None),
        ("bob", Some(bearer(&bob))),
        ("a forged token", Some(forged.clone())),
    ] {
        let document = openapi(header.as_deref());
        let (tags, names_auth) = openapi_services(&document);
        assert_eq!(tags, ["greeter"], "{who}: {document}");
        assert!(!names_auth, "{who} learns nothing of auth: {document}");
        let say_hello = &document["paths"]["/greeter/Greeter/SayHello"]["post"];
        let request = say_hello["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
            .unwrap_or_else(|| panic!("{who}: SayHello's request is a $ref: {document}"));
        assert!(
            document["components"]["schemas"].get(request).is_some(),
            "{who}: the schemas the greeter's paths reach stay: {document}"
        );
        assert!(
            document["info"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("`greeter` greeter.v1.Greeter.Chat")),
            "{who}: the greeter's websocket-only method is still named: {document}"
        );
    }

    // A service's own document is refused exactly as its description is.
    for path in ["/auth/openapi.json", "/no-such-service/openapi.json"] {
        let resource = format!(
            "gateway:describe:/{}",
            path.split('/').nth(1).unwrap_or_default()
        );
        for (header, status, code) in [
            (None, 401, 16),
            (Some(forged.clone()), 401, 16),
            (Some(bearer(&bob)), 403, 7),
        ] {
            let reply = get_with(http, path, header.as_deref());
            assert_eq!(
                (reply.status, reply.json()["code"].clone()),
                (status, code.into()),
                "GET {path} with {header:?}: {}",
                reply.body
            );
            assert!(
                reply.json()["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&resource)),
                "names {resource}: {}",
                reply.body
            );
            assert!(!reply.body.contains("Accounts"), "{}", reply.body);
        }
    }
    let own = get_with(http, "/auth/openapi.json", Some(&bearer(&alice)));
    assert_eq!(own.status, 200, "{}", own.body);
    assert!(own.json()["paths"].get("/auth/Accounts/Login").is_some());
    assert_eq!(
        get_with(http, "/greeter/openapi.json", None).status,
        200,
        "the greeter's description is public"
    );

    // MCP `tools/list`, with the official MCP Python SDK: the same services, per caller.
    let url = format!("http://{http}/mcp");
    let tools = |token: Option<&str>| {
        let mut args = vec![url.as_str(), "basic"];
        args.extend(token);
        let run = python("mcp_client.py", &args, Duration::from_secs(60));
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let first: serde_json::Value = run
            .stdout
            .lines()
            .next()
            .and_then(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| panic!("a JSON line first: {}", run.stdout));
        first["tools"].clone()
    };
    let mine = tools(Some(&alice));
    for tool in [
        "auth.Accounts.Login",
        "auth.Greeter.SayHello",
        "greeter.Greeter.SayHello",
    ] {
        assert!(
            mine.as_array().is_some_and(|t| t.contains(&tool.into())),
            "alice is offered {tool}: {mine}"
        );
    }
    for (who, token) in [("a stranger", None), ("bob", Some(bob.as_str()))] {
        assert_eq!(
            tools(token),
            serde_json::json!(["greeter.Greeter.SayHello"]),
            "{who} is offered the greeter's tools only"
        );
    }

    // Rules change without a restart: the greeter's description closed to strangers.
    std::fs::write(
        &rules,
        LISTING_RULES.replace(
            r#""id": "describe-greeter", "scope": """#,
            r#""id": "describe-greeter", "scope": "nobody""#,
        ),
    )
    .expect("rewrite rules");
    wait_until(
        Duration::from_secs(5),
        "the greeter's description closes",
        || get_with(http, "/greeter/openapi.json", None).status == 401,
    );
    let (tags, _) = openapi_services(&openapi(None));
    assert!(tags.is_empty(), "a stranger now sees no service: {tags:?}");
    assert_eq!(tools(None), serde_json::json!([]));
    assert_eq!(openapi_services(&openapi(Some(&bearer(&alice)))).0.len(), 2);

    assert!(!gateway.process.stderr().contains("panicked"));
    drop(greeter);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
