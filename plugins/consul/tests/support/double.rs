//! `ConsulApiDouble`: a stateful test double of the parts of the Consul HTTP API this plugin
//! uses, written from HashiCorp's published API documentation (developer.hashicorp.com/consul/
//! api-docs). It is a test tool, not Consul: one node, one datacenter, no Raft, no sessions, no
//! ACL system beyond "this one token is accepted".
//!
//! What it keeps faithful, each handler citing its doc section:
//! - JSON field names and casing (`ID`, `Service`, `Tags`, `ModifyIndex`, ...);
//! - errors as plain text bodies; 200 with an empty body for agent register/deregister/pass;
//!   `true`/`false` for KV PUT and DELETE; 404 with an empty body and `X-Consul-Index` for a
//!   missing key; 403 when the ACL token is refused;
//! - service checks start `critical` unless `Status` is given; TTL checks turn `critical` when
//!   not passed within their TTL; `DeregisterCriticalServiceAfter` (1 minute minimum) removes
//!   the service; every health entry carries the node's `serfHealth` check;
//! - registering a service again keeps the status and output of the checks the agent already
//!   has, whatever `Status` says: a lapsed TTL check stays `critical` until it is passed
//!   (Consul's `agent.go`, `addServiceInternal`: "Restore the fields from the snapshot");
//! - blocking queries: `index` + `wait` (default 5m, at most 10m), answering as soon as the
//!   resource's index is greater than the one given, or when `wait` runs out, unchanged.
//!
//! Fault knobs for tests: [`ConsulApiDouble::require_token`],
//! [`ConsulApiDouble::cut_blocking_responses`].
//!
//! One file of about a thousand lines on purpose: the agent, catalog, health and KV handlers
//! share one state and one index, and reading the double against the API docs is easier in one
//! place than across modules that each need all of it.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

type Body = BoxBody<Bytes, std::io::Error>;

const NODE: &str = "double-node";
const NODE_ID: &str = "5f1c0d3e-0000-4000-8000-00000000d0b1";
const DATACENTER: &str = "dc1";
/// features/blocking: "If not set, the wait time defaults to 5 minutes" and "This is limited
/// to 10 minutes".
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
/// agent/check, "DeregisterCriticalServiceAfter": "The minimum timeout is 1 minute".
const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// The output of a TTL check whose timer fired (Consul's `checks.CheckTTL`).
const TTL_EXPIRED: &str = "TTL expired";

/// A running double, listening on 127.0.0.1 with an ephemeral port. Its tasks live in the
/// runtime that started it.
#[derive(Clone)]
pub struct ConsulApiDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    index: u64,
    services_index: u64,
    kv_index: u64,
    service_name_index: BTreeMap<String, u64>,
    services: BTreeMap<String, Instance>,
    checks: BTreeMap<String, Check>,
    kv: BTreeMap<String, KvItem>,
    tombstones: BTreeMap<String, u64>,
    token: Option<String>,
    cut_blocking: u32,
    waiting: usize,
}

#[derive(Clone, PartialEq)]
struct Instance {
    id: String,
    name: String,
    tags: Vec<String>,
    address: String,
    port: u16,
    meta: BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Clone)]
struct Check {
    id: String,
    name: String,
    service_id: String,
    status: String,
    output: String,
    ttl: Option<Duration>,
    deadline: Option<Instant>,
    deregister_after: Option<Duration>,
    critical_since: Option<Instant>,
    create_index: u64,
    modify_index: u64,
}

struct KvItem {
    value: Vec<u8>,
    flags: u64,
    create_index: u64,
    modify_index: u64,
}

