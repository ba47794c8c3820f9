//! Triggers that hold a connection to a system outside Cirrus (a broker subscription):
//! one task per trigger, started when the trigger appears, stopped when it goes or the
//! server shuts down, restarted if it ever ends. Each reports how it is doing, for
//! `cirrus trigger ls`, the dashboard and `/metrics`.
//!
//! A task only acknowledges a message to its broker after the event is durable in the
//! queue, so stopping a task at any point loses nothing: the broker delivers again.

use super::{mqtt, nats, postgres};
use crate::clock::{rfc3339, Clock};
use crate::metrics::{Metrics, TriggerLabels};
use crate::queue::EventSink;
use crate::registry::Registry;
use crate::store::NewEvent;
use cirrus_api::trigger::SourceState;
use cirrus_api::{TriggerInfo, TriggerSpec};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How soon a trigger added or removed starts or stops its connection.
const RECONCILE: Duration = Duration::from_millis(500);
/// A task that ended (it should not: it panicked) is started again after this.
const RESTART_AFTER: Duration = Duration::from_secs(10);

/// What the connection-holding sources share.
pub struct Context {
    pub registry: Arc<Registry>,
    pub events: EventSink,
    pub clock: Arc<dyn Clock>,
    pub states: Arc<SourceStates>,
    pub metrics: Arc<Metrics>,
    /// The largest event body the queue takes.
    pub max_event_bytes: usize,
    /// Cluster mode: what only one node at a time may hold (an MQTT session).
    pub leases: Option<Arc<crate::store::jetstream::leases::Leases>>,
}

/// The state of every connection-holding trigger, by trigger id.
#[derive(Default)]
pub struct SourceStates(Mutex<HashMap<String, SourceState>>);

impl SourceStates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SourceState>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, trigger: &str) -> Option<SourceState> {
        self.lock().get(trigger).cloned()
    }

    /// `triggers` with the state of those that hold a connection filled in.
    pub fn annotate(&self, mut triggers: Vec<TriggerInfo>) -> Vec<TriggerInfo> {
        let states = self.lock();
        for trigger in &mut triggers {
            if holds_connection(&trigger.spec) {
                trigger.state = Some(states.get(&trigger.id).cloned().unwrap_or_default());
            }
        }
        triggers
    }
}

/// Whether a trigger kind is served by a task of its own here.
pub fn holds_connection(spec: &TriggerSpec) -> bool {
    matches!(
        spec,
        TriggerSpec::Mqtt(_) | TriggerSpec::Nats(_) | TriggerSpec::Postgres(_)
    )
}

/// One trigger's task's view of its state and metrics.
pub struct Reporter {
    id: String,
    labels: TriggerLabels,
    context: Arc<Context>,
}

impl Reporter {
    fn update(&self, f: impl FnOnce(&mut SourceState)) {
        f(self
            .context
            .states
            .lock()
            .entry(self.id.clone())
            .or_default());
    }

    pub fn connected(&self) {
        self.update(|s| s.connected = true);
        self.context.metrics.source_connected(&self.labels, true);
    }

    /// The connection is down (or never came up), and why.
    pub fn disconnected(&self, error: &str) {
        self.failed(error);
        self.update(|s| s.connected = false);
        self.context.metrics.source_connected(&self.labels, false);
    }

    /// Something went wrong that did not take the connection down.
    pub fn failed(&self, error: &str) {
        tracing::warn!(trigger = %self.id, "{error}");
        let at = rfc3339(self.context.clock.now_ms());
        self.update(|s| {
            s.last_error = Some(error.to_owned());
            s.last_error_at = Some(at);
        });
    }

    /// A message became a durable event.
    pub fn received(&self) {
        self.update(|s| s.messages += 1);
        self.context.metrics.source_message(&self.labels);
    }

    fn removed(&self) {
        self.context.states.lock().remove(&self.id);
        self.context.metrics.source_removed(&self.labels);
    }
}

