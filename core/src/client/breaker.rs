//! Outlier ejection: a node that fails is taken out of balancing and probed out of band with
//! gRPC health checks until one succeeds, so no user's call is ever the probe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::cache::{Cache, Target};
use super::link::Link;

/// How the client ejects failing nodes (`Client::breaker`).
///
/// A node is ejected on a failure that says the node, not the call, is at fault: a connection
/// that fails, an `UNAVAILABLE` status in the response headers (a trailers-only answer), or no
/// response at all before the call's deadline when the call waited at least
/// `unresponsive_after`. An ejected node takes no calls; it is probed with
/// `grpc.health.v1.Health/Check` after `base_backoff`, then after a back-off that doubles up to
/// `max_backoff` (each jittered by ±20 %) while probes fail, and takes calls again once a probe
/// answers `SERVING`. A node let back in whose next call fails again is ejected at once, with
/// twice its last back-off: a node that looks healthy to probes but fails its calls costs one
/// call per back-off round.
///
/// When every node of a service is ejected, the service's breaker is *open*: calls still go to
/// the node whose last failure is the oldest (a service is never left with no node to try),
/// unless a [`Fallback`](super::Fallback) answers for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Whether failing nodes are ejected at all (`false`: every node takes calls in turn).
    pub enabled: bool,
    /// The first back-off of an ejected node before its probe [default: 1s].
    pub base_backoff: Duration,
    /// The longest back-off between probes [default: 30s].
    pub max_backoff: Duration,
    /// How long a probe waits for its answer [default: 1s].
    pub probe_timeout: Duration,
    /// A call that passes its deadline with no response ejects the node only if it waited at
    /// least this long: a caller's own tight deadline says nothing about the node
    /// [default: 500ms].
    pub unresponsive_after: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(1),
            unresponsive_after: Duration::from_millis(500),
        }
    }
}

impl BreakerConfig {
    /// No ejection: failing nodes keep their turn.
    pub fn off() -> Self {
        BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        }
    }
}

/// What the breaker knows of one node that failed lately.
struct NodeState {
    /// Out of balancing until a probe (or a call made while every node was out) succeeds.
    ejected: bool,
    /// When its last call failed.
    last_failure: Instant,
    /// The back-off of its last probe round.
    backoff: Duration,
    /// Let back in by a probe and no call succeeded since: its next failure ejects it again
    /// with a longer back-off.
    probation: bool,
}

/// The ejection state of one client's nodes, by address.
pub(super) struct Breaker {
    pub(super) config: BreakerConfig,
    nodes: Mutex<HashMap<String, NodeState>>,
    /// Whether any node is ejected: lets the common call skip the lock.
    any_ejected: AtomicBool,
    /// Whether `nodes` may hold anything: lets a successful call skip the lock.
    any_tracked: AtomicBool,
    /// Where the probes look whether a node is still registered.
    cache: Weak<Cache>,
}

