//! Deploy-time checks of where a function's results go against what fires it.
//!
//! A destination that feeds one of the function's own triggers (`on_success =
//! ["topic:orders"]` on a function subscribed to `orders`) makes every run start the
//! next: the queue grows until the pipeline depth limit cuts each chain, and every chain
//! costs invocations. Such a one-function loop is visible in one function's config and
//! triggers, so it is refused when either is deployed, whichever comes second.

use crate::spec::{Destination, FunctionConfig};
use crate::trigger::{BucketEvent, BucketTrigger, TriggerSpec};

/// A destination of a function whose events would fire the same function again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfLoop {
    /// `on_success` or `on_failure`.
    pub field: &'static str,
    pub destination: Destination,
    /// Why it comes back, as a clause ("publishes to topic \"t\", which …").
    pub reason: String,
    /// The trigger it feeds (`None` for the function's own name).
    pub trigger: Option<TriggerSpec>,
}

impl std::fmt::Display for SelfLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} destination {} {}, so each result would run the function again (a one-function loop)",
            self.field, self.destination, self.reason
        )
    }
}

/// The first destination of `config` that leads straight back to `function` through one
/// of `triggers` (or by name), if any.
pub fn self_loop(
    function: &str,
    config: &FunctionConfig,
    triggers: &[TriggerSpec],
) -> Option<SelfLoop> {
    let outcomes = config
        .on_success
        .iter()
        .map(|d| ("on_success", d))
        .chain(config.on_failure.iter().map(|d| ("on_failure", d)));
    for (field, destination) in outcomes {
        if let Some((reason, trigger)) = comes_back(function, destination, triggers) {
            return Some(SelfLoop {
                field,
                destination: destination.clone(),
                reason,
                trigger: trigger.cloned(),
            });
        }
    }
    None
}

fn comes_back<'t>(
    function: &str,
    destination: &Destination,
    triggers: &'t [TriggerSpec],
) -> Option<(String, Option<&'t TriggerSpec>)> {
    let fed = |found: Option<&'t TriggerSpec>, reason: String| found.map(|t| (reason, Some(t)));
    match destination {
        Destination::Function(name) if name == function => {
            Some(("sends its results to the function itself".to_owned(), None))
        }
        Destination::Topic(topic) => fed(
            triggers
                .iter()
                .find(|t| matches!(t, TriggerSpec::Topic(x) if x == topic)),
            format!("publishes to topic {topic:?}, which the function subscribes to"),
        ),
        Destination::Kv(table) => fed(
            triggers
                .iter()
                .find(|t| matches!(t, TriggerSpec::Table(x) if x == table)),
            format!("writes rows of table {table:?}, whose changes trigger the function"),
        ),
        Destination::Bucket { bucket, key } => triggers.iter().find_map(|t| match t {
            TriggerSpec::Bucket(b) if fed_by(b, bucket, key) => Some((
                format!(
                    "writes objects into bucket {bucket:?} where the function's bucket trigger{} fires",
                    describe_filter(b)
                ),
                Some(t),
            )),
            _ => None,
        }),
        _ => None,
    }
}

fn describe_filter(b: &BucketTrigger) -> String {
    match (b.prefix.is_empty(), b.suffix.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(" (prefix {:?})", b.prefix),
        (true, false) => format!(" (suffix {:?})", b.suffix),
        (false, false) => format!(" (prefix {:?}, suffix {:?})", b.prefix, b.suffix),
    }
}

/// Whether an object written by a `bucket:BUCKET/TEMPLATE` destination can fire `trigger`.
fn fed_by(trigger: &BucketTrigger, bucket: &str, template: &str) -> bool {
    trigger.name == bucket
        && trigger.events.contains(&BucketEvent::Created)
        && template_can_match(template, &trigger.prefix, &trigger.suffix)
}

const PLACEHOLDERS: [&str; 2] = ["{key}", "{request_id}"];

/// Characters a `{request_id}` (a UUID as text) can produce.
fn uuid_char(c: char) -> bool {
    c.is_ascii_hexdigit() || c == '-'
}