/// Commits the event of one message, retrying until the queue takes it: the message is
/// acknowledged only after, so its broker holds it meanwhile. A message too large to be
/// an event is reported instead; holding it would block the subscription forever.
pub async fn commit(context: &Context, reporter: &Reporter, event: NewEvent) {
    if event.data.len() > context.max_event_bytes {
        reporter.failed(&format!(
            "a message on {:?} of {} bytes is larger than the event limit ({} bytes) and was not delivered",
            event.subject.as_deref().unwrap_or(""),
            event.data.len(),
            context.max_event_bytes
        ));
        return;
    }
    let mut backoff = Backoff::default();
    loop {
        match context.events.enqueue(event.clone()).await {
            Ok(_) => {
                reporter.received();
                return;
            }
            Err(e) => {
                reporter.failed(&format!("queueing a message: {}", e.message));
                tokio::time::sleep(backoff.wait()).await;
            }
        }
    }
}

/// Doubling waits between reconnects, from one second up to half a minute.
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_secs(1))
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// The wait before the next attempt (with jitter, so many triggers on one broker do
    /// not reconnect in step).
    pub fn wait(&mut self) -> Duration {
        let wait = self.0.mul_f64(rand::random_range(0.5..1.0));
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
        wait
    }
}

struct Running {
    spec: TriggerSpec,
    task: tokio::task::JoinHandle<()>,
    reporter: Arc<Reporter>,
}

/// Keeps one task per connection-holding trigger until shutdown.
pub async fn run(context: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut ended: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut ticks = tokio::time::interval(RECONCILE);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => break,
        }
        let wanted: Vec<TriggerInfo> = context
            .registry
            .triggers(None)
            .into_iter()
            .filter(|t| holds_connection(&t.spec))
            .collect();
        running.retain(|id, run| {
            if run.task.is_finished() {
                ended.insert(id.clone(), tokio::time::Instant::now() + RESTART_AFTER);
            }
            let keep =
                !run.task.is_finished() && wanted.iter().any(|t| &t.id == id && t.spec == run.spec);
            if !keep {
                run.task.abort();
                run.reporter.removed();
                if !wanted.iter().any(|t| &t.id == id) {
                    retire(id, &run.spec);
                }
            }
            keep
        });
        let now = tokio::time::Instant::now();
        ended.retain(|_, at| *at > now);
        for trigger in wanted {
            if running.contains_key(&trigger.id) || ended.contains_key(&trigger.id) {
                continue;
            }
            let reporter = Arc::new(Reporter {
                id: trigger.id.clone(),
                labels: TriggerLabels {
                    function: trigger.function.clone(),
                    trigger: trigger.id.clone(),
                    kind: kind(&trigger.spec).to_owned(),
                },
                context: context.clone(),
            });
            reporter.update(|_| {});
            let task = match &trigger.spec {
                TriggerSpec::Mqtt(spec) => tokio::spawn(mqtt::run(
                    context.clone(),
                    trigger.clone(),
                    spec.clone(),
                    reporter.clone(),
                )),
                TriggerSpec::Nats(spec) => tokio::spawn(nats::run(
                    context.clone(),
                    trigger.clone(),
                    spec.clone(),
                    reporter.clone(),
                )),
                TriggerSpec::Postgres(spec) => tokio::spawn(postgres::run(
                    context.clone(),
                    trigger.clone(),
                    spec.clone(),
                    reporter.clone(),
                )),
                _ => continue,
            };
            running.insert(
                trigger.id.clone(),
                Running {
                    spec: trigger.spec,
                    task,
                    reporter,
                },
            );
        }
    }
    // Every connection is closed before the leases are handed back, so the node that
    // takes a trigger over never shares its session with this one.
    for run in running.into_values() {
        run.task.abort();
        let _ = run.task.await;
    }
    if let Some(leases) = &context.leases {
        leases.release_all().await;
    }
}

/// Cleans up after a trigger that was removed, where the source left something behind
/// outside Cirrus (a capture trigger in a database).
fn retire(id: &str, spec: &TriggerSpec) {
    if let TriggerSpec::Postgres(spec) = spec {
        let (id, spec) = (id.to_owned(), spec.clone());
        tokio::spawn(async move {
            if let Err(e) = postgres::uninstall(&id, &spec).await {
                tracing::warn!(trigger = %id, "removing the capture from {}: {e}", spec.table);
            }
        });
    }
}

fn kind(spec: &TriggerSpec) -> &'static str {
    match spec {
        TriggerSpec::Mqtt(_) => "mqtt",
        TriggerSpec::Nats(_) => "nats",
        TriggerSpec::Postgres(_) => "postgres",
        _ => "other",
    }
}