impl ConsulApiDouble {
    /// Starts a double on 127.0.0.1, port 0, in the current runtime.
    pub async fn start() -> ConsulApiDouble {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the double");
        let addr = listener.local_addr().expect("the double's address");
        let state = State {
            index: 1,
            services_index: 1,
            kv_index: 1,
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: watch::channel(1).0,
        });
        let double = ConsulApiDouble { addr, shared };
        let server = double.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let double = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let double = double.clone();
                        async move { Ok::<_, Infallible>(double.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let reaper = double.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                reaper.reap();
            }
        });
        double
    }

    /// `host:port` of the double.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// From now on, requests without `X-Consul-Token: <token>` are refused with 403.
    pub fn require_token(&self, token: &str) {
        self.lock().token = Some(token.to_string());
    }

    /// The next `n` answers to blocking queries (with `index > 0`) are cut off mid-body: the
    /// headers promise the full length, half of it is sent, then the connection drops.
    pub fn cut_blocking_responses(&self, n: u32) {
        self.lock().cut_blocking = n;
    }

    /// Cuts still to be made by [`cut_blocking_responses`](Self::cut_blocking_responses).
    pub fn pending_cuts(&self) -> u32 {
        self.lock().cut_blocking
    }

    /// How many blocking queries are being held right now.
    pub fn waiting_queries(&self) -> usize {
        self.lock().waiting
    }

    /// The current state of check `id`, if any.
    pub fn check_status(&self, id: &str) -> Option<String> {
        self.lock().checks.get(id).map(|c| c.status.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self, index: u64) {
        self.shared.changed.send_replace(index);
    }

    /// agent/check, TTL checks: "If the check is not set to passing within the TTL, the check
    /// enters the critical state"; agent/service, DeregisterCriticalServiceAfter: services
    /// whose check stays critical that long are deregistered (Consul's reaper runs every 30 s;
    /// this one every 50 ms). As in Consul's local state, the critical clock starts when the
    /// TTL timer fires; a (re-)registration restarts the timer and the clock.
    fn reap(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let mut changed = false;
        let expired: Vec<String> = state
            .checks
            .values()
            .filter(|c| {
                (c.status != "critical" || c.critical_since.is_none())
                    && c.deadline.is_some_and(|d| d <= now)
            })
            .map(|c| c.id.clone())
            .collect();
        for id in expired {
            let Some(check) = state.checks.get_mut(&id) else {
                continue;
            };
            check.critical_since = Some(now);
            if check.status == "critical" && check.output == TTL_EXPIRED {
                // Already critical (kept through a re-registration): only the clock starts.
                continue;
            }
            check.status = "critical".into();
            check.output = TTL_EXPIRED.into();
            let service_id = check.service_id.clone();
            let index = state.bump_index();
            if let Some(check) = state.checks.get_mut(&id) {
                check.modify_index = index;
            }
            state.touch_service(&service_id, index, false);
            changed = true;
        }
        let doomed: Vec<String> = state
            .checks
            .values()
            .filter(|c| match (c.critical_since, c.deregister_after) {
                (Some(since), Some(after)) => since + after <= now,
                _ => false,
            })
            .map(|c| c.service_id.clone())
            .collect();
        for service_id in doomed {
            state.remove_service(&service_id);
            changed = true;
        }
        let index = state.index;
        drop(state);
        if changed {
            self.notify(index);
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let raw_path = request.uri().path().to_string();
        let query = parse_query(request.uri().query().unwrap_or(""));
        let token = request
            .headers()
            .get("X-Consul-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| query.get("token").cloned());
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("Request decode failed: {e}"),
                );
            }
        };
        // api-docs index, "Authentication": a request whose token is not accepted gets 403
        // with a plain-text reason.
        let required = self.lock().token.clone();
        if let Some(required) = required
            && token.as_deref() != Some(required.as_str())
        {
            return text(StatusCode::FORBIDDEN, "Permission denied");
        }
        // Go's URL.Path is percent-decoded before routing; keys are taken from it.
        let path = percent_decode(&raw_path);
        let route = |prefix: &str| path.strip_prefix(prefix).map(str::to_string);
        if path == "/v1/agent/service/register" {
            return only(&method, Method::PUT, || self.register(&body));
        }
        if let Some(id) = route("/v1/agent/service/deregister/") {
            return only(&method, Method::PUT, || self.deregister(&id));
        }
        if let Some(id) = route("/v1/agent/check/pass/") {
            return only(&method, Method::PUT, || self.pass(&id));
        }
        if let Some(name) = route("/v1/health/service/") {
            if method != Method::GET {
                return not_allowed(&method);
            }
            return self
                .blocking(&query, || self.health(&name, query.contains_key("passing")))
                .await;
        }
        if path == "/v1/catalog/services" {
            if method != Method::GET {
                return not_allowed(&method);
            }
            return self.blocking(&query, || self.catalog_services()).await;
        }
        if let Some(key) = route("/v1/kv/") {
            return match method {
                Method::GET => self.blocking(&query, || self.kv_get(&key, &query)).await,
                Method::PUT => self.kv_put(&key, &query, &body),
                Method::DELETE => self.kv_delete(&key, &query),
                other => not_allowed(&other),
            };
        }
        text(StatusCode::NOT_FOUND, "404 page not found")
    }

    /// features/blocking: with `index` > 0, hold the request until the resource's index is
    /// greater than it or `wait` (default 5m, at most 10m) runs out; then answer with the
    /// current state and its `X-Consul-Index` — no guarantee that anything changed. (Consul
    /// adds up to wait/16 of jitter; the double does not.)
    async fn blocking(
        &self,
        query: &BTreeMap<String, String>,
        read: impl Fn() -> (u64, Response<Body>),
    ) -> Response<Body> {
        let min_index: u64 = match query.get("index").map(|v| v.parse()) {
            None => 0,
            Some(Ok(index)) => index,
            Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "Invalid index"),
        };
        let wait = match query.get("wait").map(|w| parse_go_duration(w)) {
            None => DEFAULT_WAIT,
            Some(Some(wait)) => wait.min(MAX_WAIT),
            Some(None) => return text(StatusCode::BAD_REQUEST, "Invalid wait time"),
        };
        if min_index == 0 {
            return read().1;
        }
        let deadline = Instant::now() + wait;
        let mut changes = self.shared.changed.subscribe();
        let _held = Held::new(self.clone());
        let response = loop {
            let (index, response) = read();
            if index > min_index || Instant::now() >= deadline {
                break response;
            }
            // No borrow_and_update here: a change between `read()` and this point would be
            // marked seen and missed. `subscribe()` marked the value current before the first
            // read, and `changed()` wakes for anything sent since it last returned.
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                break read().1;
            }
        };
        let cut = {
            let mut state = self.lock();
            let cut = state.cut_blocking > 0;
            state.cut_blocking = state.cut_blocking.saturating_sub(1);
            cut
        };
        if cut {
            cut_off(response).await
        } else {
            response
        }
    }

    /// agent/service, "Register Service" (PUT /v1/agent/service/register): `Name` required,
    /// `ID` defaults to `Name`; `Check`/`Checks` define checks whose `CheckID` defaults to
    /// `service:<ID>` and whose `Status` defaults to `critical`. 200, empty body.
    ///
    /// A check the agent already has keeps its status and output, `Status` notwithstanding:
    /// Consul's `addServiceInternal` builds each check with `Status` (default critical), then
    /// "Restore the fields from the snapshot" of the agent's checks overwrites `Status` and
    /// `Output`. Its TTL timer restarts, and with it the critical clock of
    /// `DeregisterCriticalServiceAfter` (the local state gets a fresh `CheckState`).
    fn register(&self, body: &[u8]) -> Response<Body> {
        let def: Value = match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Request decode failed: not an object",
                );
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("Request decode failed: {e}"),
                );
            }
        };
        let Some(name) = field(&def, "Name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            return text(StatusCode::BAD_REQUEST, "Missing service name");
        };
        let id = field(&def, "ID")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty())
            .unwrap_or(name);
        let tags: Vec<String> = field(&def, "Tags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let meta: BTreeMap<String, String> = field(&def, "Meta")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        // agent/service, Meta: keys up to 128 characters, values up to 512, at most 64 pairs.
        if meta.len() > 64 || meta.iter().any(|(k, v)| k.len() > 128 || v.len() > 512) {
            return text(
                StatusCode::BAD_REQUEST,
                "Invalid Service Meta: limits exceeded",
            );
        }
        let port = field(&def, "Port").and_then(Value::as_u64).unwrap_or(0);
        let Ok(port) = u16::try_from(port) else {
            return text(StatusCode::BAD_REQUEST, "Invalid Port");
        };
        let mut check_defs: Vec<Value> = Vec::new();
        if let Some(check) = field(&def, "Check").filter(|c| c.is_object()) {
            check_defs.push(check.clone());
        }
        if let Some(checks) = field(&def, "Checks").and_then(Value::as_array) {
            check_defs.extend(checks.iter().cloned());
        }
        let mut checks = Vec::new();
        for (n, check) in check_defs.iter().enumerate() {
            let default_id = if check_defs.len() == 1 {
                format!("service:{id}")
            } else {
                format!("service:{id}:{}", n + 1)
            };
            let check_id = field(check, "CheckID")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .unwrap_or(default_id);
            let ttl = match field(check, "TTL").and_then(Value::as_str) {
                None | Some("") => None,
                Some(ttl) => match parse_go_duration(ttl) {
                    Some(ttl) => Some(ttl),
                    None => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            &format!("Request decode failed: invalid TTL {ttl:?}"),
                        );
                    }
                },
            };
            let deregister_after = match field(check, "DeregisterCriticalServiceAfter")
                .and_then(Value::as_str)
            {
                None | Some("") => None,
                Some(after) => match parse_go_duration(after) {
                    Some(after) => Some(after.max(MIN_DEREGISTER_AFTER)),
                    None => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            &format!(
                                "Request decode failed: invalid DeregisterCriticalServiceAfter {after:?}"
                            ),
                        );
                    }
                },
            };
            let status = field(check, "Status")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("critical");
            if !matches!(status, "passing" | "warning" | "critical") {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid check status: {status:?}"),
                );
            }
            let check_name = field(check, "Name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("Service '{name}' check"));
            checks.push((
                check_id,
                check_name,
                status.to_string(),
                ttl,
                deregister_after,
            ));
        }
        let now = Instant::now();
        let mut state = self.lock();
        // "Restore the fields from the snapshot": a check the agent has keeps its status and
        // output (and, here, its CreateIndex).
        let mut kept: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for (cid, _, status, _, _) in &mut checks {
            if let Some(existing) = state.checks.get(cid.as_str()) {
                *status = existing.status.clone();
                kept.insert(
                    cid.clone(),
                    (existing.output.clone(), existing.create_index),
                );
            }
        }
        let old = state.services.get(id).cloned();
        let mut instance = Instance {
            id: id.to_string(),
            name: name.to_string(),
            tags,
            address: field(&def, "Address")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            port,
            meta,
            create_index: 0,
            modify_index: 0,
        };
        let same_service = old.as_ref().is_some_and(|o| {
            Instance {
                create_index: 0,
                modify_index: 0,
                ..o.clone()
            } == instance
        });
        let same_checks = checks.iter().all(|(cid, check_name, status, ttl, after)| {
            state.checks.get(cid).is_some_and(|c| {
                c.service_id == id
                    && &c.name == check_name
                    && &c.status == status
                    && &c.ttl == ttl
                    && &c.deregister_after == after
            })
        }) && state.checks.values().filter(|c| c.service_id == id).count()
            == checks.len();
        if same_service && same_checks {
            // An idempotent re-registration: the TTL timers (and the critical clocks) restart,
            // statuses stay, no index changes.
            for (cid, _, _, ttl, _) in &checks {
                if let (Some(check), Some(ttl)) = (state.checks.get_mut(cid), ttl) {
                    check.deadline = Some(now + *ttl);
                    check.critical_since = None;
                }
            }
            return empty(StatusCode::OK);
        }
        let index = state.bump_index();
        if let Some(old) = &old
            && old.name != name
        {
            state.remove_service(id);
        }
        instance.create_index = old.as_ref().map(|o| o.create_index).unwrap_or(index);
        instance.modify_index = index;
        let catalog_changed = !same_service;
        state.services.insert(id.to_string(), instance);
        state.checks.retain(|_, c| c.service_id != id);
        for (cid, check_name, status, ttl, deregister_after) in checks {
            // A TTL check's critical clock starts when its timer fires (see `reap`).
            let critical = status == "critical" && ttl.is_none();
            let (output, create_index) = kept.remove(&cid).unwrap_or((String::new(), index));
            state.checks.insert(
                cid.clone(),
                Check {
                    id: cid,
                    name: check_name,
                    service_id: id.to_string(),
                    status,
                    output,
                    ttl,
                    deadline: ttl.map(|t| now + t),
                    deregister_after,
                    critical_since: critical.then_some(now),
                    create_index,
                    modify_index: index,
                },
            );
        }
        state.touch_service(id, index, catalog_changed);
        drop(state);
        self.notify(index);
        empty(StatusCode::OK)
    }

    /// agent/service, "Deregister Service" (PUT /v1/agent/service/deregister/:service_id):
    /// 200 with an empty body; an unknown id is 404.
    fn deregister(&self, id: &str) -> Response<Body> {
        let mut state = self.lock();
        if !state.services.contains_key(id) {
            return text(
                StatusCode::NOT_FOUND,
                &format!(
                    "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
                ),
            );
        }
        state.remove_service(id);
        let index = state.index;
        drop(state);
        self.notify(index);
        empty(StatusCode::OK)
    }

    /// agent/check, "TTL Check Pass" (PUT /v1/agent/check/pass/:check_id): sets the check
    /// `passing` and restarts its TTL. Unknown check: 404; a check without TTL: 500 "does not
    /// have associated TTL".
    fn pass(&self, id: &str) -> Response<Body> {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(check) = state.checks.get(id) else {
            return text(
                StatusCode::NOT_FOUND,
                &format!(
                    "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
                ),
            );
        };
        let Some(ttl) = check.ttl else {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("CheckID {id:?} does not have associated TTL"),
            );
        };
        let was = check.status.clone();
        let service_id = check.service_id.clone();
        let index = if was != "passing" {
            Some(state.bump_index())
        } else {
            None
        };
        if let Some(check) = state.checks.get_mut(id) {
            check.deadline = Some(now + ttl);
            check.status = "passing".into();
            check.output = String::new();
            check.critical_since = None;
            if let Some(index) = index {
                check.modify_index = index;
            }
        }
        if let Some(index) = index {
            state.touch_service(&service_id, index, false);
            drop(state);
            self.notify(index);
        }
        empty(StatusCode::OK)
    }

    /// health, "List Service Instances for Service" (GET /v1/health/service/:service):
    /// `[{Node, Service, Checks}]`, the node's `serfHealth` check included; `?passing` keeps
    /// only entries whose checks all pass. Blocking.
    fn health(&self, name: &str, passing: bool) -> (u64, Response<Body>) {
        let state = self.lock();
        let index = state
            .service_name_index
            .get(name)
            .copied()
            .unwrap_or(state.services_index);
        let serf = json!({
            "Node": NODE, "CheckID": "serfHealth", "Name": "Serf Health Status",
            "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
            "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
            "CreateIndex": 1, "ModifyIndex": 1,
        });
        let mut entries = Vec::new();
        for instance in state.services.values().filter(|s| s.name == name) {
            let mut checks = vec![serf.clone()];
            let mut all_passing = true;
            for check in state
                .checks
                .values()
                .filter(|c| c.service_id == instance.id)
            {
                all_passing &= check.status == "passing";
                checks.push(json!({
                    "Node": NODE, "CheckID": check.id, "Name": check.name, "Status": check.status,
                    "Notes": "", "Output": check.output, "ServiceID": instance.id,
                    "ServiceName": instance.name, "ServiceTags": instance.tags,
                    "Type": if check.ttl.is_some() { "ttl" } else { "" },
                    "CreateIndex": check.create_index, "ModifyIndex": check.modify_index,
                }));
            }
            if passing && !all_passing {
                continue;
            }
            entries.push(json!({
                "Node": {
                    "ID": NODE_ID, "Node": NODE, "Address": "127.0.0.1", "Datacenter": DATACENTER,
                    "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
                    "Meta": {"consul-network-segment": ""},
                    "CreateIndex": 1, "ModifyIndex": 1,
                },
                "Service": {
                    "ID": instance.id, "Service": instance.name, "Tags": instance.tags,
                    "Address": instance.address, "Meta": instance.meta, "Port": instance.port,
                    "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                    "CreateIndex": instance.create_index, "ModifyIndex": instance.modify_index,
                },
                "Checks": checks,
            }));
        }
        (index, json_response(index, &Value::Array(entries)))
    }

    /// catalog, "List Services" (GET /v1/catalog/services): `{name: [tags]}`, the agent's own
    /// `consul` service included. Blocking.
    fn catalog_services(&self) -> (u64, Response<Body>) {
        let state = self.lock();
        let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        services.insert("consul".into(), BTreeSet::new());
        for instance in state.services.values() {
            services
                .entry(instance.name.clone())
                .or_default()
                .extend(instance.tags.iter().cloned());
        }
        let index = state.services_index;
        (index, json_response(index, &json!(services)))
    }

    /// kv, "Read Key" (GET /v1/kv/:key): `[{LockIndex, Key, Flags, Value (base64 or null),
    /// CreateIndex, ModifyIndex}]`; `?recurse` every key with the prefix, `?keys` key names
    /// only, `?raw` the bare value. Missing: 404, empty body, with `X-Consul-Index`. Blocking.
    fn kv_get(&self, key: &str, query: &BTreeMap<String, String>) -> (u64, Response<Body>) {
        let state = self.lock();
        let by_prefix = query.contains_key("recurse") || query.contains_key("keys");
        let matches = |k: &str| {
            if by_prefix {
                k.starts_with(key)
            } else {
                k == key
            }
        };
        let items: Vec<(&String, &KvItem)> = state.kv.iter().filter(|(k, _)| matches(k)).collect();
        let index = items
            .iter()
            .map(|(_, item)| item.modify_index)
            .chain(
                state
                    .tombstones
                    .iter()
                    .filter(|(k, _)| matches(k))
                    .map(|(_, i)| *i),
            )
            .max()
            .unwrap_or(state.kv_index)
            .max(1);
        if items.is_empty() {
            let mut response = empty(StatusCode::NOT_FOUND);
            response
                .headers_mut()
                .insert("X-Consul-Index", index.into());
            return (index, response);
        }
        if query.contains_key("keys") {
            let keys: Vec<&String> = items.iter().map(|(k, _)| *k).collect();
            return (index, json_response(index, &json!(keys)));
        }
        if query.contains_key("raw") && !by_prefix {
            let mut response = Response::new(full(Bytes::from(items[0].1.value.clone())));
            response
                .headers_mut()
                .insert("X-Consul-Index", index.into());
            return (index, response);
        }
        let entries: Vec<Value> = items
            .iter()
            .map(|(k, item)| {
                json!({
                    "LockIndex": 0, "Key": k, "Flags": item.flags,
                    "Value": if item.value.is_empty() { Value::Null } else { json!(STANDARD.encode(&item.value)) },
                    "CreateIndex": item.create_index, "ModifyIndex": item.modify_index,
                })
            })
            .collect();
        (index, json_response(index, &Value::Array(entries)))
    }

    /// kv, "Create/Update Key" (PUT /v1/kv/:key): the body is the value; `?cas=0` writes only
    /// if the key is absent, `?cas=N` only if its ModifyIndex is N; answers `true` or `false`.
    /// Values are limited to 512 KB. Sessions (`?acquire`, `?release`) are not implemented by
    /// this double.
    fn kv_put(&self, key: &str, query: &BTreeMap<String, String>, body: &[u8]) -> Response<Body> {
        if key.is_empty() {
            return text(StatusCode::BAD_REQUEST, "Missing key name");
        }
        if query.contains_key("acquire") || query.contains_key("release") {
            return text(
                StatusCode::BAD_REQUEST,
                "sessions are not implemented by ConsulApiDouble",
            );
        }
        if body.len() > 512 * 1024 {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Value exceeds {} byte limit", 512 * 1024),
            );
        }
        let flags = match query.get("flags").map(|f| f.parse::<u64>()) {
            None => 0,
            Some(Ok(flags)) => flags,
            Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "Invalid flags"),
        };
        let mut state = self.lock();
        if let Some(cas) = query.get("cas") {
            let Ok(cas) = cas.parse::<u64>() else {
                return text(StatusCode::BAD_REQUEST, "Invalid cas value");
            };
            let current = state.kv.get(key).map(|i| i.modify_index);
            let ok = match (cas, current) {
                (0, None) => true,
                (0, Some(_)) => false,
                (n, Some(m)) => n == m,
                (_, None) => false,
            };
            if !ok {
                return text(StatusCode::OK, "false");
            }
        }
        let index = state.bump_kv();
        let create_index = state.kv.get(key).map(|i| i.create_index).unwrap_or(index);
        state.tombstones.remove(key);
        state.kv.insert(
            key.to_string(),
            KvItem {
                value: body.to_vec(),
                flags,
                create_index,
                modify_index: index,
            },
        );
        drop(state);
        self.notify(index);
        text(StatusCode::OK, "true")
    }

    /// kv, "Delete Key" (DELETE /v1/kv/:key): `?recurse` deletes every key with the prefix,
    /// `?cas=N` only if the ModifyIndex is N; answers `true` or `false`. Deleted keys leave
    /// tombstones so blocking reads of a prefix see the delete's index.
    fn kv_delete(&self, key: &str, query: &BTreeMap<String, String>) -> Response<Body> {
        let mut state = self.lock();
        let recurse = query.contains_key("recurse");
        if let Some(cas) = query.get("cas").filter(|_| !recurse) {
            let Ok(cas) = cas.parse::<u64>() else {
                return text(StatusCode::BAD_REQUEST, "Invalid cas value");
            };
            if state.kv.get(key).map(|i| i.modify_index) != Some(cas) {
                return text(StatusCode::OK, "false");
            }
        }
        let doomed: Vec<String> = state
            .kv
            .keys()
            .filter(|k| {
                if recurse {
                    k.starts_with(key)
                } else {
                    *k == key
                }
            })
            .cloned()
            .collect();
        if doomed.is_empty() {
            return text(StatusCode::OK, "true");
        }
        let index = state.bump_kv();
        for k in doomed {
            state.kv.remove(&k);
            state.tombstones.insert(k, index);
        }
        drop(state);
        self.notify(index);
        text(StatusCode::OK, "true")
    }
}

