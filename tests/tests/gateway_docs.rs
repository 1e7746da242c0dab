//! `GET /docs`: the interactive API page bundled in the gateway. Its page and files are served
//! with their types, caching headers and a strict Content-Security-Policy, unknown files are
//! 404, and, in headless chromium (`tests/browser/docs.mjs`, Playwright), the page loads
//! nothing from outside the gateway and calls the greeter through "Try it out".

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use micro_testkit::{GatewayProcess, PROPAGATION, get, post, wait_until};

/// How long the browser script may run (it takes a few seconds).
const BROWSER_DEADLINE: Duration = Duration::from_secs(30);

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../api-gateway/assets");
const BROWSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/browser");

/// The `docs/...` names the page loads.
fn references(page: &str) -> Vec<String> {
    page.split("\"docs/")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name.to_string()))
        .collect()
}

/// `swagger-ui-bundle.0123456789abcdef.js` → `swagger-ui-bundle.js`.
fn plain_name(hashed: &str) -> String {
    let parts: Vec<&str> = hashed.split('.').collect();
    assert!(parts.len() >= 3, "{hashed} has no hash");
    let hash = parts[parts.len() - 2];
    assert!(
        hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{hashed}: `{hash}` is not a content hash"
    );
    let mut plain = parts[..parts.len() - 2].to_vec();
    plain.push(parts[parts.len() - 1]);
    plain.join(".")
}

fn vendored_size(name: &str) -> Option<u64> {
    [name.to_string(), format!("swagger-ui/{name}")]
        .iter()
        .map(|file| Path::new(ASSETS).join(file))
        .find_map(|path| std::fs::metadata(path).ok())
        .map(|m| m.len())
}

#[test]
fn docs_page_and_its_files_are_served_with_types_caching_and_csp() {
    let gateway = GatewayProcess::start(&[]);

    let page = get(gateway.http, "/docs");
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert!(page.header("etag").is_some_and(|e| e.starts_with('"')));
    let csp = page.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'none'",
        "script-src 'self';",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} not in CSP {csp:?}");
    }
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "the page names no URL: {}",
        page.body
    );

    let loaded = references(&page.body);
    let plain: Vec<String> = loaded.iter().map(|name| plain_name(name)).collect();
    for expected in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "init.js",
        "docs.css",
        "favicon-32x32.png",
    ] {
        assert!(
            plain.iter().any(|p| p == expected),
            "the page loads no {expected}: {loaded:?}"
        );
    }

    for (hashed, plain) in loaded.iter().zip(&plain) {
        let content_type = match plain.rsplit_once('.').map(|(_, ext)| ext) {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("png") => "image/png",
            other => panic!("unexpected asset type {other:?} of {plain}"),
        };
        let by_hash = get(gateway.http, &format!("/docs/{hashed}"));
        assert_eq!(by_hash.status, 200, "{hashed}: {}", by_hash.body);
        assert_eq!(
            by_hash.header("content-type"),
            Some(content_type),
            "{hashed}"
        );
        assert_eq!(
            by_hash.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{hashed}"
        );
        assert_eq!(by_hash.header("x-content-type-options"), Some("nosniff"));
        let size = vendored_size(plain).unwrap_or_else(|| panic!("no file for {plain}"));
        assert_eq!(
            by_hash.header("content-length"),
            Some(size.to_string().as_str()),
            "{hashed} is the vendored file"
        );

        let by_name = get(gateway.http, &format!("/docs/{plain}"));
        assert_eq!(by_name.status, 200, "{plain}");
        assert_eq!(
            by_name.header("content-type"),
            Some(content_type),
            "{plain}"
        );
        assert_eq!(by_name.header("cache-control"), Some("no-cache"), "{plain}");
        assert_eq!(by_name.header("etag"), by_hash.header("etag"), "{plain}");
    }

    let init = loaded
        .iter()
        .find(|n| n.starts_with("init."))
        .expect("init");
    let init = get(gateway.http, &format!("/docs/{init}")).body;
    assert!(init.contains("openapi.json") && init.contains("tryItOutEnabled: true"));
    assert!(
        !init.contains("http://") && !init.contains("https://"),
        "{init}"
    );

    for unknown in [
        "/docs/nope.js",
        "/docs/index.html",
        "/docs/swagger-ui-bundle.js.map",
        "/docs/swagger-ui-standalone-preset.js",
        "/docs/swagger-ui-bundle.0123456789abcdef.js",
    ] {
        let response = get(gateway.http, unknown);
        assert_eq!(response.status, 404, "{unknown}: {}", response.body);
        assert_eq!(response.json()["code"], 5, "{unknown}");
    }
    let posted = post(gateway.http, "/docs", "{}");
    assert_eq!(posted.status, 405, "{}", posted.body);
}

#[test]
fn docs_page_calls_the_greeter_from_a_real_browser_and_loads_nothing_from_outside() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/setup (it installs chromium)"
    );
    assert!(
        Path::new(BROWSER)
            .join("node_modules/playwright-core/package.json")
            .is_file(),
        "{BROWSER}/node_modules has no playwright-core: run scripts/setup (npm ci there)"
    );

    let gateway = GatewayProcess::start(&[]);
    let _greeter = gateway.greeter(&[]);
    wait_until(PROPAGATION, "the greeter is routable", || {
        post(
            gateway.http,
            "/greeter/Greeter/SayHello",
            "{\"name\":\"x\"}",
        )
        .status
            == 200
    });
    wait_until(PROPAGATION, "GET /openapi.json lists SayHello", || {
        let document = get(gateway.http, "/openapi.json");
        assert_ne!(
            document.status, 501,
            "GET /openapi.json is not built yet: {}",
            document.body
        );
        document.status == 200 && document.body.contains("SayHello")
    });

    let url = format!("http://{}", gateway.http);
    let started = Instant::now();
    let mut node = Command::new("node");
    node.arg(Path::new(BROWSER).join("docs.mjs"))
        .arg(&url)
        .env("CHROMIUM", &chromium);
    let run = micro_testkit::run_command(node, "", BROWSER_DEADLINE);
    let (stdout, stderr) = (run.stdout, run.stderr);
    assert_eq!(
        run.code,
        Some(0),
        "the browser test failed: {}{}",
        stderr.trim(),
        stdout.trim()
    );
    eprintln!("{} (in {:?})", stdout.trim(), started.elapsed());
}
