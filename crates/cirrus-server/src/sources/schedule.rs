//! Schedules: each due tick of a schedule trigger becomes a durable asynchronous event,
//! which wakes the function even when it is scaled to zero.
//!
//! When each schedule last fired is stored. A tick missed while the server was down
//! fires once on start-up (not once per missed tick), with the first missed time as its
//! `scheduled_time`. The event's idempotency key is the schedule and its time, so a crash
//! between queueing an event and storing the mark cannot fire the same tick twice.

use crate::clock::{rfc3339, Clock};
use crate::queue::EventSink;
use crate::registry::Registry;
use crate::store::{FunctionStore, NewEvent};
use cirrus_api::schedule::Schedule;
use cirrus_api::TriggerSpec;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::SCHEDULE_EVENT_TYPE;
/// How often schedules are looked at (their resolution).
const TICK: Duration = Duration::from_millis(250);

pub struct Scheduler {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn FunctionStore>,
    pub events: EventSink,
    pub clock: Arc<dyn Clock>,
}

fn created_ms(created_at: &str) -> u64 {
    humantime::parse_rfc3339(created_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

impl Scheduler {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let store = self.store.clone();
        let mut marks: HashMap<String, u64> =
            match tokio::task::spawn_blocking(move || store.schedule_marks()).await {
                Ok(Ok(marks)) => marks.into_iter().collect(),
                other => {
                    tracing::error!(
                        "reading schedule state failed: {other:?}; schedules start afresh"
                    );
                    HashMap::new()
                }
            };
        let mut ticks = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.fire_due(&mut marks).await,
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Fires every schedule whose next tick after its last firing has come.
    pub async fn fire_due(&self, marks: &mut HashMap<String, u64>) {
        let now = self.clock.now_ms();
        for trigger in self.registry.triggers(None) {
            let TriggerSpec::Schedule(expression) = &trigger.spec else {
                continue;
            };
            let Ok(schedule) = Schedule::parse(expression) else {
                continue;
            };
            let last = marks
                .get(&trigger.id)
                .copied()
                .unwrap_or_else(|| created_ms(&trigger.created_at));
            let Some(due) = schedule.next_after(last) else {
                continue;
            };
            if due > now {
                continue;
            }
            let event = NewEvent::fired(
                trigger.function.clone(),
                cirrus_api::Trigger::Schedule,
                Some(SCHEDULE_EVENT_TYPE.into()),
                Some(format!("/schedules/{}", trigger.id)),
                now,
            )
            .with_json(
                serde_json::to_vec(&serde_json::json!({
                    "trigger": trigger.id,
                    "schedule": expression,
                    "scheduled_time": rfc3339(due),
                }))
                .unwrap_or_default(),
            )
            .deduplicated_by(Some(format!("schedule:{}:{due}", trigger.id)));
            if let Err(e) = self.events.enqueue(event).await {
                tracing::error!(trigger = %trigger.id, "queueing a schedule tick failed: {e}");
                continue;
            }
            // On time, the mark is the tick itself (no drift); after missed ticks it is
            // now, so they collapse into this one.
            let mark = if schedule.next_after(due).is_some_and(|n| n > now) {
                due
            } else {
                now
            };
            marks.insert(trigger.id.clone(), mark);
            let (store, id) = (self.store.clone(), trigger.id.clone());
            match tokio::task::spawn_blocking(move || store.set_schedule_mark(&id, mark)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(trigger = %trigger.id, "storing schedule state failed: {e:#}")
                }
                Err(e) => {
                    tracing::error!(trigger = %trigger.id, "storing schedule state failed: {e}")
                }
            }
        }
    }
}
