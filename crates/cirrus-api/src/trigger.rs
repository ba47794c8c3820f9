//! Triggers: what fires a function besides `/fn/{name}` and the invoke API.

use serde::{Deserialize, Serialize};

/// Path prefixes of the platform itself; custom routes may not shadow them.
pub const RESERVED_PREFIXES: &[&str] = &[
    "/v1/",
    "/v1",
    "/fn/",
    "/fn",
    "/ui/",
    "/ui",
    "/metrics/",
    "/metrics",
];
const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// `{"route": "GET /orders/{id}"}` or `{"topic": "orders"}` (in `cirrus.toml`:
/// `triggers = [{ route = "GET /orders/{id}" }, { topic = "orders" }]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerSpec {
    /// An HTTP route: an optional method, then a path whose segments are literals,
    /// `{name}` parameters, or a final `{*rest}`.
    Route(String),
    /// Every message published to the topic becomes an asynchronous event.
    Topic(String),
    /// `rate(N minutes)` or a cron expression (`TZ=Zone` prefix for a time zone); each
    /// tick becomes an asynchronous event.
    Schedule(String),
    /// Every change of a KV table (insert, update, delete) becomes an asynchronous event,
    /// delivered in commit order per key.
    Table(String),
    /// Objects created in or removed from a bucket of the object API become asynchronous
    /// events carrying an S3 event notification document.
    Bucket(BucketTrigger),
}

/// Which object changes of a bucket fire a function: `{ name = "uploads", events =
/// ["created"], prefix = "photos/", suffix = ".ppm" }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketTrigger {
    pub name: String,
    #[serde(default = "all_bucket_events")]
    pub events: Vec<BucketEvent>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub suffix: String,
}

/// `created` is S3's `ObjectCreated:*`, `removed` its `ObjectRemoved:*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketEvent {
    Created,
    Removed,
}

impl std::str::FromStr for BucketEvent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "created" | "ObjectCreated:*" => Ok(Self::Created),
            "removed" | "ObjectRemoved:*" => Ok(Self::Removed),
            other => Err(format!(
                "unknown bucket event {other:?}: use created or removed"
            )),
        }
    }
}

fn all_bucket_events() -> Vec<BucketEvent> {
    vec![BucketEvent::Created, BucketEvent::Removed]
}

impl BucketTrigger {
    /// Whether a change of `key` of kind `event` in `bucket` fires this trigger.
    pub fn matches(&self, bucket: &str, key: &str, event: BucketEvent) -> bool {
        self.name == bucket
            && self.events.contains(&event)
            && key.starts_with(&self.prefix)
            && key.ends_with(&self.suffix)
    }
}

/// Bucket names as S3 allows them: 3–63 of lowercase letters, digits, `.` and `-`,
/// starting and ending with a letter or digit.
pub fn valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

/// A trigger as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerInfo {
    pub id: String,
    pub function: String,
    #[serde(flatten)]
    pub spec: TriggerSpec,
    pub created_at: String,
}

/// A parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// `None` matches any method.
    pub method: Option<String>,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

impl RoutePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (method, path) = match text.split_once(' ') {
            Some((m, p)) => (Some(m.to_ascii_uppercase()), p.trim()),
            None => (None, text),
        };
        if let Some(m) = &method {
            if !HTTP_METHODS.contains(&m.as_str()) {
                return Err(format!("unknown method {m:?} in route {text:?}"));
            }
        }
        if !path.starts_with('/') {
            return Err(format!("route path {path:?} must start with '/'"));
        }
        if RESERVED_PREFIXES
            .iter()
            .any(|p| path == *p || (p.ends_with('/') && path.starts_with(p)))
        {
            return Err(format!(
                "route path {path:?} is reserved by Cirrus (/v1, /fn, /ui, /metrics)"
            ));
        }
        let mut segments = Vec::new();
        let mut names = std::collections::HashSet::new();
        let parts: Vec<&str> = path[1..].split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let segment = if let Some(inner) =
                part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                let (rest, name) = match inner.strip_prefix('*') {
                    Some(name) => (true, name),
                    None => (false, inner),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("invalid parameter {part:?} in route {text:?}"));
                }
                if !names.insert(name.to_owned()) {
                    return Err(format!(
                        "parameter {name:?} appears twice in route {text:?}"
                    ));
                }
                if rest && i + 1 != parts.len() {
                    return Err(format!(
                        "{part:?} must be the last segment of route {text:?}"
                    ));
                }
                if rest {
                    Segment::Rest(name.to_owned())
                } else {
                    Segment::Param(name.to_owned())
                }
            } else if part.contains(['{', '}']) {
                return Err(format!(
                    "segment {part:?} of route {text:?} mixes text and a parameter"
                ));
            } else {
                Segment::Literal((*part).to_owned())
            };
            segments.push(segment);
        }
        Ok(Self { method, segments })
    }

    /// The pattern with parameter names erased: two routes with the same shape and an
    /// overlapping method conflict.
    pub fn shape(&self) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::Param(_) => "{}",
                Segment::Rest(_) => "{*}",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    pub fn conflicts_with(&self, other: &RoutePattern) -> bool {
        let methods_overlap = match (&self.method, &other.method) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        methods_overlap && self.shape() == other.shape()
    }

    /// Matches a request; on success the parameters, and a score preferring literal
    /// segments (so `/orders/new` beats `/orders/{id}`).
    pub fn matches(&self, method: &str, path: &str) -> Option<(Vec<(String, String)>, usize)> {
        if self
            .method
            .as_deref()
            .is_some_and(|m| m != method && !(m == "GET" && method == "HEAD"))
        {
            return None;
        }
        let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        let mut params = Vec::new();
        let mut literals = 0;
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest(name) => {
                    params.push((
                        name.clone(),
                        parts.get(i..).map(|p| p.join("/")).unwrap_or_default(),
                    ));
                    return Some((params, literals));
                }
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                    literals += 1;
                }
                Segment::Param(name) => match parts.get(i) {
                    Some(value) if !value.is_empty() => {
                        params.push((name.clone(), (*value).to_owned()))
                    }
                    _ => return None,
                },
            }
        }
        (parts.len() == self.segments.len()).then_some((params, literals))
    }
}

