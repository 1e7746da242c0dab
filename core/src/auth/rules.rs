//! Access rules that change without a restart: from a JSON or TOML file, or from a path in the
//! Config component.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Account, Denied, Resource, Rule, verify};
use crate::config::ConfigWatcher;
use crate::{Config, Error, Result};

/// How often [`Rules::watch_file`] looks at the file by default.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// The current access rules, shared and cheap to read: [`current`](Rules::current) is a
/// pointer copy. Clones share the same rules. A background task that keeps them fresh (file
/// poll or config watch) ends when the last clone is dropped.
///
/// A malformed update (file or config value) is logged, kept in
/// [`last_error`](Rules::last_error), and changes nothing: the last good rules stay.
///
/// Every [`Rule`] needs a unique `id` and a full resource (`"*"` for any). For services the
/// resource is `kind = "service"`, `name` = the registered name, `endpoint` = `Service.Method`
/// (`"Greeter.*"` matches every method of Greeter). A file ends in `.toml` (`[[rules]]` tables),
/// or is JSON (an array of rules, or `{"rules": [...]}`, as is a Config value):
///
/// ```toml
/// [[rules]]
/// id = "login-public"
/// scope = ""              # public; "*" any account; else an account holding this scope
/// access = "grant"        # or "deny"
/// priority = 10           # higher first; a deny wins a tie
/// resource = { kind = "service", name = "auth", endpoint = "Accounts.*" }
/// ```
#[derive(Clone)]
pub struct Rules {
    inner: Arc<Inner>,
}

struct Inner {
    current: watch::Sender<Arc<Vec<Rule>>>,
    source: Source,
    last_error: Mutex<Option<String>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

enum Source {
    Fixed,
    File(PathBuf),
    Config(String),
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("source", &self.source())
            .field("rules", &self.current().len())
            .finish()
    }
}

impl Rules {
    fn with_source(rules: Vec<Rule>, source: Source) -> Self {
        Rules {
            inner: Arc::new(Inner {
                current: watch::Sender::new(Arc::new(rules)),
                source,
                last_error: Mutex::new(None),
                task: Mutex::new(None),
            }),
        }
    }

    /// Rules given in code (they change only through [`set`](Rules::set)).
    pub fn fixed(rules: Vec<Rule>) -> Result<Self> {
        check(&rules, "rules")?;
        Ok(Self::with_source(rules, Source::Fixed))
    }