/// Whether some key rendered from `template` can start with `prefix` and end with
/// `suffix`. `{key}` can be anything (it is the triggering object's key, which itself
/// matched the trigger); `{request_id}` only a UUID's characters. When unsure it answers
/// yes: a refused config can be changed, a loop costs invocations.
pub fn template_can_match(template: &str, prefix: &str, suffix: &str) -> bool {
    let first = PLACEHOLDERS
        .iter()
        .filter_map(|p| template.find(p).map(|at| (at, *p)))
        .min();
    let last = PLACEHOLDERS
        .iter()
        .filter_map(|p| template.rfind(p).map(|at| (at, *p)))
        .max();
    let (Some((head_end, first)), Some((tail_at, last))) = (first, last) else {
        return template.starts_with(prefix) && template.ends_with(suffix);
    };
    let head = &template[..head_end];
    let tail = &template[tail_at + last.len()..];
    // What the key must still supply after the literal head (resp. before the tail) comes
    // from the placeholder next to it.
    let head_ok = head.starts_with(prefix)
        || prefix
            .strip_prefix(head)
            .is_some_and(|rest| first != "{request_id}" || rest.chars().take(36).all(uuid_char));
    let tail_ok = tail.ends_with(suffix)
        || suffix.strip_suffix(tail).is_some_and(|rest| {
            last != "{request_id}" || rest.chars().rev().take(36).all(uuid_char)
        });
    head_ok && tail_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(on_success: &[&str], on_failure: Option<&str>) -> FunctionConfig {
        FunctionConfig {
            on_success: on_success.iter().map(|d| d.parse().unwrap()).collect(),
            on_failure: on_failure.map(|d| d.parse().unwrap()),
            ..Default::default()
        }
    }

    fn bucket(name: &str, prefix: &str, suffix: &str, events: &[BucketEvent]) -> TriggerSpec {
        TriggerSpec::Bucket(BucketTrigger {
            name: name.into(),
            events: events.to_vec(),
            prefix: prefix.into(),
            suffix: suffix.into(),
        })
    }

    #[test]
    fn a_topic_the_function_subscribes_to_is_a_loop_either_way() {
        let triggers = [TriggerSpec::Topic("orders".into())];
        let found = self_loop("f", &config(&["topic:orders"], None), &triggers).unwrap();
        assert_eq!(found.field, "on_success");
        let text = found.to_string();
        assert!(
            text.contains("topic:orders") && text.contains("one-function loop"),
            "{text}"
        );
        let found = self_loop("f", &config(&[], Some("topic:orders")), &triggers).unwrap();
        assert_eq!(found.field, "on_failure");
        assert_eq!(
            self_loop("f", &config(&["topic:other"], None), &triggers),
            None
        );
        // Without the trigger, publishing to the topic is fine.
        assert_eq!(self_loop("f", &config(&["topic:orders"], None), &[]), None);
    }

    #[test]
    fn tables_functions_and_dead_letters() {
        let triggers = [TriggerSpec::Table("photos".into())];
        assert!(self_loop("f", &config(&["kv:photos"], None), &triggers).is_some());
        assert!(self_loop("f", &config(&["kv:summaries"], None), &triggers).is_none());
        assert!(self_loop("f", &config(&[], Some("function:f")), &[]).is_some());
        assert!(self_loop("f", &config(&["function:f"], None), &[]).is_some());
        assert!(self_loop("f", &config(&["function:g"], Some("function:g")), &[]).is_none());
        assert!(self_loop("f", &config(&[], Some("dlq")), &triggers).is_none());
    }

    #[test]
    fn buckets_loop_only_when_the_written_key_can_match() {
        let loops = |destination: &str, trigger: &TriggerSpec| {
            self_loop(
                "f",
                &config(&[destination], None),
                std::slice::from_ref(trigger),
            )
            .is_some()
        };
        let created = [BucketEvent::Created];
        let any = bucket("uploads", "", "", &created);
        assert!(loops("bucket:uploads/out/{key}", &any));
        assert!(!loops("bucket:thumbs/{key}", &any));
        // The photo example: .ppm uploads, thumbnails elsewhere.
        let ppm = bucket("uploads", "", ".ppm", &created);
        assert!(loops("bucket:uploads/small/{key}", &ppm));
        assert!(!loops("bucket:uploads/small/{key}.json", &ppm));
        assert!(!loops("bucket:uploads/{request_id}", &ppm));
        let photos = bucket("uploads", "photos/", "", &created);
        assert!(!loops("bucket:uploads/thumbs/{key}", &photos));
        assert!(loops("bucket:uploads/photos/{key}", &photos));
        assert!(loops("bucket:uploads/{key}", &photos));
        // Writes are creations: a trigger on removals only is not fed.
        let removed = bucket("uploads", "", "", &[BucketEvent::Removed]);
        assert!(!loops("bucket:uploads/x", &removed));
    }

    #[test]
    fn key_templates_against_prefixes_and_suffixes() {
        assert!(template_can_match("fixed.txt", "fix", ".txt"));
        assert!(!template_can_match("fixed.txt", "in/", ""));
        assert!(template_can_match("{key}", "in/", ".ppm"));
        assert!(template_can_match("in{key}", "in/", ""));
        assert!(!template_can_match("out/{key}", "in/", ""));
        assert!(template_can_match("{request_id}", "01", ""));
        assert!(!template_can_match("{request_id}", "in/", ""));
        assert!(!template_can_match("x/{request_id}", "", ".ppm"));
        assert!(template_can_match("x/{request_id}/{key}", "x/", ".ppm"));
    }
}
