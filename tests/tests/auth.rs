//! Auth through the gateway, real processes: the `auth` example (Login/Refresh, a greeter that
//! needs a scope) behind `micro-gateway --auth jwt --auth-rules`. Login → protected call 200; no
//! token 401; a token without the scope 403; refresh → a new pair that works, the refresh token
//! refused as an access token; the token in a cookie; a rules change taking effect without a
//! restart. Then the gateway alone: a plain greeter with no auth of its own behind it (the
//! 401/403 are the gateway's), and, in process with an Auth that is not JWT, the verified
//! account reaching the service as metadata while a client's own `x-micro-account-*` is dropped.
//! MCP tools follow the same rules as HTTP calls.

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
