//! A function's configuration and the platform limits it is checked against.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest linear memory a wasm32 guest can address.
pub const MAX_MEMORY_MB: u32 = 4096;
/// Like Lambda: no invocation runs longer than 15 minutes.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_MEMORY_MB: u32 = 128;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Invocations one environment serves before it is replaced. Lambda keeps an environment
/// for as long as it is warm; a bound still recycles guests that leak, and at 1,000 the
/// one re-instantiation in a thousand calls costs nothing measurable.
pub const DEFAULT_REUSE: u32 = 1_000;
pub const MAX_REUSE: u32 = 1_000_000;
/// Idle environments kept per version: enough for the bursts of a small host; beyond it
/// an environment is retired when its call ends.
pub const DEFAULT_MAX_IDLE: u32 = 32;
pub const MAX_IDLE_ENVIRONMENTS: u32 = 10_000;
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_ATTEMPTS: u32 = 100;
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_EVENT_AGE: Duration = Duration::from_secs(6 * 3600);
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Names appear in URLs (`/fn/{name}`) and file names: keep them plain.
pub const MAX_NAME_LEN: usize = 64;

/// Everything about a function except its code. Stored with every version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionConfig {
    /// What the function is for, in a few words (at most 256 characters).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Linear memory cap for one invocation, in MiB (all memories of the guest together).
    pub memory_mb: u32,
    /// Wall-clock limit of one invocation.
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// Environment variables the guest sees (nothing else of the host's leaks in).
    pub env: BTreeMap<String, String>,
    /// Invocations in flight at once; `None` means only the server-wide cap applies.
    pub max_concurrency: Option<u32>,
    /// Invocations guaranteed to this function (Lambda's reserved concurrency): taken out
    /// of the server-wide cap for it alone, and also its cap. 0 switches the function
    /// off: every call is throttled at once.
    pub reserved_concurrency: Option<u32>,
    /// Warm environments kept ready from start-up and never retired for idleness (like
    /// Lambda's provisioned concurrency).
    pub min_loaded: u32,
    /// An environment not invoked for this long is retired; a version with no
    /// environments left is unloaded (scale to zero).
    #[serde(with = "crate::duration")]
    pub idle_timeout: Duration,
    /// Invocations one environment may serve before it is retired: 1 gives every call a
    /// fresh sandbox. Components only; a command module's `_start` runs once per instance.
    pub reuse: u32,
    /// Idle environments kept per version; 0 retires each one when its call ends.
    pub max_idle: u32,
    /// Whether `/fn/{name}` routes answer without the admin token.
    pub public: bool,
    /// Hosts the guest may reach with outbound HTTP (`wasi:http/outgoing-handler`).
    /// Empty denies all outbound requests.
    pub allowed_hosts: Vec<String>,
    /// Storage the function may reach through the platform API with the short-lived
    /// token it receives in `CIRRUS_TOKEN` (`bucket:NAME:read|write`, `kv:TABLE:read|write`).
    pub storage: Vec<crate::grant::Grant>,
    /// Asynchronous events: attempts in total before an event goes to the dead-letter
    /// queue (Lambda's default: the first try and two retries).
    pub max_attempts: u32,
    /// Asynchronous events: delay before the first retry; it doubles with each further
    /// attempt, with jitter.
    #[serde(with = "crate::duration")]
    pub retry_delay: Duration,
    /// Asynchronous events older than this are not tried again: they go to the
    /// dead-letter queue.
    #[serde(with = "crate::duration")]
    pub max_event_age: Duration,
    /// Asynchronous events: where a successful run's output goes next, as a new event
    /// (several destinations fan out). This is how pipelines are built.
    pub on_success: Vec<Destination>,
    /// Asynchronous events: where an event goes when its attempts are exhausted or it
    /// expired (default: the dead-letter queue).
    pub on_failure: Option<Destination>,
    /// How the code came in through the Lambda API, kept so that API describes the
    /// function as Lambda would. Absent for functions deployed any other way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda: Option<LambdaPackage>,
    /// Cross-origin access to the function's URL: the platform answers preflights (even
    /// for private functions) and adds the CORS headers to responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<crate::cors::Cors>,
}

/// A Lambda deployment package, as far as Cirrus keeps it. In a manifest or the deploy
/// API only `runtime` and `handler` are given; the server fills in the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaPackage {
    /// `wasi` for WebAssembly.
    pub runtime: String,
    /// The file in the zip that holds the code.
    pub handler: String,
    /// Stored and echoed: Cirrus has no IAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The zip's SHA-256 (base64) and size in bytes, as Lambda reports them.
    #[serde(default)]
    pub zip_sha256: String,
    #[serde(default)]
    pub zip_size: u64,
    /// The artifact (hex SHA-256) the zip held: code deployed later by other means
    /// makes the zip's figures stale, and they are then not reported.
    #[serde(default)]
    pub artifact_sha256: String,
}

