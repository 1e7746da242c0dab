//! Sessions on Redis through the gateway, real processes: `micro-gateway` and the `auth` example
//! both run `--auth jwt --auth-sessions --store redis` on the Redis at 127.0.0.1:6379, in a
//! table of this run's own; a plain greeter with no auth of its own sits behind the same
//! gateway. Log in twice: the first access token is refused (401), the second works; refresh:
//! the previous pair is refused, its refresh token spent; log out: refused, and a logout needs
//! a token. The service refuses at once (it issued or revoked); the gateway in front of the
//! plain greeter refuses within the session check's cache time. The session records are
//! deleted by the logouts at the end and expire with the refresh lifetime (5 minutes) anyway.
//!
//! Needs Redis on 127.0.0.1:6379 and the `redis` Store installed in both binaries.

use std::net::SocketAddr;
use std::time::Duration;

use micro_core::auth::DEFAULT_CHECK_CACHE;
use micro_testkit::{
    GatewayProcess, HttpResponse, PROPAGATION, Process, SHORT_TTL_ARGS, SLACK, raw_http, wait_until,
};

const REDIS: &str = "redis://127.0.0.1:6379";

const ENV: [(&str, &str); 4] = [
    ("MICRO_AUTH_JWT_ISSUER", "micro-sessions-test"),
    ("MICRO_AUTH_JWT_AUDIENCE", "micro"),
    (
        "MICRO_AUTH_JWT_SECRET",
        "a-sessions-test-secret-of-at-least-32-bytes",
    ),
    // The session records live as long as the refresh tokens: nothing outlives the test long.
    ("MICRO_AUTH_JWT_REFRESH_TTL", "5m"),
];

/// Login and Refresh public, Logout for any account; SayHello of the `auth` example and of the
/// plain `greeter` need the scope `greeter`.
const RULES: &str = r#"[
  {"id": "login", "scope": "", "resource": {"kind": "service", "name": "auth", "endpoint": "Accounts.Login"}, "access": "grant"},
  {"id": "refresh", "scope": "", "resource": {"kind": "service", "name": "auth", "endpoint": "Accounts.Refresh"}, "access": "grant"},
  {"id": "logout", "scope": "*", "resource": {"kind": "service", "name": "auth", "endpoint": "Accounts.Logout"}, "access": "grant"},
  {"id": "auth-greet", "scope": "greeter", "resource": {"kind": "service", "name": "auth", "endpoint": "Greeter.SayHello"}, "access": "grant"},
  {"id": "greet", "scope": "greeter", "resource": {"kind": "service", "name": "greeter", "endpoint": "Greeter.SayHello"}, "access": "grant"}
]"#;

fn call(http: SocketAddr, path: &str, body: &str, token: Option<&str>) -> HttpResponse {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(http, request.as_bytes())
}

/// An access and a refresh token.
#[derive(Debug, Clone)]
struct Pair {
    access: String,
    refresh: String,
}

fn pair(response: &HttpResponse, what: &str) -> Pair {
    assert_eq!(response.status, 200, "{what}: {}", response.body);
    let json = response.json();
    let field = |name: &str| {
        json[name]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no {name} in {}", response.body))
            .to_string()
    };
    Pair {
        access: field("accessToken"),
        refresh: field("refreshToken"),
    }
}

fn login(http: SocketAddr) -> Pair {
    let response = call(
        http,
        "/auth/Accounts/Login",
        r#"{"username":"alice","password":"wonderland"}"#,
        None,
    );
    pair(&response, "login")
}

