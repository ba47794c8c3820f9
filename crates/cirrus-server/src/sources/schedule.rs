//! Schedules: each due tick of a schedule trigger becomes a durable asynchronous event,
//! which wakes the function even when it is scaled to zero.
//!
//! When each schedule last fired is stored. A tick missed while the server was down
//! fires once on start-up (not once per missed tick), with the first missed time as its
//! `scheduled_time`. A tick is claimed in the store (compare-and-set on the mark) before
//! its event is queued, so of several nodes exactly one fires it; a tick whose event
//! could not be queued is given back and tried again. The event's idempotency key is
//! the schedule and its time, so a tick claimed twice is still queued once.

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
        let mut marks = self.read_marks().await;
        let mut ticks = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.fire_due(&mut marks).await,
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn read_marks(&self) -> HashMap<String, u64> {
        match self.store.schedule_marks().await {
            Ok(marks) => marks.into_iter().collect(),
            Err(e) => {
                tracing::error!("reading schedule state failed: {e:#}; schedules start afresh");
                HashMap::new()
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
            let stored = marks.get(&trigger.id).copied();
            let last = stored.unwrap_or_else(|| created_ms(&trigger.created_at));
            let Some(due) = schedule.next_after(last) else {
                continue;
            };
            if due > now {
                continue;
            }
            // On time, the mark is the tick itself (no drift); after missed ticks it is
            // now, so they collapse into this one.
            let mark = if schedule.next_after(due).is_some_and(|n| n > now) {
                due
            } else {
                now
            };
            match self
                .store
                .claim_schedule_tick(&trigger.id, stored, mark)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // Another node fired it: follow the store.
                    *marks = self.read_marks().await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(trigger = %trigger.id, "claiming a schedule tick failed: {e:#}");
                    continue;
                }
            }
            marks.insert(trigger.id.clone(), mark);
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
                tracing::error!(trigger = %trigger.id, "queueing a schedule tick failed: {e}; giving it back");
                // Back to where it was, so the tick is tried again (by any node).
                if let Ok(true) = self
                    .store
                    .claim_schedule_tick(&trigger.id, Some(mark), last)
                    .await
                {
                    marks.insert(trigger.id.clone(), last);
                }
            }
        }
    }
}
