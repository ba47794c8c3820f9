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
    /// Messages on an MQTT broker's topics matching a filter become asynchronous
    /// events, acknowledged to the broker once they are durable.
    Mqtt(MqttTrigger),
    /// Messages on a NATS subject (at most once), or from a JetStream stream through a
    /// durable consumer (at least once, acknowledged once durable), become events.
    Nats(NatsTrigger),
    /// Inserts, updates and deletes of a PostgreSQL table become events, in commit order
    /// per primary key.
    Postgres(PostgresTrigger),
}

/// A PostgreSQL table whose changes fire a function: `{ url =
/// "postgres://app@db:5432/shop", table = "orders" }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTrigger {
    /// `postgres://USER@HOST[:PORT]/DATABASE[?sslmode=disable]`, without a password.
    pub url: String,
    /// `TABLE` or `SCHEMA.TABLE`.
    pub table: String,
    /// The server's environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Changes per invocation, as one `{"Records": [...]}` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// How long to wait for a batch to fill (`"5s"`, at most 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_window: Option<String>,
}

impl PostgresTrigger {
    fn validate(&self) -> Result<(), String> {
        let invalid = |why: &str| Err(format!("invalid PostgreSQL URL {:?}: {why}", self.url));
        let Some(rest) = self
            .url
            .strip_prefix("postgres://")
            .or_else(|| self.url.strip_prefix("postgresql://"))
        else {
            return invalid("use postgres://USER@HOST[:PORT]/DATABASE");
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
        {
            return invalid("a password does not belong in the URL: use password_env");
        }
        if authority.rsplit('@').next().unwrap_or("").is_empty() {
            return invalid("no host");
        }
        if self.url.contains(char::is_whitespace) {
            return invalid("it contains whitespace");
        }
        let query = self.url.split_once('?').map_or("", |(_, q)| q);
        if query.split('&').any(|p| {
            p.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("password"))
        }) {
            return invalid("a password does not belong in the URL: use password_env");
        }
        let parts: Vec<&str> = self.table.split('.').collect();
        let ok = parts.len() <= 2
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.len() <= 63
                    && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !p.starts_with(|c: char| c.is_ascii_digit())
            });
        if !ok {
            return Err(format!(
                "invalid table {:?}: use TABLE or SCHEMA.TABLE (letters, digits, '_')",
                self.table
            ));
        }
        if let Some(var) = &self.password_env {
            validate_env_name(var)?;
        }
        batching(self.batch_size, self.batch_window.as_deref()).map(drop)
    }
}

/// A NATS subscription: `{ subject = "orders.>", broker = "nats://127.0.0.1:4222" }`,
/// with `stream` (and optionally `consumer`) for durable JetStream delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTrigger {
    /// A subject (`*` one token, `>` the rest).
    pub subject: String,
    /// `nats://HOST[:PORT]` (4222) or `tls://HOST[:PORT]`.
    pub broker: String,
    /// A JetStream stream holding the subject: delivery through a durable consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The durable consumer's name (default `cirrus-` and the trigger's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The server's environment variable holding the password (with `username`) or
    /// the token (without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Messages per invocation (with a stream), as one `{"Records": [...]}` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// How long to wait for a batch to fill (`"5s"`, at most 5 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_window: Option<String>,
}

/// The most records in one batch.
pub const MAX_BATCH_SIZE: u32 = 10_000;
/// The longest wait for a batch to fill.
pub const MAX_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// Checks a trigger's batching settings; returns the batch size and window.
pub fn batching(
    size: Option<u32>,
    window: Option<&str>,
) -> Result<(u32, std::time::Duration), String> {
    let size = size.unwrap_or(1);
    if !(1..=MAX_BATCH_SIZE).contains(&size) {
        return Err(format!(
            "batch_size must be 1 to {MAX_BATCH_SIZE}, not {size}"
        ));
    }
    let window = match window {
        Some(text) => crate::duration::parse(text).map_err(|e| format!("batch_window: {e}"))?,
        None => std::time::Duration::ZERO,
    };
    if window > MAX_BATCH_WINDOW {
        return Err("batch_window must be at most 5m".into());
    }
    if size == 1 && !window.is_zero() {
        return Err("batch_window needs a batch_size above 1".into());
    }
    Ok((size, window))
}

