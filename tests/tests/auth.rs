//! Auth through the gateway, real processes: the `auth` example (Login/Refresh, a greeter that
//! needs a scope) behind `micro-gateway --auth-rules`. Login → protected call 200; no token 401;
//! a token without the scope 403; refresh → a new pair that works, the refresh token refused as
//! an access token; the token in a cookie; a rules change taking effect without a restart.

use std::time::Duration;

use micro_tests::{HttpResponse, Process, address_after, raw_http, wait_until};

const ENV: [(&str, &str); 3] = [
    ("MICRO_AUTH_JWT_ISSUER", "micro-test"),
    ("MICRO_AUTH_JWT_AUDIENCE", "micro"),
    (
        "MICRO_AUTH_JWT_SECRET",
        "a-test-secret-of-at-least-32-bytes!!",
    ),
];

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

#[test]
fn login_scopes_refresh_cookie_and_live_rules_through_the_gateway() {
    let dir = std::env::temp_dir().join(format!("micro-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = dir.join("rules.json");
    std::fs::write(&rules, RULES).expect("rules");
    let rules_path = rules.to_str().expect("utf-8 path");

    let mut gateway = Process::start(
        "micro-gateway",
        &[
            "--address",
            "127.0.0.1:0",
            "--registry-listen",
            "127.0.0.1:0",
            "--auth-rules",
            rules_path,
            "--auth-cookie",
            "token",
        ],
        &ENV,
        None,
    );
    let line = gateway.line_containing("listening on", Duration::from_secs(30));
    let (http, registry) = (
        address_after(&line, "http://"),
        address_after(&line, "served on ").to_string(),
    );
    let mut service = Process::start(
        "auth",
        &[
            "--registry-address",
            &registry,
            "--rules",
            rules_path,
            "--register-ttl",
            "2s",
            "--register-interval",
            "500ms",
        ],
        &ENV,
        None,
    );
    service.line_containing("listening on", Duration::from_secs(30));
    wait_until(
        Duration::from_secs(5),
        "the auth service is routable",
        || login(http, "alice", "wonderland").status == 200,
    );

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
    assert!(!gateway.stderr().contains("panicked"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