fn refresh(http: SocketAddr, refresh_token: &str) -> HttpResponse {
    call(
        http,
        "/auth/Accounts/Refresh",
        &format!(r#"{{"refreshToken":"{refresh_token}"}}"#),
        None,
    )
}

const HELLO: &str = r#"{"name":"alice"}"#;

/// SayHello of the `auth` example (its AuthLayer checks too) with `token`.
fn service_hello(http: SocketAddr, token: &str) -> HttpResponse {
    call(http, "/auth/Greeter/SayHello", HELLO, Some(token))
}

/// SayHello of the plain greeter: only the gateway checks.
fn gateway_hello(http: SocketAddr, token: &str) -> HttpResponse {
    call(http, "/greeter/Greeter/SayHello", HELLO, Some(token))
}

fn assert_refused(response: HttpResponse, what: &str) {
    assert_eq!(
        (response.status, response.json()["code"].clone()),
        (401, 16.into()),
        "{what}: {}",
        response.body
    );
    assert!(
        response.body.contains("session"),
        "{what}: the reason names the session: {}",
        response.body
    );
}

fn assert_ok(response: HttpResponse, what: &str) {
    assert_eq!(
        (response.status, response.json()["message"].clone()),
        (200, "Hello alice".into()),
        "{what}: {}",
        response.body
    );
}

/// How long the gateway may go on accepting an ended session it checked just before.
const GATEWAY_CATCHES_UP: Duration = DEFAULT_CHECK_CACHE.saturating_add(SLACK);

#[test]
fn login_refresh_and_logout_end_older_tokens_through_the_gateway_on_redis() {
    // micro-core's `conformance` feature comes with micro-testkit.
    let table = micro_core::conformance::unique("sessions-test");
    let dir = std::env::temp_dir().join(format!("micro-{table}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = dir.join("rules.json");
    std::fs::write(&rules, RULES).expect("rules");
    let rules_path = rules.to_str().expect("utf-8 path");
    let sessions = [
        "--auth",
        "jwt",
        "--auth-sessions",
        "--auth-sessions-table",
        table.as_str(),
        "--store",
        "redis",
        "--store-address",
        REDIS,
    ];

    let mut gateway_args = vec!["--auth-rules", rules_path];
    gateway_args.extend_from_slice(&sessions);
    let gateway = GatewayProcess::start_with_env(&gateway_args, &ENV);
    let http = gateway.http;
    let registry = gateway.registry.to_string();
    let mut service_args = vec![
        "--registry-address",
        registry.as_str(),
        "--rules",
        rules_path,
    ];
    service_args.extend_from_slice(&SHORT_TTL_ARGS);
    service_args.extend_from_slice(&sessions);
    let mut service = Process::start("auth", &service_args, &ENV, None);
    service.listening_address();
    let _greeter = gateway.greeter(&[]);
    wait_until(PROPAGATION, "both services are routable", || {
        let login = call(
            http,
            "/auth/Accounts/Login",
            r#"{"username":"alice","password":"wonderland"}"#,
            None,
        );
        login.status == 200 && call(http, "/greeter/Greeter/SayHello", HELLO, None).status == 401
    });

    // Log in twice: the first pair ends.
    let first = login(http);
    assert_ok(service_hello(http, &first.access), "the first login");
    assert_ok(
        gateway_hello(http, &first.access),
        "the first login, gateway",
    );
    let second = login(http);
    assert_refused(
        service_hello(http, &first.access),
        "the first login after the second",
    );
    assert_ok(service_hello(http, &second.access), "the second login");
    assert_ok(
        gateway_hello(http, &second.access),
        "the second login at the gateway: news, checked in the Store at once",
    );
    wait_until(
        GATEWAY_CATCHES_UP,
        "the gateway refuses the first login",
        || gateway_hello(http, &first.access).status == 401,
    );
    assert_refused(
        gateway_hello(http, &first.access),
        "the first login, gateway",
    );

    // Refresh: the previous pair ends, its refresh token is spent.
    let third = pair(&refresh(http, &second.refresh), "refresh");
    assert_refused(service_hello(http, &second.access), "the refreshed pair");
    assert_ok(service_hello(http, &third.access), "the new pair");
    assert_ok(gateway_hello(http, &third.access), "the new pair, gateway");
    let spent = refresh(http, &second.refresh);
    assert_eq!(spent.status, 401, "a spent refresh token: {}", spent.body);
    assert!(spent.body.contains("session"), "{}", spent.body);
    wait_until(
        GATEWAY_CATCHES_UP,
        "the gateway refuses the refreshed pair",
        || gateway_hello(http, &second.access).status == 401,
    );

    // Log out: every token of the account ends.
    let anonymous = call(http, "/auth/Accounts/Logout", "{}", None);
    assert_eq!(
        anonymous.status, 401,
        "a logout needs a token: {}",
        anonymous.body
    );
    let logout = call(http, "/auth/Accounts/Logout", "{}", Some(&third.access));
    assert_eq!(
        (logout.status, logout.json()["account"].clone()),
        (200, "alice".into()),
        "{}",
        logout.body
    );
    assert_refused(service_hello(http, &third.access), "after the logout");
    let after_logout = refresh(http, &third.refresh);
    assert_eq!(after_logout.status, 401, "{}", after_logout.body);
    wait_until(
        GATEWAY_CATCHES_UP,
        "the gateway refuses the logged-out token",
        || gateway_hello(http, &third.access).status == 401,
    );
    assert_refused(gateway_hello(http, &third.access), "logged out, gateway");

    // Logging in again works at once, everywhere; logging out again cleans the record up.
    let again = login(http);
    assert_ok(service_hello(http, &again.access), "a new login");
    assert_ok(gateway_hello(http, &again.access), "a new login, gateway");
    let logout = call(http, "/auth/Accounts/Logout", "{}", Some(&again.access));
    assert_eq!(logout.status, 200, "{}", logout.body);

    for process in [&gateway.process, &service] {
        assert!(
            !process.stderr().contains("panicked"),
            "{}",
            process.stderr()
        );
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
