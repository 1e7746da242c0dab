//! Rules from a file or the Config component change without a restart; a malformed update
//! keeps the last good rules.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_core::Config;
use micro_core::auth::{Account, Denied, Resource, Rules};
use micro_memory::MemoryConfig;
use micro_testkit::eventually;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(10);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "micro-jwt-{name}-{}-{:x}",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

fn hello() -> Resource {
    Resource::new("service", "greeter", "Greeter.SayHello")
}

fn bob(scopes: &[&str]) -> Account {
    Account {
        id: "bob".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn rules_json(scope: &str) -> serde_json::Value {
    json!([
        {"id": "hello", "scope": scope, "resource": {"kind": "service", "name": "greeter", "endpoint": "Greeter.*"}, "access": "grant", "priority": 1}
    ])
}

#[tokio::test]
async fn a_rewritten_json_file_takes_effect_and_a_malformed_one_is_ignored() {
    let dir = temp_dir("file");
    let path = dir.join("rules.json");
    std::fs::write(&path, rules_json("admin").to_string()).unwrap();
    let rules = Rules::watch_file(&path, Duration::from_millis(20)).unwrap();
    let user = bob(&["user"]);
    assert!(matches!(
        rules.verify(Some(&user), &hello()),
        Err(Denied::Forbidden { .. })
    ));

    std::fs::write(&path, rules_json("user").to_string()).unwrap();
    eventually(DEADLINE, "the new rules", || async {
        rules.verify(Some(&user), &hello()).is_ok()
    })
    .await;

    std::fs::write(&path, "[{\"id\": \"broken\", ").unwrap();
    eventually(DEADLINE, "the malformed file reported", || async {
        rules.last_error().is_some()
    })
    .await;
    let error = rules.last_error().unwrap();
    assert!(error.contains("rules.json"), "names the file: {error}");
    assert!(
        rules.verify(Some(&user), &hello()).is_ok(),
        "the last good rules stay"
    );
    assert_eq!(rules.current()[0].scope, "user");

    // Fixed again, wrapped in {"rules": [...]}.
    std::fs::write(&path, json!({"rules": rules_json("")}).to_string()).unwrap();
    eventually(DEADLINE, "the fixed rules", || async {
        rules.last_error().is_none() && rules.verify(None, &hello()).is_ok()
    })
    .await;
    drop(rules);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn toml_rules_reload_on_demand() {
    let dir = temp_dir("toml");
    let path = dir.join("rules.toml");
    let toml = |scope: &str| {
        format!(
            r#"
            [[rules]]
            id = "hello"
            scope = "{scope}"
            access = "grant"
            priority = 1
            resource = {{ kind = "service", name = "greeter", endpoint = "Greeter.SayHello" }}

            [[rules]]
            id = "deny-admin"
            scope = "*"
            access = "deny"
            priority = 10
            resource = {{ kind = "service", name = "greeter", endpoint = "Greeter.Drop" }}
            "#
        )
    };
    std::fs::write(&path, toml("*")).unwrap();
    let rules = Rules::from_file(&path).unwrap();
    assert_eq!(rules.current().len(), 2);
    assert!(rules.verify(None, &hello()).is_err());
    std::fs::write(&path, toml("")).unwrap();
    rules.reload().unwrap();
    assert!(rules.verify(None, &hello()).is_ok());

    std::fs::write(&path, "[[rules]]\nid = 3").unwrap();
    let error = rules.reload().unwrap_err().to_string();
    assert!(error.contains("rules.toml"), "{error}");
    assert!(rules.verify(None, &hello()).is_ok(), "last good rules kept");

    let missing = Rules::from_file(dir.join("absent.json"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("absent.json"), "{missing}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn config_rules_follow_changes() {
    let memory = MemoryConfig::new();
    let config: Arc<dyn Config> = Arc::new(memory.clone());
    config.set("auth.rules", rules_json("admin")).await.unwrap();
    let rules = Rules::from_config(config.clone(), "auth.rules")
        .await
        .unwrap();
    assert_eq!(rules.source(), "config:auth.rules");
    let user = bob(&["user"]);
    assert!(rules.verify(Some(&user), &hello()).is_err());

    config.set("auth.rules", rules_json("user")).await.unwrap();
    eventually(DEADLINE, "config change in effect", || async {
        rules.verify(Some(&user), &hello()).is_ok()
    })
    .await;

    // Malformed: the last good rules stay, and the error names the path.
    config
        .set("auth.rules", json!([{"id": "x", "access": "sometimes"}]))
        .await
        .unwrap();
    eventually(DEADLINE, "malformed config reported", || async {
        rules.last_error().is_some()
    })
    .await;
    assert!(rules.last_error().unwrap().contains("auth.rules"));
    assert!(rules.verify(Some(&user), &hello()).is_ok());

    // A good update clears the error.
    config
        .set("auth.rules", json!({"rules": rules_json("*")}))
        .await
        .unwrap();
    eventually(DEADLINE, "good config again", || async {
        rules.last_error().is_none() && rules.current()[0].scope == "*"
    })
    .await;

    // Deleted: no rules, everything refused (fail closed).
    config.delete("auth.rules").await.unwrap();
    eventually(DEADLINE, "rules emptied", || async {
        rules.current().is_empty()
    })
    .await;
    assert!(rules.verify(Some(&user), &hello()).is_err());
}

#[tokio::test]
async fn config_rules_absent_or_malformed_at_start() {
    let config: Arc<dyn Config> = Arc::new(MemoryConfig::new());
    let rules = Rules::from_config(config.clone(), "auth.rules")
        .await
        .unwrap();
    assert!(rules.current().is_empty());
    config.set("auth.rules", rules_json("")).await.unwrap();
    eventually(DEADLINE, "rules arrive", || async {
        rules.verify(None, &hello()).is_ok()
    })
    .await;

    config.set("other.rules", json!("nope")).await.unwrap();
    let error = Rules::from_config(config, "other.rules")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("other.rules"), "{error}");
}