/// The longest description, as Lambda's.
pub const MAX_DESCRIPTION_LEN: usize = 256;

/// Where an asynchronous result goes: `function:NAME`, `topic:NAME` or `dlq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Function(String),
    Topic(String),
    /// A row of a KV table, keyed by the request id of the step that produced it, so a
    /// command module without HTTP can feed a table (and its triggers).
    Kv(String),
    /// An object: `bucket:NAME/KEY-TEMPLATE`, where the template may hold `{key}` (the
    /// key of the object whose notification started the step, else the request id) and
    /// `{request_id}`. Without a template the key is the request id.
    Bucket {
        bucket: String,
        key: String,
    },
    /// An `http://` or `https://` URL the result is POSTed to as a signed CloudEvent.
    Webhook(String),
    DeadLetterQueue,
}

/// A webhook destination's URL: http(s), a host, no credentials, no whitespace.
fn validate_webhook(url: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("invalid webhook destination {url:?}: {why}"));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else {
        return invalid("use an http:// or https:// URL");
    };
    if url.len() > 2048 {
        return invalid("longer than 2048 bytes");
    }
    if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return invalid("it contains whitespace");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return invalid("credentials do not belong in the URL (it is stored and shown)");
    }
    if authority.is_empty() || authority.starts_with(':') {
        return invalid("no host");
    }
    Ok(())
}

impl std::str::FromStr for Destination {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("function", name)) => {
                validate_name(name).map_err(|e| e.message)?;
                Ok(Destination::Function(name.to_owned()))
            }
            Some(("topic", name)) => {
                crate::trigger::validate_topic(name)?;
                Ok(Destination::Topic(name.to_owned()))
            }
            Some(("kv", table)) => {
                validate_name(table).map_err(|e| e.message.replace("name", "table name"))?;
                Ok(Destination::Kv(table.to_owned()))
            }
            Some(("bucket", rest)) => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, "{request_id}"));
                if !crate::trigger::valid_bucket_name(bucket) {
                    return Err(format!(
                        "invalid bucket {bucket:?} in destination {s:?}: use 3-63 lowercase letters, digits, '.' or '-'"
                    ));
                }
                if key.is_empty() || key.len() > 900 {
                    return Err(format!("destination {s:?}: the key template must be 1-900 bytes"));
                }
                Ok(Destination::Bucket {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                })
            }
            Some(("http" | "https", _)) => {
                validate_webhook(s)?;
                Ok(Destination::Webhook(s.to_owned()))
            }
            Some((scheme, rest)) if rest.starts_with("//") => Err(format!(
                "invalid destination {s:?}: a webhook must be an http:// or https:// URL, not {scheme}://"
            )),
            None if s == "dlq" => Ok(Destination::DeadLetterQueue),
            _ => Err(format!(
                "invalid destination {s:?}: use function:NAME, topic:NAME, kv:TABLE, bucket:NAME/KEY, https://URL or dlq"
            )),
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Function(n) => write!(f, "function:{n}"),
            Destination::Topic(n) => write!(f, "topic:{n}"),
            Destination::Kv(t) => write!(f, "kv:{t}"),
            Destination::Bucket { bucket, key } => write!(f, "bucket:{bucket}/{key}"),
            Destination::Webhook(url) => f.write_str(url),
            Destination::DeadLetterQueue => f.write_str("dlq"),
        }
    }
}