/// NATS subjects as servers accept them: dot-separated non-empty tokens without
/// whitespace, `*` only as a whole token, `>` only as the whole last token.
pub fn validate_nats_subject(subject: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("invalid NATS subject {subject:?}: {why}"));
    if subject.is_empty() || subject.len() > 4096 {
        return invalid("use 1 to 4096 characters");
    }
    if subject.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return invalid("it contains whitespace");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return invalid("a token is empty (`..` or a leading or trailing `.`)");
        }
        if token.contains('>') && (*token != ">" || i != tokens.len() - 1) {
            return invalid("`>` must be the whole last token");
        }
        if token.contains('*') && *token != "*" {
            return invalid("`*` must be a whole token");
        }
    }
    Ok(())
}

/// JetStream stream and consumer names: 1–255 of letters, digits, `-` and `_`.
fn validate_nats_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then_some(())
        .ok_or_else(|| format!("invalid {what} {name:?}: use letters, digits, '-' or '_'"))
}

/// A NATS server address, checked: `nats://HOST[:PORT]` or `tls://HOST[:PORT]`.
pub fn parse_nats_server(broker: &str) -> Result<BrokerAddress, String> {
    BrokerAddress::parse_with(
        broker,
        "NATS server",
        &[("nats://", false, 4222), ("tls://", true, 4222)],
    )
}

/// A subscription on an MQTT broker: `{ filter = "sensors/+/temp", broker =
/// "mqtt://127.0.0.1:1883" }`. The password is never stored: `password_env` names a
/// variable of the server's environment that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTrigger {
    /// A topic filter (`+` one level, `#` the rest).
    pub filter: String,
    /// `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (8883, TLS).
    pub broker: String,
    /// `3.1.1` (the default) or `5`.
    #[serde(default, skip_serializing_if = "MqttProtocol::is_default")]
    pub protocol: MqttProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The server's environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A PEM file of CA certificates to trust for `mqtts://` instead of the built-in roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The client id of the persistent session (default `cirrus-` and the trigger's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// The MQTT protocol version a subscription speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MqttProtocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

impl MqttProtocol {
    fn is_default(&self) -> bool {
        *self == Self::V311
    }
}

impl std::str::FromStr for MqttProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "3.1.1" | "3" | "4" => Ok(Self::V311),
            "5" | "5.0" => Ok(Self::V5),
            other => Err(format!("unknown MQTT protocol {other:?}: use 3.1.1 or 5")),
        }
    }
}