/// Topic names: 1–128 of `[A-Za-z0-9._-]`.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 128
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    ok.then_some(()).ok_or_else(|| {
        format!("invalid topic {topic:?}: use 1-128 letters, digits, '.', '_' or '-'")
    })
}

impl TriggerSpec {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            TriggerSpec::Route(route) => RoutePattern::parse(route).map(drop),
            TriggerSpec::Topic(topic) => validate_topic(topic),
            TriggerSpec::Schedule(s) => crate::schedule::Schedule::parse(s).map(drop),
            TriggerSpec::Table(t) => {
                crate::spec::validate_name(t).map_err(|e| e.message.replace("name", "table"))
            }
            TriggerSpec::Bucket(b) => {
                if !valid_bucket_name(&b.name) {
                    return Err(format!(
                        "invalid bucket name {:?}: use 3-63 lowercase letters, digits, '.' or '-'",
                        b.name
                    ));
                }
                if b.events.is_empty() {
                    return Err(
                        "a bucket trigger needs at least one event (created, removed)".into(),
                    );
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_match_and_conflict() {
        let r = RoutePattern::parse("GET /orders/{id}").unwrap();
        assert_eq!(
            r.matches("GET", "/orders/42"),
            Some((vec![("id".into(), "42".into())], 1))
        );
        assert_eq!(r.matches("HEAD", "/orders/42").map(|m| m.1), Some(1));
        assert_eq!(r.matches("POST", "/orders/42"), None);
        assert_eq!(r.matches("GET", "/orders"), None);
        assert_eq!(r.matches("GET", "/orders/42/items"), None);
        let any = RoutePattern::parse("/files/{*path}").unwrap();
        assert_eq!(
            any.matches("PUT", "/files/a/b.txt").unwrap().0,
            vec![("path".to_owned(), "a/b.txt".to_owned())]
        );
        assert!(r.conflicts_with(&RoutePattern::parse("GET /orders/{order}").unwrap()));
        assert!(r.conflicts_with(&RoutePattern::parse("/orders/{x}").unwrap()));
        assert!(!r.conflicts_with(&RoutePattern::parse("POST /orders/{id}").unwrap()));
        assert!(!r.conflicts_with(&RoutePattern::parse("GET /orders/new").unwrap()));
    }

    #[test]
    fn bad_routes_and_topics_are_refused() {
        for bad in [
            "orders",
            "FETCH /x",
            "/v1/functions",
            "/fn/x",
            "/ui/x",
            "/ui/",
            "GET /metrics/x",
            "/metrics",
            "/a/{}",
            "/a/{x}/{x}",
            "/a/{*r}/b",
            "/a/x{y}",
        ] {
            assert!(RoutePattern::parse(bad).is_err(), "{bad}");
        }
        assert!(validate_topic("orders.created").is_ok());
        assert!(validate_topic("no spaces").is_err());
        let spec: TriggerSpec = serde_json::from_str(r#"{"route":"GET /a"}"#).unwrap();
        assert_eq!(spec, TriggerSpec::Route("GET /a".into()));
        assert!(serde_json::from_str::<TriggerSpec>(r#"{"queue":"x"}"#).is_err());
    }
}