impl Serialize for Destination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Destination {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Default for FunctionConfig {
    fn default() -> Self {
        Self {
            description: String::new(),
            memory_mb: DEFAULT_MEMORY_MB,
            timeout: DEFAULT_TIMEOUT,
            env: BTreeMap::new(),
            max_concurrency: None,
            reserved_concurrency: None,
            min_loaded: 0,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            reuse: DEFAULT_REUSE,
            max_idle: DEFAULT_MAX_IDLE,
            public: true,
            allowed_hosts: Vec::new(),
            storage: Vec::new(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_delay: DEFAULT_RETRY_DELAY,
            max_event_age: DEFAULT_MAX_EVENT_AGE,
            on_success: Vec::new(),
            on_failure: None,
            lambda: None,
            cors: None,
        }
    }
}

/// A configuration or name that cannot be accepted, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

impl FunctionConfig {
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(package) = &self.lambda {
            if package.runtime.is_empty() {
                return Err(invalid(
                    "runtime",
                    "name the runtime (wasi, python3.X, nodejsN.x, provided)",
                ));
            }
            if package.runtime != "wasi" && package.handler.trim().is_empty() {
                return Err(invalid(
                    "handler",
                    format!(
                        "{} needs a handler: module.function (Python), file.export (Node.js)",
                        package.runtime
                    ),
                ));
            }
        }
        if self.description.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(invalid(
                "description",
                format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
            ));
        }
        if self.memory_mb == 0 || self.memory_mb > MAX_MEMORY_MB {
            return Err(invalid(
                "memory_mb",
                format!(
                    "must be between 1 and {MAX_MEMORY_MB}, got {}",
                    self.memory_mb
                ),
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(invalid(
                "timeout",
                format!(
                    "must be above zero and at most 15m, got {}",
                    crate::duration::format(self.timeout)
                ),
            ));
        }
        if self.max_concurrency == Some(0) {
            return Err(invalid(
                "max_concurrency",
                "must be at least 1 (omit it for no per-function cap)",
            ));
        }
        match (self.reserved_concurrency, self.max_concurrency) {
            (Some(reserved), Some(max)) if reserved > max => {
                return Err(invalid(
                    "reserved_concurrency",
                    format!("{reserved} is above max_concurrency ({max}): a reservation is also the function's cap"),
                ))
            }
            _ => {}
        }
        if self.reuse == 0 || self.reuse > MAX_REUSE {
            return Err(invalid(
                "reuse",
                format!(
                    "must be between 1 (a fresh sandbox every call) and {MAX_REUSE}, got {}",
                    self.reuse
                ),
            ));
        }
        if self.max_idle > MAX_IDLE_ENVIRONMENTS {
            return Err(invalid(
                "max_idle",
                format!(
                    "must be at most {MAX_IDLE_ENVIRONMENTS}, got {}",
                    self.max_idle
                ),
            ));
        }
        if self.min_loaded > MAX_IDLE_ENVIRONMENTS {
            return Err(invalid(
                "min_loaded",
                format!(
                    "must be at most {MAX_IDLE_ENVIRONMENTS}, got {}",
                    self.min_loaded
                ),
            ));
        }
        if self.idle_timeout.is_zero() || self.idle_timeout > MAX_IDLE_TIMEOUT {
            return Err(invalid(
                "idle_timeout",
                "must be above zero and at most 7 days",
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            return Err(invalid(
                "max_attempts",
                format!(
                    "must be between 1 and {MAX_ATTEMPTS}, got {}",
                    self.max_attempts
                ),
            ));
        }
        if self.retry_delay > Duration::from_secs(3600) {
            return Err(invalid("retry_delay", "must be at most 1h"));
        }
        if self.on_success.contains(&Destination::DeadLetterQueue) {
            return Err(invalid("on_success", "dlq is a failure destination"));
        }
        // Each destination gets every result once; a repeat would send everything twice.
        for (i, destination) in self.on_success.iter().enumerate() {
            if self.on_success[..i].contains(destination) {
                return Err(invalid(
                    "on_success",
                    format!("{destination} is listed twice (each destination receives every result once)"),
                ));
            }
        }
        if self.max_event_age.is_zero() || self.max_event_age > MAX_EVENT_AGE {
            return Err(invalid(
                "max_event_age",
                "must be above zero and at most 7 days",
            ));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(invalid("env", format!("invalid variable name {key:?}")));
            }
            if key.starts_with("CIRRUS_") {
                return Err(invalid(
                    "env",
                    format!("{key}: the CIRRUS_ prefix is reserved for the platform"),
                ));
            }
        }
        if let Some(cors) = &self.cors {
            cors.validate().map_err(|e| invalid("cors", e))?;
        }
        for host in &self.allowed_hosts {
            if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
                return Err(invalid(
                    "allowed_hosts",
                    format!("{host:?} is not a host name (use forms like \"api.example.com\" or \"api.example.com:8443\")"),
                ));
            }
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mb) << 20
    }
}

/// Function names: 1–64 of `[A-Za-z0-9_-]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("{name:?} is not a valid name: use 1-{MAX_NAME_LEN} letters, digits, '-' or '_', starting with a letter or digit"),
        ))
    }
}

/// Alias names follow function names but may not look like version numbers.
pub fn validate_alias(alias: &str) -> Result<(), SpecError> {
    validate_name(alias).map_err(|e| invalid("alias", e.message))?;
    if alias.eq_ignore_ascii_case("latest") {
        return Err(invalid(
            "alias",
            "\"latest\" is reserved: it always means the newest version",
        ));
    }
    if alias.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid(
            "alias",
            format!("{alias:?} looks like a version number; alias names need a letter"),
        ));
    }
    Ok(())
}