/// An MQTT broker address, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerAddress {
    /// `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`, nothing else: credentials in the
    /// address would be stored and shown, so they are refused.
    pub fn parse(broker: &str) -> Result<Self, String> {
        Self::parse_with(
            broker,
            "MQTT broker",
            &[("mqtt://", false, 1883), ("mqtts://", true, 8883)],
        )
    }

    /// `SCHEME://HOST[:PORT]` for one of `schemes` (prefix, TLS, default port).
    fn parse_with(broker: &str, what: &str, schemes: &[(&str, bool, u16)]) -> Result<Self, String> {
        let invalid = |why: &str| format!("invalid {what} {broker:?}: {why}");
        let Some((rest, tls, default_port)) = schemes
            .iter()
            .find_map(|(prefix, tls, port)| Some((broker.strip_prefix(prefix)?, *tls, *port)))
        else {
            let forms: Vec<String> = schemes
                .iter()
                .map(|(p, ..)| format!("{p}HOST[:PORT]"))
                .collect();
            return Err(invalid(&format!("use {}", forms.join(" or "))));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(invalid(
                "credentials do not belong in the address: use username and password_env",
            ));
        }
        if rest.contains(['/', '?', '#']) {
            return Err(invalid("an address has no path or query"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') && !port.ends_with(']') => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))?,
            ),
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(invalid("no host"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

/// MQTT topic filters as brokers accept them: 1–65535 bytes of UTF-8 without NUL,
/// `+` only as a whole level, `#` only as the whole last level.
pub fn validate_mqtt_filter(filter: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("invalid MQTT topic filter {filter:?}: {why}"));
    if filter.is_empty() || filter.len() > 65535 {
        return invalid("use 1 to 65535 bytes");
    }
    if filter.contains('\0') {
        return invalid("it contains NUL");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return invalid("`#` must be the whole last level");
        }
        if level.contains('+') && *level != "+" {
            return invalid("`+` must be a whole level");
        }
    }
    Ok(())
}

/// How a trigger that holds a connection (a broker subscription) is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    pub connected: bool,
    /// Messages turned into events since the server started.
    pub messages: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When `last_error` happened (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
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
    /// For triggers that hold a connection: how it is doing (listings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SourceState>,
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

fn validate_env_name(var: &str) -> Result<(), String> {
    let ok = !var.is_empty() && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then_some(())
        .ok_or_else(|| format!("invalid password_env {var:?}: name an environment variable"))
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
            TriggerSpec::Mqtt(m) => {
                validate_mqtt_filter(&m.filter)?;
                let address = BrokerAddress::parse(&m.broker)?;
                if m.ca_file.is_some() && !address.tls {
                    return Err("ca_file goes with an mqtts:// broker".into());
                }
                if let Some(var) = &m.password_env {
                    validate_env_name(var)?;
                    if m.username.is_none() {
                        return Err("password_env needs a username".into());
                    }
                }
                if m.client_id
                    .as_ref()
                    .is_some_and(|c| c.is_empty() || c.len() > 128)
                {
                    return Err("client_id must be 1 to 128 characters".into());
                }
                Ok(())
            }
            TriggerSpec::Postgres(p) => p.validate(),
            TriggerSpec::Nats(n) => {
                validate_nats_subject(&n.subject)?;
                parse_nats_server(&n.broker)?;
                if let Some(stream) = &n.stream {
                    validate_nats_name("stream", stream)?;
                }
                if let Some(consumer) = &n.consumer {
                    if n.stream.is_none() {
                        return Err("a consumer belongs to a stream: give the stream too".into());
                    }
                    validate_nats_name("consumer", consumer)?;
                }
                if let Some(var) = &n.password_env {
                    validate_env_name(var)?;
                }
                let (size, _) = batching(n.batch_size, n.batch_window.as_deref())?;
                if size > 1 && n.stream.is_none() {
                    return Err(
                        "batching needs a stream: only JetStream can deliver a failed record again"
                            .into(),
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

    #[test]
    fn nats_subjects_servers_and_names_are_checked() {
        for good in ["orders", "orders.*", "orders.>", ">", "*.created", "a.b.c"] {
            assert!(validate_nats_subject(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", ".a", "a.", "a.>.b", "a*", "a.b>", "a b"] {
            assert!(validate_nats_subject(bad).is_err(), "{bad:?}");
        }
        let a = parse_nats_server("nats://127.0.0.1").unwrap();
        assert_eq!((a.tls, a.port), (false, 4222));
        assert_eq!(
            parse_nats_server("tls://n.example.com:7422").unwrap().port,
            7422
        );
        for bad in ["mqtt://h", "nats://u:p@h", "nats://h:0", "nats://"] {
            assert!(parse_nats_server(bad).is_err(), "{bad}");
        }
        let spec = |json: &str| {
            serde_json::from_str::<TriggerSpec>(json)
                .unwrap()
                .validate()
        };
        assert!(
            spec(r#"{"nats":{"subject":"a.>","broker":"nats://h","stream":"ORDERS"}}"#).is_ok()
        );
        assert!(spec(r#"{"nats":{"subject":"a","broker":"nats://h","consumer":"c"}}"#).is_err());
        assert!(spec(r#"{"nats":{"subject":"a","broker":"nats://h","stream":"a.b"}}"#).is_err());
        assert!(spec(r#"{"nats":{"subject":"a","broker":"nats://h","stream":"S","batch_size":10,"batch_window":"2s"}}"#).is_ok());
        assert!(spec(r#"{"nats":{"subject":"a","broker":"nats://h","batch_size":10}}"#).is_err());
        assert!(spec(
            r#"{"nats":{"subject":"a","broker":"nats://h","stream":"S","batch_size":0}}"#
        )
        .is_err());
        assert!(spec(r#"{"nats":{"subject":"a","broker":"nats://h","stream":"S","batch_size":2,"batch_window":"10m"}}"#).is_err());
        assert!(spec(
            r#"{"nats":{"subject":"a","broker":"nats://h","stream":"S","batch_window":"1s"}}"#
        )
        .is_err());
    }

    #[test]
    fn postgres_urls_and_tables_are_checked() {
        let spec = |url: &str, table: &str| {
            TriggerSpec::Postgres(PostgresTrigger {
                url: url.into(),
                table: table.into(),
                password_env: None,
                batch_size: None,
                batch_window: None,
            })
            .validate()
        };
        assert!(spec("postgres://app@127.0.0.1:5432/shop", "orders").is_ok());
        assert!(spec("postgresql://db/shop?sslmode=disable", "sales.orders").is_ok());
        for (url, table, why) in [
            ("mysql://h/db", "t", "use postgres://"),
            ("postgres://app:secret@h/db", "t", "password_env"),
            ("postgres://app@h/db?password=secret", "t", "password_env"),
            ("postgres:///db", "t", "no host"),
            ("postgres://h/db", "a.b.c", "invalid table"),
            ("postgres://h/db", "orders; drop", "invalid table"),
            ("postgres://h/db", "1st", "invalid table"),
        ] {
            let err = spec(url, table).unwrap_err();
            assert!(err.contains(why), "{url} {table}: {err}");
        }
    }

    #[test]
    fn mqtt_filters_and_brokers_are_checked() {
        for good in ["sensors/+/temp", "#", "a/#", "+", "+/+", "a//b", "/x"] {
            assert!(validate_mqtt_filter(good).is_ok(), "{good}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "+a/b", "a\0b"] {
            assert!(validate_mqtt_filter(bad).is_err(), "{bad:?}");
        }
        let b = BrokerAddress::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((b.tls, b.host.as_str(), b.port), (false, "127.0.0.1", 1884));
        let b = BrokerAddress::parse("mqtts://broker.example.com").unwrap();
        assert_eq!((b.tls, b.port), (true, 8883));
        assert_eq!(
            BrokerAddress::parse("mqtt://[::1]:1883").unwrap().host,
            "::1"
        );
        for bad in [
            "tcp://h:1883",
            "mqtt://",
            "mqtt://u:p@h:1883",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://h/x",
            "http://h",
        ] {
            assert!(BrokerAddress::parse(bad).is_err(), "{bad}");
        }
        let spec: TriggerSpec =
            serde_json::from_str(r#"{"mqtt":{"filter":"s/+","broker":"mqtt://h","protocol":"5"}}"#)
                .unwrap();
        assert!(spec.validate().is_ok());
        assert!(serde_json::from_str::<TriggerSpec>(
            r#"{"mqtt":{"filter":"s","broker":"mqtt://h","password":"x"}}"#
        )
        .is_err());
        let ca_plain: TriggerSpec = serde_json::from_str(
            r#"{"mqtt":{"filter":"s","broker":"mqtt://h","ca_file":"/ca.pem"}}"#,
        )
        .unwrap();
        assert!(ca_plain.validate().unwrap_err().contains("mqtts://"));
        let bad_broker: TriggerSpec =
            serde_json::from_str(r#"{"mqtt":{"filter":"s","broker":"tcp://h"}}"#).unwrap();
        assert!(bad_broker.validate().is_err());
    }
}