    /// Rules read from a `.json` or `.toml` file (see [`Rules`] for the format). Call
    /// [`reload`](Rules::reload) to re-read it, or use [`watch_file`](Rules::watch_file).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let rules = read_file(&path)?;
        Ok(Self::with_source(rules, Source::File(path)))
    }

    /// [`from_file`](Rules::from_file), re-read every `every` (a poll: no file watcher
    /// needed, works on every file system and with editors that replace the file). Must be
    /// called inside a Tokio runtime.
    pub fn watch_file(path: impl AsRef<Path>, every: Duration) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::invalid("rules file", "watch_file needs a Tokio runtime"))?;
        let rules = Self::from_file(path)?;
        let weak = Arc::downgrade(&rules.inner);
        let every = every.max(Duration::from_millis(10));
        let task = runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let _ = Rules { inner }.reload();
            }
        });
        rules.set_task(task);
        Ok(rules)
    }

    /// Rules at `path` in the Config tree (an array of rules, or an object with a `rules`
    /// array), following every change through `config.watch(path)`. An absent path is an
    /// empty rule set, so every call is refused until rules arrive; a path deleted later also
    /// empties the rules (fail closed). A malformed value at start is an error naming the
    /// path; later, it is logged and the last good rules stay.
    pub async fn from_config(config: Arc<dyn Config>, path: &str) -> Result<Self> {
        // Watch first so no change between the read and the watch is missed.
        let watcher = config.watch(path).await?;
        let what = format!("config `{path}`");
        let rules = match config.get(path).await? {
            Some(value) => parse_value(value, &what)?,
            None => {
                tracing::warn!(path, "no rules in the config yet; everything is refused");
                Vec::new()
            }
        };
        let handle = Self::with_source(rules, Source::Config(path.to_string()));
        let weak = Arc::downgrade(&handle.inner);
        let task = tokio::spawn(follow_config(config, path.to_string(), watcher, weak));
        handle.set_task(task);
        Ok(handle)
    }

    fn set_task(&self, task: JoinHandle<()>) {
        *self.inner.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<Vec<Rule>> {
        self.inner.current.borrow().clone()
    }

    /// A receiver that sees each new rule set.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<Rule>>> {
        self.inner.current.subscribe()
    }

    /// Whether `account` may reach `resource` under the rules in force.
    pub fn verify(&self, account: Option<&Account>, resource: &Resource) -> Result<(), Denied> {
        verify(&self.current(), account, resource)
    }

    /// Replaces the rules (after checking them).
    pub fn set(&self, rules: Vec<Rule>) -> Result<()> {
        check(&rules, "rules")?;
        self.inner.current.send_replace(Arc::new(rules));
        Ok(())
    }

    /// Re-reads the file (rules from a file); on error the last good rules stay and the error,
    /// naming the file, is returned and kept in [`last_error`](Rules::last_error). A no-op for
    /// other sources.
    pub fn reload(&self) -> Result<()> {
        let Source::File(path) = &self.inner.source else {
            return Ok(());
        };
        match read_file(path) {
            Ok(rules) => {
                self.accept(rules);
                Ok(())
            }
            Err(e) => {
                self.reject(&e);
                Err(e)
            }
        }
    }

    /// The error of the last update that was refused, cleared by the next good one.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where the rules come from: `"code"`, the file path, or `config:<path>`.
    pub fn source(&self) -> String {
        match &self.inner.source {
            Source::Fixed => "code".into(),
            Source::File(path) => path.display().to_string(),
            Source::Config(path) => format!("config:{path}"),
        }
    }

    fn accept(&self, rules: Vec<Rule>) {
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        let changed = self.inner.current.send_if_modified(|current| {
            if **current == rules {
                false
            } else {
                *current = Arc::new(rules);
                true
            }
        });
        if changed {
            tracing::info!(source = %self.source(), rules = self.current().len(), "access rules reloaded");
        }
    }

    fn reject(&self, error: &Error) {
        let message = error.to_string();
        let mut last = self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(message.as_str()) {
            tracing::warn!(error = %message, "access rules not reloaded; the last good rules stay");
        }
        *last = Some(message);
    }
}