/// The functions a config's `on_success` sends results to.
pub fn next_functions(config: &FunctionConfig) -> Vec<String> {
    config
        .on_success
        .iter()
        .filter_map(|d| match d {
            Destination::Function(name) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// A loop in a pipeline graph (function → functions its results go to), as the path
/// that closes it, or `None`.
pub fn find_cycle(graph: &[(String, Vec<String>)]) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &[(String, Vec<String>)],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.iter().any(|n| n == node) {
            return None;
        }
        path.push(node.to_owned());
        let next = graph
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, next)| next.as_slice())
            .unwrap_or(&[]);
        for n in next {
            if let Some(cycle) = visit(n, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.push(node.to_owned());
        None
    }
    let mut done = Vec::new();
    graph
        .iter()
        .find_map(|(node, _)| visit(node, graph, &mut Vec::new(), &mut done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_lambda_like() {
        let c = FunctionConfig::default();
        c.validate().unwrap();
        assert_eq!(c.memory_mb, 128);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert!(c.public);
    }

    #[test]
    fn rejects_out_of_range_limits_naming_the_field() {
        let c = FunctionConfig {
            memory_mb: 0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "memory_mb");
        let c = FunctionConfig {
            timeout: Duration::from_secs(16 * 60),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "timeout");
        let c = FunctionConfig {
            max_concurrency: Some(0),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "max_concurrency");
        let mut c = FunctionConfig::default();
        c.env.insert("CIRRUS_X".into(), "1".into());
        assert_eq!(c.validate().unwrap_err().field, "env");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = serde_json::from_str::<FunctionConfig>(r#"{"memory":64}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `memory`"), "{err}");
        let c: FunctionConfig = serde_json::from_str(r#"{"memory_mb":64,"timeout":"2s"}"#).unwrap();
        assert_eq!((c.memory_mb, c.timeout), (64, Duration::from_secs(2)));
    }

    #[test]
    fn webhook_destinations_are_http_urls() {
        let d: Destination = "https://hooks.example.com/cirrus?x=1".parse().unwrap();
        assert_eq!(
            d,
            Destination::Webhook("https://hooks.example.com/cirrus?x=1".into())
        );
        assert_eq!(d.to_string(), "https://hooks.example.com/cirrus?x=1");
        assert!("http://127.0.0.1:9/in".parse::<Destination>().is_ok());
        for (bad, why) in [
            ("ftp://example.com/x", "http:// or https://"),
            ("mqtt://broker/x", "http:// or https://"),
            ("https://", "no host"),
            ("https://user:pw@example.com/", "credentials"),
            ("https://exa mple.com/", "whitespace"),
        ] {
            let err = bad.parse::<Destination>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn destinations_parse_and_print() {
        let c: FunctionConfig = serde_json::from_str(
            r#"{"on_success":["function:b","topic:done"],"on_failure":"dlq"}"#,
        )
        .unwrap();
        assert_eq!(
            c.on_success,
            vec![
                Destination::Function("b".into()),
                Destination::Topic("done".into())
            ]
        );
        assert_eq!(c.on_failure, Some(Destination::DeadLetterQueue));
        assert_eq!(
            serde_json::to_value(&c).unwrap()["on_success"][0],
            "function:b"
        );
        let err =
            serde_json::from_str::<FunctionConfig>(r#"{"on_success":["queue:x"]}"#).unwrap_err();
        assert!(err.to_string().contains("invalid destination"), "{err}");
        let c = FunctionConfig {
            on_success: vec![Destination::DeadLetterQueue],
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "on_success");
    }

    #[test]
    fn duplicate_destinations_are_refused() {
        let c: FunctionConfig =
            serde_json::from_str(r#"{"on_success":["topic:done","kv:t","topic:done"]}"#).unwrap();
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "on_success");
        assert!(err.message.contains("topic:done is listed twice"), "{err}");
        // A bucket destination without a key template is the one keyed by request id.
        let c: FunctionConfig =
            serde_json::from_str(r#"{"on_success":["bucket:out","bucket:out/{request_id}"]}"#)
                .unwrap();
        assert_eq!(c.validate().unwrap_err().field, "on_success");
        let c: FunctionConfig = serde_json::from_str(
            r#"{"on_success":["bucket:out/a","bucket:out/b"],"on_failure":"bucket:out/a"}"#,
        )
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn pipeline_cycles_are_found() {
        let g = |edges: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
            edges
                .iter()
                .map(|(n, next)| (n.to_string(), next.iter().map(|s| s.to_string()).collect()))
                .collect()
        };
        assert_eq!(
            find_cycle(&g(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])])),
            None
        );
        assert_eq!(
            find_cycle(&g(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])])).unwrap(),
            ["a", "b", "c", "a"]
        );
        assert_eq!(find_cycle(&g(&[("a", &["a"])])).unwrap(), ["a", "a"]);
    }

    #[test]
    fn names() {
        validate_name("hello-world_2").unwrap();
        for bad in ["", "-x", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        validate_alias("prod").unwrap();
        assert!(validate_alias("12").is_err());
        assert!(validate_alias("latest").is_err());
    }
}