impl Breaker {
    pub(super) fn new(config: BreakerConfig, cache: Weak<Cache>) -> Self {
        Breaker {
            config,
            nodes: Mutex::default(),
            any_ejected: AtomicBool::new(false),
            any_tracked: AtomicBool::new(false),
            cache,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeState>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any node may be ejected.
    pub(super) fn any_ejected(&self) -> bool {
        self.any_ejected.load(Ordering::Relaxed)
    }

    /// The ejected addresses and when each last failed.
    pub(super) fn ejected(&self) -> HashMap<String, Instant> {
        self.lock()
            .iter()
            .filter(|(_, state)| state.ejected)
            .map(|(address, state)| (address.clone(), state.last_failure))
            .collect()
    }

    /// Whether every one of `targets` is ejected: the service's breaker is open.
    pub(super) fn open(&self, targets: &[Target]) -> bool {
        if !self.any_ejected() || targets.is_empty() {
            return false;
        }
        let nodes = self.lock();
        targets.iter().all(|t| {
            nodes
                .get(&t.node.address)
                .is_some_and(|state| state.ejected)
        })
    }

    /// A call to `target` succeeded: it is healthy (let back in, if it was out).
    pub(super) fn succeeded(&self, service: &str, target: &Target) {
        if !self.any_tracked.load(Ordering::Relaxed) {
            return;
        }
        let mut nodes = self.lock();
        if let Some(state) = nodes.remove(&target.node.address)
            && state.ejected
        {
            tracing::info!(%service, node = %target.node.id, address = %target.node.address, "node answered a call; back in balancing");
            crate::metrics::recovered(service, &target.node.id);
        }
        self.refresh_flags(&nodes);
    }

    fn refresh_flags(&self, nodes: &HashMap<String, NodeState>) {
        self.any_tracked.store(!nodes.is_empty(), Ordering::Relaxed);
        self.any_ejected
            .store(nodes.values().any(|s| s.ejected), Ordering::Relaxed);
    }

    /// A call to `target` of `service` failed because of the node (`why`): ejects it and starts
    /// its probe, unless it is out already.
    pub(super) fn failed(self: &Arc<Self>, service: &str, target: &Target, why: &str) {
        if !self.config.enabled {
            return;
        }
        let now = Instant::now();
        let mut nodes = self.lock();
        let state = nodes
            .entry(target.node.address.clone())
            .or_insert(NodeState {
                ejected: false,
                last_failure: now,
                backoff: Duration::ZERO,
                probation: false,
            });
        state.last_failure = now;
        if state.ejected {
            return;
        }
        state.ejected = true;
        state.backoff = if state.probation {
            (state.backoff * 2).min(self.config.max_backoff)
        } else {
            self.config.base_backoff
        };
        state.probation = false;
        let backoff = state.backoff;
        self.refresh_flags(&nodes);
        drop(nodes);
        let (node, address) = (&target.node.id, &target.node.address);
        tracing::warn!(%service, %node, %address, reason = %why, probe_in = %humantime::format_duration(backoff), "node ejected from balancing");
        crate::metrics::ejected(service, node);
        tokio::spawn(probe(
            Arc::downgrade(self),
            service.to_string(),
            node.clone(),
            address.clone(),
            target.link.clone(),
            backoff,
        ));
    }

    /// Whether `address` is still a node of `service` (an unknown service counts as yes: the
    /// next call resolves it afresh).
    fn listed(&self, service: &str, address: &str) -> bool {
        let Some(cache) = self.cache.upgrade() else {
            return false;
        };
        cache
            .get(service)
            .is_none_or(|resolved| resolved.targets.iter().any(|t| t.node.address == address))
    }
}

/// `backoff` ±20 %, so the probes of many clients do not land together.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Probes an ejected node until it answers `SERVING`, then lets it back in on probation. Ends
/// early when the client is gone, the node left the registry, or a call let it back in.
async fn probe(
    breaker: Weak<Breaker>,
    service: String,
    node: String,
    address: String,
    link: Link,
    mut backoff: Duration,
) {
    let span = tracing::debug_span!("probe", %service, %node, %address);
    let _ = tracing::Instrument::instrument(
        async move {
            loop {
                tokio::time::sleep(jittered(backoff)).await;
                let Some(breaker) = breaker.upgrade() else {
                    return;
                };
                if !breaker.listed(&service, &address) {
                    tracing::debug!("node left the registry; probe ends");
                    let mut nodes = breaker.lock();
                    nodes.remove(&address);
                    breaker.refresh_flags(&nodes);
                    return;
                }
                if !breaker.lock().get(&address).is_some_and(|s| s.ejected) {
                    return;
                }
                let timeout = breaker.config.probe_timeout;
                let answer = tokio::time::timeout(
                    timeout,
                    HealthClient::new(link.clone()).check(HealthCheckRequest {
                        service: String::new(),
                    }),
                )
                .await;
                let failure = match answer {
                    Ok(Ok(reply)) if reply.get_ref().status() == ServingStatus::Serving => None,
                    Ok(Ok(reply)) => Some(format!("health is {:?}", reply.get_ref().status())),
                    Ok(Err(status)) => Some(format!(
                        "health check failed: {} {}",
                        crate::grpc::code_name(status.code()),
                        status.message()
                    )),
                    Err(_) => Some(format!(
                        "no health answer within {}",
                        humantime::format_duration(timeout)
                    )),
                };
                let mut nodes = breaker.lock();
                let Some(state) = nodes.get_mut(&address) else {
                    return;
                };
                if !state.ejected {
                    return;
                }
                match failure {
                    None => {
                        state.ejected = false;
                        state.probation = true;
                        state.backoff = backoff;
                        breaker.refresh_flags(&nodes);
                        drop(nodes);
                        tracing::info!(%service, %node, %address, "node passed its health probe; back in balancing");
                        crate::metrics::recovered(&service, &node);
                        return;
                    }
                    Some(why) => {
                        backoff = (backoff * 2).min(breaker.config.max_backoff);
                        state.backoff = backoff;
                        drop(nodes);
                        tracing::debug!(reason = %why, next_in = %humantime::format_duration(backoff), "probe failed; node stays ejected");
                    }
                }
            }
        },
        span,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Node;

    fn target(id: &str) -> Target {
        let address = format!("127.0.0.1:{}", 1 + id.len());
        let link = Link::plain(&address).expect("an address");
        Target::new(
            Node {
                id: id.to_string(),
                address,
                metadata: Default::default(),
            },
            link,
        )
    }

    /// A breaker whose probes wait past the end of the test.
    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(
            BreakerConfig {
                base_backoff: Duration::from_secs(100),
                max_backoff: Duration::from_secs(350),
                ..BreakerConfig::default()
            },
            Weak::new(),
        ))
    }

    /// What a probe that passed does.
    fn readmit(breaker: &Breaker, target: &Target) {
        let mut nodes = breaker.lock();
        let state = nodes.get_mut(&target.node.address).expect("tracked");
        state.ejected = false;
        state.probation = true;
        breaker.refresh_flags(&nodes);
    }

    fn backoff(breaker: &Breaker, target: &Target) -> Duration {
        breaker.lock()[&target.node.address].backoff
    }

    #[tokio::test]
    async fn a_failing_node_is_ejected_and_the_breaker_opens_when_all_are() {
        let breaker = breaker();
        let (a, b) = (target("a"), target("bb"));
        let both = [target("a"), target("bb")];
        assert!(!breaker.any_ejected());
        breaker.failed("greeter", &a, "test");
        assert!(breaker.ejected().contains_key(&a.node.address));
        assert!(!breaker.open(&both));
        breaker.failed("greeter", &b, "test");
        assert!(breaker.open(&both));
        // A call that succeeds (made while every node was out) lets its node back in.
        breaker.succeeded("greeter", &a);
        assert!(!breaker.open(&both));
        assert_eq!(breaker.ejected().len(), 1);
    }

    #[tokio::test]
    async fn a_readmitted_node_that_fails_again_waits_twice_as_long_up_to_the_most() {
        let breaker = breaker();
        let a = target("a");
        breaker.failed("greeter", &a, "test");
        assert_eq!(backoff(&breaker, &a), Duration::from_secs(100));
        for want in [200, 350, 350] {
            readmit(&breaker, &a);
            assert!(!breaker.any_ejected());
            breaker.failed("greeter", &a, "test");
            assert!(breaker.any_ejected(), "re-ejected at its first failure");
            assert_eq!(backoff(&breaker, &a), Duration::from_secs(want));
        }
        // A call that succeeds ends the probation: the next ejection starts over.
        readmit(&breaker, &a);
        breaker.succeeded("greeter", &a);
        breaker.failed("greeter", &a, "test");
        assert_eq!(backoff(&breaker, &a), Duration::from_secs(100));
    }

    #[tokio::test]
    async fn off_ejects_nothing() {
        let breaker = Arc::new(Breaker::new(BreakerConfig::off(), Weak::new()));
        breaker.failed("greeter", &target("a"), "test");
        assert!(!breaker.any_ejected());
    }
}