/// Counts a held blocking query for as long as it lives (hyper drops it when the client
/// goes away).
struct Held(ConsulApiDouble);

impl Held {
    fn new(double: ConsulApiDouble) -> Self {
        double.lock().waiting += 1;
        Held(double)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl State {
    fn bump_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn bump_kv(&mut self) -> u64 {
        let index = self.bump_index();
        self.kv_index = index;
        index
    }

    /// Records a change of the instance `id` (and of the catalog's service list when asked).
    fn touch_service(&mut self, id: &str, index: u64, catalog: bool) {
        if let Some(name) = self.services.get(id).map(|s| s.name.clone()) {
            self.service_name_index.insert(name, index);
        }
        if catalog {
            self.services_index = index;
        }
    }

    fn remove_service(&mut self, id: &str) {
        let index = self.bump_index();
        if let Some(instance) = self.services.remove(id) {
            self.service_name_index.insert(instance.name, index);
        }
        self.checks.retain(|_, c| c.service_id != id);
        self.services_index = index;
    }
}

/// Consul decodes request JSON case-insensitively; so does the double.
fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn only(
    method: &Method,
    allowed: Method,
    handler: impl FnOnce() -> Response<Body>,
) -> Response<Body> {
    if *method == allowed {
        handler()
    } else {
        not_allowed(method)
    }
}

fn not_allowed(method: &Method) -> Response<Body> {
    text(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method {method} not allowed"),
    )
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// Errors (and KV's `true`/`false`) are plain text.
fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "Content-Type",
        "text/plain; charset=utf-8".parse().expect("header"),
    );
    response
}

fn json_response(index: u64, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(value.to_string())));
    let headers = response.headers_mut();
    headers.insert("Content-Type", "application/json".parse().expect("header"));
    headers.insert("X-Consul-Index", index.into());
    headers.insert("X-Consul-KnownLeader", "true".parse().expect("header"));
    headers.insert("X-Consul-LastContact", "0".parse().expect("header"));
    response
}

/// The same response, cut off halfway through its body.
async fn cut_off(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    parts
        .headers
        .insert("Content-Length", bytes.len().max(1).into());
    let frames = futures::stream::iter(vec![
        Ok(Frame::data(half)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "cut off by the double",
        )),
    ]);
    Response::from_parts(parts, StreamBody::new(frames).boxed())
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(&v.replace('+', " "))),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if let Some(byte) = escaped {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go's `time.ParseDuration` for the units Consul's docs use: `ns`, `us`, `ms`, `s`, `m`, `h`,
/// combined (`1m30s`), with decimals (`1.5s`).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}