async fn follow_config(
    config: Arc<dyn Config>,
    path: String,
    mut watcher: ConfigWatcher,
    weak: Weak<Inner>,
) {
    let what = format!("config `{path}`");
    loop {
        while let Some(event) = watcher.next().await {
            let Some(inner) = weak.upgrade() else { return };
            let rules = Rules { inner };
            match event {
                Ok(Some(value)) => match parse_value(value, &what) {
                    Ok(new) => rules.accept(new),
                    Err(e) => rules.reject(&e),
                },
                Ok(None) => rules.accept(Vec::new()),
                Err(e) => tracing::warn!(path, error = %e, "rules config watch error"),
            }
        }
        // The watch ended (backend restart, ...): watch again, then read what was missed.
        loop {
            if weak.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            match config.watch(&path).await {
                Ok(w) => {
                    watcher = w;
                    break;
                }
                Err(e) => {
                    tracing::warn!(path, error = %e, "cannot watch the rules config; retrying")
                }
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        let rules = Rules { inner };
        match config.get(&path).await {
            Ok(Some(value)) => match parse_value(value, &what) {
                Ok(new) => rules.accept(new),
                Err(e) => rules.reject(&e),
            },
            Ok(None) => rules.accept(Vec::new()),
            Err(e) => tracing::warn!(path, error = %e, "cannot read the rules config"),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Document {
    List(Vec<Rule>),
    Table { rules: Vec<Rule> },
}

impl Document {
    fn into_rules(self) -> Vec<Rule> {
        match self {
            Document::List(rules) | Document::Table { rules } => rules,
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<Rule>> {
    let what = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid("rules file", format!("cannot read {what}: {e}")))?;
    parse_str(&text, path, &what)
}

/// Parses rules from text, by the file's extension: `.toml`, else JSON.
fn parse_str(text: &str, path: &Path, what: &str) -> Result<Vec<Rule>> {
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let rules = if is_toml {
        // TOML has no top-level array: `[[rules]]` tables.
        #[derive(Deserialize)]
        struct TomlRules {
            #[serde(default)]
            rules: Vec<Rule>,
        }
        toml::from_str::<TomlRules>(text)
            .map_err(|e| decode(what, e.to_string()))?
            .rules
    } else {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| decode(what, e.to_string()))
            .and_then(|value| parse_value(value, what))?
    };
    check(&rules, what)?;
    Ok(rules)
}

fn parse_value(value: serde_json::Value, what: &str) -> Result<Vec<Rule>> {
    let rules = serde_json::from_value::<Document>(value)
        .map_err(|_| {
            decode(
                what,
                "expected an array of rules or {\"rules\": [...]}, each {id, scope, resource: {kind, name, endpoint}, access: grant|deny, priority}".into(),
            )
        })?
        .into_rules();
    check(&rules, what)?;
    Ok(rules)
}

fn decode(what: &str, message: String) -> Error {
    Error::Decode {
        what: format!("rules {what}"),
        message,
    }
}

/// Every rule has an id (unique) and a full resource.
fn check(rules: &[Rule], what: &str) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = if rule.id.is_empty() {
            format!("rule #{}", i + 1)
        } else {
            format!("rule `{}`", rule.id)
        };
        if rule.id.is_empty() {
            return Err(decode(what, format!("{name} has no id")));
        }
        if !seen.insert(rule.id.as_str()) {
            return Err(decode(what, format!("{name} appears twice")));
        }
        let r = &rule.resource;
        if r.kind.is_empty() || r.name.is_empty() || r.endpoint.is_empty() {
            return Err(decode(
                what,
                format!("{name}: resource kind, name and endpoint must be set (`*` for any)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_array_json_table_and_toml() {
        let json = r#"[{"id":"pub","scope":"","resource":{"kind":"service","name":"greeter","endpoint":"*"},"access":"grant"}]"#;
        let rules = parse_str(json, Path::new("r.json"), "r.json").unwrap();
        assert_eq!(rules.len(), 1);
        let table = format!("{{\"rules\": {json}}}");
        assert_eq!(parse_str(&table, Path::new("r.json"), "r").unwrap(), rules);
        let toml = r#"
            [[rules]]
            id = "pub"
            scope = ""
            access = "grant"
            resource = { kind = "service", name = "greeter", endpoint = "*" }
        "#;
        assert_eq!(parse_str(toml, Path::new("r.toml"), "r").unwrap(), rules);
    }

    #[test]
    fn malformed_rules_name_their_source() {
        for bad in [
            "not json",
            r#"[{"id":"x"}]"#,
            r#"[{"id":"","resource":{"kind":"service","name":"g","endpoint":"*"},"access":"grant"}]"#,
            r#"[{"id":"x","resource":{"kind":"service","name":"g","endpoint":""},"access":"grant"}]"#,
            r#"[{"id":"x","resource":{"kind":"service","name":"g","endpoint":"*"},"access":"maybe"}]"#,
        ] {
            let e = parse_str(bad, Path::new("/etc/rules.json"), "/etc/rules.json").unwrap_err();
            assert!(e.to_string().contains("/etc/rules.json"), "{e}");
        }
    }
}
