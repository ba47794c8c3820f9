//! Command-line parsing and one function per command.

use crate::client::{self, Client, Target};
use crate::config_edits::{self, Carried, Named, Reset};
use crate::output;
use anyhow::{bail, Context as _};
use cirrus_api::usage::{UsageReport, UsageRow};
use cirrus_api::{
    AliasInfo, DeployResult, FunctionConfig, FunctionInfo, InvocationRecord, LogLine, Manifest,
    Page, Qualifier, VersionInfo,
};
use cirrus_api::{TriggerInfo, TriggerSpec};
use cirrus_server::scaler::ScalerSettings;
use cirrus_server::{Server, ServerConfig, SystemClock};
use clap::{Parser, Subcommand};
use futures_util::StreamExt as _;
use reqwest::Method;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "cirrus",
    version,
    about = "Self-hosted serverless functions on WebAssembly"
)]
pub struct Cli {
    #[command(flatten)]
    target: Target,
    /// Print machine-readable JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server with the embedded store
    Up(Box<UpArgs>),
    /// Create a function project: a handler, its build script and a cirrus.toml
    New {
        /// The project's folder, and the function's name
        name: String,
        /// A WebAssembly function in this language
        #[arg(long, value_enum, required_unless_present = "runtime")]
        lang: Option<crate::project::Lang>,
        /// A Lambda handler for this native runtime instead (python3.11, nodejs20.x)
        #[arg(long, conflicts_with = "lang")]
        runtime: Option<String>,
    },
    /// Build the project in this folder (runs its build.sh)
    Build {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build, deploy and follow the logs; again on every save
    Dev {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Deploy one function (NAME FILE) or every function of a cirrus.toml
    Deploy(Box<DeployArgs>),
    /// Invoke a function and print its response
    Invoke(InvokeArgs),
    /// List functions
    Ls,
    /// Show one function
    Get { name: String },
    /// Delete a function (its invocation history stays)
    Rm { name: String },
    /// List a function's versions
    Versions { name: String },
    /// Manage aliases (named pointers to versions, for rollbacks)
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Show a function's logs; -f follows new lines
    Logs(LogsArgs),
    /// The dead-letter queue of asynchronous events
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The built-in KV tables
    #[command(subcommand)]
    Kv(KvCommand),
    /// Buckets of the object store (the same ones the S3 API serves)
    #[command(subcommand)]
    Bucket(BucketCommand),
    /// Objects in a bucket (any S3 client works too: see `cirrus up`'s S3 API)
    #[command(subcommand)]
    Object(ObjectCommand),
    /// Follow one request through retries and pipelines: every invocation of its trace
    Trace { request_id: String },
    /// What fires functions: HTTP routes, topics, schedules, KV tables, buckets, MQTT,
    /// NATS and PostgreSQL
    #[command(subcommand)]
    Trigger(TriggerCommand),
    /// Publish a message to a topic: every subscribed function gets it as an event
    Publish {
        topic: String,
        #[arg(long, short = 'd')]
        data: Option<String>,
        #[arg(long, default_value = "application/json")]
        content_type: String,
    },
    /// Usage and cost per function, hour or day
    Usage(UsageArgs),
    /// The runtimes this server runs: wasi, and the native Lambda runtimes its host has
    Runtimes,
    /// The key a function's webhook destinations sign their POSTs with (for receivers)
    WebhookKey { function: String },
    /// Secrets functions reference from their env as "secret:NAME" (values never shown)
    #[command(subcommand)]
    Secret(crate::access::SecretCommand),
    /// API keys with scopes (admin, deploy, read, invoke:FUNCTION) beside the admin token
    #[command(subcommand)]
    Key(crate::access::KeyCommand),
    /// The audit log: who changed what, when (newest first)
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List a function's recent invocations
    Invocations {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the S3-compatible object API (port 0 picks a free port; `off` serves
    /// none: objects stay reachable through /v1/buckets)
    #[arg(long, default_value = "127.0.0.1:9000", value_parser = parse_listen)]
    s3_listen: MaybeListen,
    /// Address of the dashboard (and the management API it calls), an origin of its own
    /// apart from functions' pages (port 0 picks a free port; `off` serves none)
    #[arg(long, default_value = "127.0.0.1:8081", value_parser = parse_listen)]
    dashboard_listen: MaybeListen,
    /// TLS certificate chain (PEM) for every listener; reloaded on SIGHUP and when the
    /// file changes
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-cert
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest part of a multipart upload to the object API, in bytes
    #[arg(long, default_value_t = cirrus_server::s3::S3Limits::default().max_part_bytes)]
    s3_max_part_bytes: u64,
    /// Deploy the functions of this manifest on start
    #[arg(long)]
    app: Option<PathBuf>,
    /// Never use wasmtime's pooling allocator
    #[arg(long)]
    no_pooling: bool,
    /// Invocations in flight across all functions
    #[arg(long, default_value_t = ScalerSettings::default().global_concurrency)]
    max_in_flight: usize,
    /// Callers that may queue for a busy function before getting 429
    #[arg(long, default_value_t = ScalerSettings::default().queue_depth)]
    queue_depth: usize,
    /// How long a queued caller waits before getting 429
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    queue_timeout: Duration,
    /// Linear memory all execution environments together may hold, in MiB; beyond it new
    /// environments wait, then get 429 [default: three quarters of the host's memory]
    #[arg(long)]
    memory_budget_mb: Option<u64>,
    /// Largest request body an invocation accepts, in bytes
    #[arg(long, default_value_t = 6 << 20)]
    max_request_bytes: usize,
    /// Largest response body a function may produce, in bytes
    #[arg(long, default_value_t = 6 << 20)]
    max_response_bytes: usize,
    /// Largest asynchronous event (or topic message) body, in bytes
    #[arg(long, default_value_t = 256 << 10)]
    max_event_bytes: usize,
    /// Events one request and everything it leads to may create; the rest go to the
    /// dead-letter queue (stops functions that trigger each other in a widening loop)
    #[arg(long, default_value_t = cirrus_server::lineage::DEFAULT_MAX_LINEAGE_EVENTS)]
    max_lineage_events: u64,
    /// Calls from functions to this server that one request and everything it leads to
    /// may have running at once; more get 429
    #[arg(long, default_value_t = cirrus_server::lineage::DEFAULT_MAX_LINEAGE_IN_FLIGHT)]
    max_lineage_in_flight: usize,
    /// Largest artifact a deploy accepts, in bytes
    #[arg(long, default_value_t = cirrus_server::server::DEFAULT_MAX_ARTIFACT_BYTES)]
    max_artifact_bytes: usize,
    /// How long shutdown waits for in-flight requests
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Open connections the main listener keeps at most; at the cap the oldest idle one
    /// is closed for a new one [default: sized from the open-file limit]
    #[arg(long)]
    max_connections: Option<usize>,
    /// Open connections the S3 listener keeps at most [default: sized from the open-file
    /// limit]
    #[arg(long)]
    s3_max_connections: Option<usize>,
    /// How long a client has to send a complete request head (from connecting, or from
    /// the first byte after an idle spell)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// How long a connection with no request in flight stays open
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    keep_alive_timeout: Duration,
    /// How long a response may wait for a client that has stopped reading it
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    send_timeout: Duration,
    /// Price table (TOML) for usage reports [default: AWS Lambda's x86 price]
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Invocation records and their logs are deleted this long after they started
    /// (their usage stays, summed per hour), or `off` [default: 30d]
    #[arg(long, value_parser = parse_age)]
    record_retention: Option<Keep<Duration>>,
    /// At most this many invocation records are kept, the newest, or `off`
    /// [default: 1000000]
    #[arg(long, value_parser = parse_count)]
    max_records: Option<Keep<u64>>,
    /// At most this many log lines are kept, the newest, or `off` [default: 2000000]
    #[arg(long, value_parser = parse_count)]
    max_log_lines: Option<Keep<u64>>,
    /// Dead-letter events are deleted this long after they failed, or `off`
    /// [default: 14d]
    #[arg(long, value_parser = parse_age)]
    dead_letter_retention: Option<Keep<Duration>>,
    /// Multipart uploads neither completed nor aborted are aborted this long after they
    /// started, and their parts deleted, or `off` [default: 7d]
    #[arg(long, value_parser = parse_age)]
    incomplete_upload_retention: Option<Keep<Duration>>,
    /// Audit log entries are deleted this long after they were written, or `off`
    /// [default: 366d]
    #[arg(long, value_parser = parse_age)]
    audit_retention: Option<Keep<Duration>>,
    /// OpenTelemetry collector (OTLP/HTTP, e.g. http://127.0.0.1:4318) to send a span
    /// per invocation to
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Server log format on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The key secrets are sealed with (64 hex digits, mode 0600), kept apart from the
    /// data dir, e.g. on a mounted secret volume [default: <data-dir>/secrets.key,
    /// created on first start]
    #[arg(long, env = "CIRRUS_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Cluster mode: shared state in NATS JetStream, every node serving every route.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Cluster mode")]
struct ClusterArgs {
    /// Keep the shared state in NATS JetStream at these servers
    /// (`nats://HOST:PORT[,nats://HOST:PORT…]`): every node started with the same
    /// servers serves the same functions
    #[arg(long, env = "CIRRUS_CLUSTER", value_name = "NATS_URLS")]
    cluster: Option<String>,
    /// Copies JetStream keeps of each bucket: 1 on one NATS server, 3 on a NATS
    /// cluster of three or more
    #[arg(long, requires = "cluster", default_value_t = 1)]
    cluster_replicas: usize,
    /// Disk this node may use for copies of stored objects, in MiB: the bytes are in
    /// JetStream, the copies spare reading them from there again
    #[arg(long, requires = "cluster", default_value_t = 2048)]
    cluster_object_cache_mb: u64,
    /// NATS credentials file (JWT and NKey seed), as `nats --creds` takes it
    #[arg(long, requires = "cluster", env = "CIRRUS_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password)
    #[arg(long, requires_all = ["cluster", "nats_password"], env = "CIRRUS_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password (with --nats-user)
    #[arg(
        long,
        requires = "nats_user",
        env = "CIRRUS_NATS_PASSWORD",
        hide_env_values = true
    )]
    nats_password: Option<String>,
    /// NATS token
    #[arg(
        long,
        requires = "cluster",
        env = "CIRRUS_NATS_TOKEN",
        hide_env_values = true
    )]
    nats_token: Option<String>,
    /// CA certificate (PEM) to verify the NATS servers with; TLS is then required
    #[arg(long, requires = "cluster")]
    nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients
    #[arg(long, requires_all = ["cluster", "nats_tls_key"])]
    nats_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for --nats-tls-cert
    #[arg(long, requires = "nats_tls_cert")]
    nats_tls_key: Option<PathBuf>,
}

impl ClusterArgs {
    fn options(&self) -> Option<cirrus_server::store::jetstream::ClusterOptions> {
        let servers = self.cluster.as_deref()?;
        Some(cirrus_server::store::jetstream::ClusterOptions {
            creds_file: self.nats_creds.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
            replicas: self.cluster_replicas,
            object_cache_bytes: self.cluster_object_cache_mb << 20,
            ..cirrus_server::store::jetstream::ClusterOptions::new(servers)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A redeploy keeps what its flags do not name (and says so). List flags add to what the
/// function has; `--remove-*` drops one item; `--reset SETTING` restores a default.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "A redeploy starts from the function's current settings: flags set a value or add \
an item, --remove-env/--remove-allow-host/--remove-storage/--remove-on-success drop one, and \
--reset SETTING (a cirrus.toml key such as storage, env, on_failure, max_concurrency, or all) \
restores the default. The output lists what was kept from the previous version and what was \
removed. A manifest deploy (-f) is declarative: what it does not list is removed."
)]
struct DeployArgs {
    /// Function name (omit NAME and FILE to deploy a manifest)
    name: Option<String>,
    /// The .wasm or .wat artifact, or a Lambda zip for a native runtime (--runtime)
    file: Option<PathBuf>,
    /// Manifest to deploy when no NAME is given
    #[arg(long, short = 'f', default_value = "cirrus.toml")]
    manifest: PathBuf,
    /// Put a setting back to its default before the other flags apply (repeatable):
    /// storage, env, allowed_hosts, on_success, on_failure, max_concurrency, … or all
    #[arg(long, value_parser = config_edits::parse_reset, value_delimiter = ',')]
    reset: Vec<Reset>,
    /// Memory limit in MiB [new functions: 128]
    #[arg(long)]
    memory: Option<u32>,
    /// Timeout, e.g. 2s, 500ms, 5m [new functions: 30s]
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Invocations in flight at once (--reset max_concurrency removes the cap)
    #[arg(long)]
    concurrency: Option<u32>,
    /// Set an environment variable K=V (repeatable; other variables are kept)
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Remove an environment variable by name (repeatable)
    #[arg(long = "remove-env", value_name = "KEY")]
    remove_env: Vec<String>,
    /// Invocations guaranteed to this function out of the server-wide cap, and its cap
    /// (Lambda's reserved concurrency)
    #[arg(long)]
    reserved_concurrency: Option<u32>,
    /// Warm environments kept ready from start-up (like provisioned concurrency)
    #[arg(long)]
    min_loaded: Option<u32>,
    /// Retire an environment after this long without invocations [new functions: 5m]
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Invocations one environment serves before it is replaced; 1 = a fresh sandbox
    /// every call [new functions: 1000]
    #[arg(long)]
    reuse: Option<u32>,
    /// Idle environments kept per version [new functions: 32]
    #[arg(long)]
    max_idle: Option<u32>,
    /// A native Lambda runtime for a zip artifact: python3.X, nodejsN.x, provided
    /// (`cirrus runtimes` lists this server's)
    #[arg(long)]
    runtime: Option<String>,
    /// The handler a native runtime calls: module.function (Python), file.export (Node.js)
    #[arg(long)]
    handler: Option<String>,
    /// Require the admin token on /fn routes
    #[arg(long, conflicts_with = "public")]
    private: bool,
    /// Answer /fn routes without the admin token (the default for new functions)
    #[arg(long)]
    public: bool,
    /// Add a host the function may reach with outbound HTTP (repeatable)
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_hosts: Vec<String>,
    /// Remove an allowed host (repeatable)
    #[arg(long = "remove-allow-host", value_name = "HOST")]
    remove_allow_hosts: Vec<String>,
    /// Add a storage grant, e.g. bucket:uploads:read or kv:photos:write (repeatable): the
    /// function gets CIRRUS_API and a token scoped to its grants
    #[arg(long = "storage", value_name = "GRANT")]
    storage: Vec<cirrus_api::grant::Grant>,
    /// Remove a storage grant (repeatable)
    #[arg(long = "remove-storage", value_name = "GRANT")]
    remove_storage: Vec<cirrus_api::grant::Grant>,
    /// Asynchronous events: attempts in total before the dead-letter queue [new functions: 3]
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Asynchronous events: first retry delay, doubling [new functions: 1s]
    #[arg(long, value_parser = parse_duration)]
    retry_delay: Option<Duration>,
    /// Asynchronous events: not retried past this age [new functions: 6h]
    #[arg(long, value_parser = parse_duration)]
    max_event_age: Option<Duration>,
    /// Asynchronous events: add a destination for a successful run's output (repeatable):
    /// function:NAME, topic:NAME, kv:TABLE, bucket:NAME/KEY or an https:// webhook
    #[arg(long = "on-success", value_name = "DESTINATION")]
    on_success: Vec<cirrus_api::spec::Destination>,
    /// Remove an on_success destination (repeatable)
    #[arg(long = "remove-on-success", value_name = "DESTINATION")]
    remove_on_success: Vec<cirrus_api::spec::Destination>,
    /// Asynchronous events: where a failed event goes: function:NAME, topic:NAME, kv:TABLE,
    /// bucket:NAME/KEY, an https:// webhook or dlq (--reset on_failure restores the
    /// default, dlq)
    #[arg(long, value_name = "DESTINATION")]
    on_failure: Option<cirrus_api::spec::Destination>,
}

#[derive(Debug, clap::Args)]
struct InvokeArgs {
    /// NAME, NAME@VERSION or NAME@ALIAS
    target: String,
    /// Event body
    #[arg(long, short = 'd', conflicts_with = "file")]
    data: Option<String>,
    /// Read the event body from a file (- for stdin)
    #[arg(long)]
    file: Option<PathBuf>,
    /// Content type of the event
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// Print status and cirrus-* headers on stderr
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Queue the event and return at once with its request id (delivered at least once,
    /// with retries, then the dead-letter queue)
    #[arg(long = "async")]
    asynchronous: bool,
    /// With --async: an event with a key seen in the last hour is not queued again
    #[arg(long, requires = "asynchronous")]
    idempotency_key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AliasCommand {
    /// Create or move an alias
    Set {
        name: String,
        alias: String,
        version: u32,
    },
    /// Delete an alias
    Rm { name: String, alias: String },
    /// List aliases
    Ls { name: String },
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Print a value
    Get { table: String, key: String },
    /// Write a value (JSON by default); --if-version N writes only at that version
    Put {
        table: String,
        key: String,
        value: String,
        #[arg(long, default_value = "application/json")]
        content_type: String,
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// List keys (by prefix)
    Ls {
        table: String,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Delete a key
    Rm { table: String, key: String },
}

#[derive(Debug, Subcommand)]
enum BucketCommand {
    /// List buckets
    Ls,
    /// Create a bucket
    Mb { name: String },
    /// Delete an empty bucket
    Rb { name: String },
}

#[derive(Debug, Subcommand)]
enum ObjectCommand {
    /// List objects (by prefix)
    Ls {
        bucket: String,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Store a file (or stdin with -) as an object
    Put {
        bucket: String,
        key: String,
        file: PathBuf,
        #[arg(long, default_value = "application/octet-stream")]
        content_type: String,
    },
    /// Write an object to stdout (or to --output FILE)
    Get {
        bucket: String,
        key: String,
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Delete an object
    Rm { bucket: String, key: String },
}

#[derive(Debug, Subcommand)]
enum TriggerCommand {
    /// Add a trigger to a function
    Add(Box<AddTrigger>),
    /// List triggers (of one function)
    Ls { function: Option<String> },
    /// Remove a trigger by id
    Rm { id: String },
}

#[derive(Debug, clap::Args)]
struct AddTrigger {
    function: String,
    /// An HTTP route, e.g. 'GET /orders/{id}' (method optional)
    #[arg(long, group = "kind")]
    route: Option<String>,
    /// A topic to subscribe to
    #[arg(long, group = "kind")]
    topic: Option<String>,
    /// A schedule: 'rate(5 minutes)', a cron expression like '0 9 * * MON-FRI',
    /// 'TZ=Europe/Paris 0 9 * * *', or AWS's 'cron(0 9 ? * MON-FRI *)'
    #[arg(long, group = "kind")]
    schedule: Option<String>,
    /// A KV table whose changes become events (with --postgres: the PostgreSQL table)
    #[arg(long)]
    table: Option<String>,
    /// A PostgreSQL database, postgres://USER@HOST[:PORT]/DATABASE, whose --table's
    /// inserts, updates and deletes become events
    #[arg(long, group = "kind", requires = "table")]
    postgres: Option<String>,
    /// A bucket of the object API whose object changes become events
    #[arg(long, group = "kind")]
    bucket: Option<String>,
    /// With --bucket: which changes (created, removed) [default: both]
    #[arg(long, value_delimiter = ',', requires = "bucket")]
    events: Vec<cirrus_api::trigger::BucketEvent>,
    /// With --bucket: only keys starting with this
    #[arg(long, requires = "bucket")]
    prefix: Option<String>,
    /// With --bucket: only keys ending with this
    #[arg(long, requires = "bucket")]
    suffix: Option<String>,
    /// An MQTT topic filter to subscribe to, e.g. 'sensors/+/temp' (needs --broker)
    #[arg(long, group = "kind", requires = "broker")]
    mqtt: Option<String>,
    /// A NATS subject to subscribe to, e.g. 'orders.>' (needs --broker; --stream for
    /// durable JetStream delivery)
    #[arg(long, group = "kind", requires = "broker")]
    nats: Option<String>,
    /// With --nats: the JetStream stream holding the subject (acknowledged delivery)
    #[arg(long, requires = "nats")]
    stream: Option<String>,
    /// With --nats --stream or --postgres: records per invocation, as one
    /// {"Records": [...]} event; the function may answer {"batchItemFailures": [...]}
    #[arg(long)]
    batch_size: Option<u32>,
    /// With --batch-size: how long to wait for a batch to fill (e.g. 5s, at most 5m)
    #[arg(long, requires = "batch_size")]
    batch_window: Option<String>,
    /// With --nats --stream: the durable consumer's name [default: cirrus-TRIGGER]
    #[arg(long, requires = "stream")]
    consumer: Option<String>,
    /// With --mqtt: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; with --nats:
    /// nats://HOST[:PORT] or tls://HOST[:PORT]
    #[arg(long)]
    broker: Option<String>,
    /// With --mqtt: the protocol version, 3.1.1 or 5 [default: 3.1.1]
    #[arg(long, requires = "mqtt")]
    protocol: Option<cirrus_api::trigger::MqttProtocol>,
    /// With --mqtt or --nats: the user name to connect as
    #[arg(long)]
    username: Option<String>,
    /// With --mqtt or --nats: the server's environment variable that holds the password
    /// (with --nats and no --username: the token)
    #[arg(long)]
    password_env: Option<String>,
    /// With --mqtt: a PEM file of CA certificates to trust (mqtts://)
    #[arg(long, requires = "mqtt")]
    ca_file: Option<String>,
    /// With --mqtt: the client id of the persistent session [default: cirrus-TRIGGER]
    #[arg(long, requires = "mqtt")]
    client_id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead events, newest failure first
    Ls {
        #[arg(long)]
        function: Option<String>,
    },
    /// Show one dead event, its body and last error
    Show { request_id: String },
    /// Put events back in the queue with fresh attempts: one, or --all (of --function)
    Redrive {
        #[arg(required_unless_present = "all")]
        request_id: Option<String>,
        #[arg(long, conflicts_with = "request_id")]
        all: bool,
        #[arg(long, requires = "all")]
        function: Option<String>,
    },
    /// Delete events: one, or --all (of --function)
    Purge {
        #[arg(required_unless_present = "all")]
        request_id: Option<String>,
        #[arg(long, conflicts_with = "request_id")]
        all: bool,
        #[arg(long, requires = "all")]
        function: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct UsageArgs {
    /// Start (RFC 3339 or YYYY-MM-DD) [default: start of this month]
    #[arg(long)]
    from: Option<String>,
    /// End, exclusive [default: now]
    #[arg(long)]
    to: Option<String>,
    /// function, hour or day
    #[arg(long, default_value = "function")]
    group_by: String,
    /// Print CSV instead of a table
    #[arg(long, conflicts_with = "json")]
    csv: bool,
}

#[derive(Debug, clap::Args)]
struct LogsArgs {
    name: String,
    /// Keep streaming new lines
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only this invocation's lines
    #[arg(long)]
    request_id: Option<String>,
    /// How many recent lines
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// An address to listen on, or none (`off`).
#[derive(Debug, Clone, Copy)]
struct MaybeListen(Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<MaybeListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MaybeListen(None));
    }
    s.parse()
        .map(|a| MaybeListen(Some(a)))
        .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:9000, or off: {e}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    cirrus_api::duration::parse(s)
}

/// A retention limit: a value, or none (`off`).
#[derive(Debug, Clone, Copy)]
struct Keep<T>(Option<T>);

fn parse_age(s: &str) -> Result<Keep<Duration>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Keep(None));
    }
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be longer than 0 (or off to keep forever)".into()),
        d => Ok(Keep(Some(d))),
    }
}

fn parse_count(s: &str) -> Result<Keep<u64>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Keep(None));
    }
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 (or off for no limit)".into()),
        Ok(n) => Ok(Keep(Some(n))),
        Err(e) => Err(format!("{s:?} is not a count or off: {e}")),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected K=V, got {s:?}"))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Up(args) => return up(&cli.target, *args).await,
        Command::New {
            name,
            lang,
            runtime,
        } => {
            let dir = crate::project::new(&name, lang, runtime.as_deref(), Path::new("."))?;
            println!(
                "created {}/: cd {name} && cirrus build && cirrus deploy (or cirrus dev)",
                dir.display()
            );
            return Ok(());
        }
        Command::Build { dir } => return crate::project::build(&dir),
        Command::Dev { dir } => {
            let target = cli.target.clone();
            let data_dir = std::path::absolute(&target.data_dir)?;
            return crate::project::dev(&dir, move || {
                let mut command = tokio::process::Command::new(
                    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cirrus")),
                );
                command.env("CIRRUS_DATA_DIR", &data_dir);
                for (name, value) in [
                    ("CIRRUS_URL", target.url.clone()),
                    ("CIRRUS_TOKEN", target.token.clone()),
                    (
                        "CIRRUS_CACERT",
                        target.cacert.as_ref().map(|p| p.display().to_string()),
                    ),
                ] {
                    if let Some(value) = value {
                        command.env(name, value);
                    }
                }
                command
            })
            .await;
        }
        _ => {}
    }
    let client = Client::new(&cli.target)?;
    match cli.command {
        Command::Up(_) | Command::New { .. } | Command::Build { .. } | Command::Dev { .. } => {
            unreachable!("handled above")
        }
        Command::Deploy(args) => deploy(&client, *args, json).await,
        Command::Invoke(args) => invoke(&client, args, json).await,
        Command::Dlq(command) => dlq(&client, command, json).await,
        Command::Secret(command) => crate::access::secret(&client, command, json).await,
        Command::Key(command) => crate::access::key(&client, command, json).await,
        Command::Audit { limit } => crate::access::audit(&client, limit, json).await,
        Command::Trigger(command) => trigger(&client, command, json).await,
        Command::Kv(command) => kv(&client, command, json).await,
        Command::Bucket(command) => bucket(&client, command, json).await,
        Command::Object(command) => object(&client, command, json).await,
        Command::Trace { request_id } => {
            let trace: serde_json::Value = client
                .json(client.request(Method::GET, &format!("/v1/trace/{request_id}")))
                .await?;
            if json {
                return output::json(&trace);
            }
            let records: Vec<InvocationRecord> =
                serde_json::from_value(trace["invocations"].clone())?;
            println!("trace {}", trace["trace_id"].as_str().unwrap_or_default());
            let depth = |r: &InvocationRecord| {
                let mut depth = 0;
                let mut parent = r.parent_request_id.clone();
                while let Some(p) = parent {
                    depth += 1;
                    parent = records
                        .iter()
                        .find(|x| x.request_id == p)
                        .and_then(|x| x.parent_request_id.clone());
                    if depth > 64 {
                        break;
                    }
                }
                depth
            };
            for r in &records {
                let result = r.error_code.clone().unwrap_or_else(|| r.status.to_string());
                println!(
                    "{}{} {} v{} attempt {} {} {:.3} ms {}",
                    "  ".repeat(depth(r)),
                    r.started_at,
                    r.function,
                    r.version,
                    r.attempt,
                    r.request_id,
                    r.duration_ms,
                    result
                );
            }
            Ok(())
        }
        Command::Publish {
            topic,
            data,
            content_type,
        } => {
            let published: serde_json::Value = client
                .json(
                    client
                        .request(Method::POST, &format!("/v1/topics/{topic}"))
                        .header(reqwest::header::CONTENT_TYPE, content_type)
                        .body(data.unwrap_or_default()),
                )
                .await?;
            if json {
                return output::json(&published);
            }
            for id in published["request_ids"].as_array().into_iter().flatten() {
                println!("{}", id.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Command::Ls => {
            let functions: Vec<FunctionInfo> = client
                .json(client.request(Method::GET, "/v1/functions"))
                .await?;
            if json {
                return output::json(&functions);
            }
            let rows = functions.iter().map(function_row).collect();
            output::table(
                &["NAME", "VERSION", "KIND", "MEMORY", "TIMEOUT", "ALIASES"],
                rows,
            );
            Ok(())
        }
        Command::Get { name } => {
            let f: FunctionInfo = client
                .json(client.request(Method::GET, &format!("/v1/functions/{name}")))
                .await?;
            if json {
                return output::json(&f);
            }
            print_function(&f);
            Ok(())
        }
        Command::Rm { name } => {
            let f: FunctionInfo = client
                .json(client.request(Method::DELETE, &format!("/v1/functions/{name}")))
                .await?;
            if json {
                return output::json(&f);
            }
            println!("deleted {} ({} versions)", f.name, f.versions);
            Ok(())
        }
        Command::Versions { name } => {
            let versions: Vec<VersionInfo> = client
                .json(client.request(Method::GET, &format!("/v1/functions/{name}/versions")))
                .await?;
            if json {
                return output::json(&versions);
            }
            let rows = versions
                .iter()
                .map(|v| {
                    vec![
                        v.version.to_string(),
                        v.kind.as_str().to_owned(),
                        v.sha256.get(..12).unwrap_or(&v.sha256).to_owned(),
                        format!("{} MiB", v.config.memory_mb),
                        cirrus_api::duration::format(v.config.timeout),
                        v.created_at.clone(),
                    ]
                })
                .collect();
            output::table(
                &["VERSION", "KIND", "SHA256", "MEMORY", "TIMEOUT", "CREATED"],
                rows,
            );
            Ok(())
        }
        Command::Alias(command) => alias(&client, command, json).await,
        Command::Logs(args) => logs(&client, args, json).await,
        Command::Usage(args) => usage(&client, args, json).await,
        Command::WebhookKey { function } => {
            let info: serde_json::Value = client
                .json(
                    client
                        .request(Method::GET, "/v1/webhooks/signing-key")
                        .query(&[("function", function)]),
                )
                .await?;
            if json {
                return output::json(&info);
            }
            println!("{}", info["key"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Runtimes => {
            let info: cirrus_api::RuntimesInfo = client
                .json(client.request(Method::GET, "/v1/runtimes"))
                .await?;
            if json {
                return output::json(&info);
            }
            for runtime in &info.runtimes {
                println!("{runtime}");
            }
            if let Some(why) = &info.native_off {
                println!("(native runtimes are off: {why})");
            }
            Ok(())
        }
        Command::Invocations { name, limit } => {
            let page: Page<InvocationRecord> = client
                .json(client.request(
                    Method::GET,
                    &format!("/v1/functions/{name}/invocations?limit={limit}"),
                ))
                .await?;
            if page.items.is_empty() {
                if let Some(missing) = no_such_function(&client, &name).await {
                    return Err(missing);
                }
            }
            if json {
                return output::json(&page);
            }
            let rows = page
                .items
                .iter()
                .map(|r| {
                    vec![
                        r.started_at.clone(),
                        r.request_id.clone(),
                        r.version.to_string(),
                        if r.cold_start { "cold" } else { "warm" }.to_owned(),
                        format!("{:.3}", r.duration_ms),
                        r.billed_ms.to_string(),
                        format!("{} KiB", r.peak_memory_bytes / 1024),
                        r.error_code.clone().unwrap_or_else(|| r.status.to_string()),
                    ]
                })
                .collect();
            output::table(
                &[
                    "STARTED",
                    "REQUEST ID",
                    "VER",
                    "START",
                    "MS",
                    "BILLED",
                    "PEAK MEM",
                    "RESULT",
                ],
                rows,
            );
            Ok(())
        }
    }
}

fn function_row(f: &FunctionInfo) -> Vec<String> {
    let aliases = f
        .aliases
        .iter()
        .map(|(a, v)| format!("{a}→{v}"))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        f.name.clone(),
        f.latest.version.to_string(),
        f.latest.kind.as_str().to_owned(),
        format!("{} MiB", f.latest.config.memory_mb),
        cirrus_api::duration::format(f.latest.config.timeout),
        aliases,
    ]
}

fn print_function(f: &FunctionInfo) {
    let c = &f.latest.config;
    println!("name:            {}", f.name);
    println!("latest version:  {} (of {})", f.latest.version, f.versions);
    println!("kind:            {}", f.latest.kind.as_str());
    println!("sha256:          {}", f.latest.sha256);
    println!("size:            {} bytes", f.latest.size_bytes);
    println!("memory:          {} MiB", c.memory_mb);
    println!(
        "timeout:         {}",
        cirrus_api::duration::format(c.timeout)
    );
    println!(
        "max concurrency: {}",
        c.max_concurrency
            .map_or("server-wide cap only".to_owned(), |n| n.to_string())
    );
    if let Some(reserved) = c.reserved_concurrency {
        println!("reserved:        {reserved}");
    }
    println!("min loaded:      {}", c.min_loaded);
    println!("reuse:           {}", c.reuse);
    println!("max idle:        {}", c.max_idle);
    println!(
        "idle timeout:    {}",
        cirrus_api::duration::format(c.idle_timeout)
    );
    println!("public:          {}", c.public);
    for (k, v) in &c.env {
        println!("env:             {k}={v}");
    }
    for (a, v) in &f.aliases {
        println!("alias:           {a} → {v}");
    }
}

async fn up(target: &Target, args: UpArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,cirrus_server=info,cirrus=info")
    });
    // Colour codes only for a person at a terminal, never in a file or a log shipper.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match args.log_format {
        // One JSON object per line, with the fields of the enclosing span (request id,
        // function, trace id) for log shippers.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => logs.init(),
    }
    let manifest = args.app.as_deref().map(Manifest::load).transpose()?;
    let mut config = ServerConfig::new(&target.data_dir);
    config.pooling = !args.no_pooling;
    config.scaler = ScalerSettings {
        global_concurrency: args.max_in_flight,
        queue_depth: args.queue_depth,
        queue_timeout: args.queue_timeout,
    };
    config.memory_budget_bytes = args.memory_budget_mb.map(|mb| mb << 20);
    config.payload.max_request_bytes = args.max_request_bytes;
    config.payload.max_response_bytes = args.max_response_bytes;
    config.max_artifact_bytes = args.max_artifact_bytes;
    config.queue.max_event_bytes = args.max_event_bytes;
    config.containment = cirrus_server::lineage::Containment {
        max_lineage_events: args.max_lineage_events,
        max_lineage_in_flight: args.max_lineage_in_flight,
    };
    config.drain_timeout = args.drain_timeout;
    config.connections = cirrus_server::connections::ConnectionLimits {
        max_connections: args.max_connections,
        s3_max_connections: args.s3_max_connections,
        header_read_timeout: args.header_read_timeout,
        keep_alive_timeout: args.keep_alive_timeout,
        send_timeout: args.send_timeout,
    };
    config.otlp_endpoint = args.otlp_endpoint.clone();
    config.secrets_key_file = args.secrets_key_file.clone();
    config.cluster = args.cluster.options();
    config.tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(cirrus_server::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    config.s3.max_part_bytes = args.s3_max_part_bytes;
    if let Some(path) = &args.prices {
        config.prices = cirrus_server::billing::load_prices(path)?;
    }
    let keep = &mut config.retention;
    for (flag, setting) in [
        (args.record_retention, &mut keep.records_max_age),
        (args.dead_letter_retention, &mut keep.dead_letter_max_age),
        (args.audit_retention, &mut keep.audit_max_age),
        (
            args.incomplete_upload_retention,
            &mut keep.incomplete_upload_max_age,
        ),
    ] {
        if let Some(Keep(age)) = flag {
            *setting = age;
        }
    }
    for (flag, setting) in [
        (args.max_records, &mut keep.max_records),
        (args.max_log_lines, &mut keep.max_log_lines),
    ] {
        if let Some(Keep(count)) = flag {
            *setting = count;
        }
    }
    let server = Server::start(config, Arc::new(SystemClock)).await?;
    if let Some(servers) = &args.cluster.cluster {
        eprintln!("cluster mode: shared state in NATS JetStream at {servers}");
    }
    if let Some(manifest) = &manifest {
        for result in server.deploy_manifest(manifest).await? {
            let state = if result.created {
                "deployed"
            } else {
                "unchanged"
            };
            eprintln!(
                "{state} {} version {}",
                result.function.name, result.version
            );
        }
    }
    let server = match args.s3_listen.0 {
        Some(addr) => {
            let s3_listener = cirrus_server::connections::bind(addr).with_context(|| {
                format!("binding the S3 API to {addr} (choose another with --s3-listen, or off)")
            })?;
            let s3_url = format!("{}://{}", server.scheme(), s3_listener.local_addr()?);
            let url_file = target.data_dir.join(client::S3_URL_FILE);
            std::fs::write(&url_file, format!("{s3_url}\n"))
                .with_context(|| format!("writing {}", url_file.display()))?;
            eprintln!(
                "S3 API on {s3_url} (keys: {})",
                target
                    .data_dir
                    .join(cirrus_server::s3::credentials::CREDENTIALS_FILE)
                    .display()
            );
            server.with_s3_listener(s3_listener)
        }
        None => {
            let _ = std::fs::remove_file(target.data_dir.join(client::S3_URL_FILE));
            server
        }
    };
    let server = match args.dashboard_listen.0 {
        Some(addr) => {
            let listener = cirrus_server::connections::bind(addr).with_context(|| {
                format!("binding the dashboard to {addr} (choose another with --dashboard-listen, or off)")
            })?;
            let url = format!("{}://{}/ui", server.scheme(), listener.local_addr()?);
            eprintln!("dashboard on {url}");
            server.with_dashboard_listener(listener)
        }
        None => server,
    };
    let listener = cirrus_server::connections::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("{}://{addr}", server.scheme());
    std::fs::write(target.data_dir.join(client::URL_FILE), format!("{url}\n")).with_context(
        || {
            format!(
                "writing {}",
                target.data_dir.join(client::URL_FILE).display()
            )
        },
    )?;
    eprintln!("listening on {url}");
    server.serve(listener, shutdown_signal()).await?;
    let _ = std::fs::remove_file(target.data_dir.join(client::URL_FILE));
    let _ = std::fs::remove_file(target.data_dir.join(client::S3_URL_FILE));
    eprintln!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The flags given, laid over the function's current config (see [`config_edits`]):
/// resets first, then removals, then the values and items the flags set or add.
fn flag_config(
    args: &DeployArgs,
    name: &str,
    current: Option<&(u32, FunctionConfig)>,
) -> anyhow::Result<(FunctionConfig, Named)> {
    let mut config = current.map(|(_, c)| c.clone()).unwrap_or_default();
    let whose = match current {
        Some((version, _)) => format!("{name} version {version}"),
        None => format!("{name} (not deployed yet)"),
    };
    let mut named = Named::default();
    for what in &args.reset {
        config_edits::reset(&mut config, what, &mut named)?;
    }
    config_edits::remove_env(&mut config.env, &args.remove_env, &args.env, &whose)?;
    config_edits::remove_items(
        &mut config.allowed_hosts,
        &args.remove_allow_hosts,
        &args.allow_hosts,
        "--remove-allow-host",
        &whose,
    )?;
    config_edits::remove_items(
        &mut config.storage,
        &args.remove_storage,
        &args.storage,
        "--remove-storage",
        &whose,
    )?;
    config_edits::remove_items(
        &mut config.on_success,
        &args.remove_on_success,
        &args.on_success,
        "--remove-on-success",
        &whose,
    )?;
    if let Some(memory) = args.memory {
        config.memory_mb = memory;
        named.set("memory_mb");
    }
    if let Some(timeout) = args.timeout {
        config.timeout = timeout;
        named.set("timeout");
    }
    if args.concurrency.is_some() {
        config.max_concurrency = args.concurrency;
        named.set("max_concurrency");
    }
    if args.reserved_concurrency.is_some() {
        config.reserved_concurrency = args.reserved_concurrency;
        named.set("reserved_concurrency");
    }
    if let Some(min_loaded) = args.min_loaded {
        config.min_loaded = min_loaded;
        named.set("min_loaded");
    }
    if let Some(reuse) = args.reuse {
        config.reuse = reuse;
        named.set("reuse");
    }
    if let Some(max_idle) = args.max_idle {
        config.max_idle = max_idle;
        named.set("max_idle");
    }
    if args.runtime.is_some() || args.handler.is_some() {
        let package = config.lambda.get_or_insert_with(Default::default);
        if let Some(runtime) = &args.runtime {
            package.runtime.clone_from(runtime);
        }
        if let Some(handler) = &args.handler {
            package.handler.clone_from(handler);
        }
        named.set("lambda");
    }
    if let Some(idle) = args.idle_timeout {
        config.idle_timeout = idle;
        named.set("idle_timeout");
    }
    if args.private || args.public {
        config.public = args.public;
        named.set("public");
    }
    if let Some(n) = args.max_attempts {
        config.max_attempts = n;
        named.set("max_attempts");
    }
    if let Some(d) = args.retry_delay {
        config.retry_delay = d;
        named.set("retry_delay");
    }
    if let Some(d) = args.max_event_age {
        config.max_event_age = d;
        named.set("max_event_age");
    }
    if let Some(d) = &args.on_failure {
        config.on_failure = Some(d.clone());
        named.set("on_failure");
    }
    config_edits::set_env(&mut config.env, &args.env, &mut named);
    config_edits::add_items(
        &mut config.allowed_hosts,
        &args.allow_hosts,
        "allowed_hosts",
        &mut named,
    )?;
    config_edits::add_items(&mut config.storage, &args.storage, "storage", &mut named)?;
    config_edits::add_items(
        &mut config.on_success,
        &args.on_success,
        "on_success",
        &mut named,
    )?;
    Ok((config, named))
}

/// The function's `$LATEST` version number and config, or `None` if it does not exist.
async fn current_config(
    client: &Client,
    name: &str,
) -> anyhow::Result<Option<(u32, FunctionConfig)>> {
    let response = client
        .send(client.request(Method::GET, &format!("/v1/functions/{name}")))
        .await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let info: FunctionInfo = client::ok(response).await?.json().await?;
    Ok(Some((info.latest.version, info.latest.config)))
}

/// One deployed function in `--json` output: the server's answer plus what the new
/// version kept from the previous one and what it dropped.
#[derive(serde::Serialize)]
struct DeployOutput {
    #[serde(flatten)]
    result: DeployResult,
    #[serde(flatten)]
    carried: Carried,
}

async fn deploy(client: &Client, args: DeployArgs, json: bool) -> anyhow::Result<()> {
    // A manifest also sets each function's triggers; a single deploy leaves them alone.
    struct Step {
        name: String,
        file: PathBuf,
        config: FunctionConfig,
        triggers: Option<Vec<TriggerSpec>>,
        /// What the flags named (a manifest names everything: `None`).
        named: Option<Named>,
        /// `$LATEST` before this deploy (read when the step runs, for manifests).
        previous: Option<(u32, FunctionConfig)>,
    }
    let plan: Vec<Step> = match (&args.name, &args.file) {
        (Some(name), Some(file)) => {
            let current = current_config(client, name).await?;
            let (config, named) = flag_config(&args, name, current.as_ref())?;
            vec![Step {
                name: name.clone(),
                file: file.clone(),
                config,
                triggers: None,
                named: Some(named),
                previous: current,
            }]
        }
        (Some(_), None) => bail!("give the artifact file after the name: cirrus deploy NAME FILE"),
        _ => {
            let single_flags = !args.reset.is_empty()
                || !args.remove_env.is_empty()
                || !args.remove_allow_hosts.is_empty()
                || !args.remove_storage.is_empty()
                || !args.remove_on_success.is_empty();
            if single_flags {
                bail!("--reset and --remove-* apply to cirrus deploy NAME FILE; a manifest is edited in the file (what it does not list is removed)");
            }
            let mut manifest = Manifest::load(&args.manifest)?;
            manifest
                .deploy_order()
                .into_iter()
                .filter_map(|name| {
                    let f = manifest.functions.remove(&name)?;
                    Some(Step {
                        name,
                        file: f.source,
                        config: f.config,
                        triggers: Some(f.triggers),
                        named: None,
                        previous: None,
                    })
                })
                .collect()
        }
    };
    let mut results = Vec::new();
    for mut step in plan {
        let name = &step.name;
        if let Some(triggers) = &step.triggers {
            step.previous = current_config(client, name).await?;
            // Dropped triggers go before the new config lands, so a destination that
            // now publishes to a topic the function no longer subscribes to is not
            // refused as a loop with the old subscription.
            remove_stale_triggers(client, name, triggers).await?;
        }
        let result = deploy_one(client, name, &step.file, &step.config, json).await?;
        if let Some(triggers) = &step.triggers {
            add_missing_triggers(client, name, triggers).await?;
        }
        // Said even when nothing changed: "unchanged" must not hide a grant kept.
        let carried = config_edits::carried(
            step.previous.as_ref().map(|(v, c)| (*v, c)),
            &step.config,
            step.named.as_ref(),
        )?;
        if !json {
            let what = if result.created {
                "deployed"
            } else {
                "unchanged"
            };
            println!(
                "{what} {name} version {} ({})",
                result.version,
                result.function.latest.kind.as_str()
            );
            for line in carried.lines() {
                println!("{line}");
            }
        }
        results.push(DeployOutput { result, carried });
    }
    if json {
        output::json(&results)?;
    }
    Ok(())
}

/// Uploads one artifact; compiling a big component takes seconds, so show progress.
async fn deploy_one(
    client: &Client,
    name: &str,
    file: &Path,
    config: &FunctionConfig,
    quiet: bool,
) -> anyhow::Result<DeployResult> {
    // The server enforces its own size limit; a regular file is finite.
    let bytes = cirrus_api::manifest::read_artifact(file, u64::MAX)
        .with_context(|| format!("reading {}", file.display()))?;
    let file_name = file
        .file_name()
        .map_or("artifact.wasm".into(), |n| n.to_string_lossy().into_owned());
    let form = reqwest::multipart::Form::new()
        .part(
            "config",
            reqwest::multipart::Part::text(serde_json::to_string(config)?)
                .mime_str("application/json")?,
        )
        .part(
            "artifact",
            reqwest::multipart::Part::bytes(bytes).file_name(file_name),
        );
    let request = client.json::<DeployResult>(
        client
            .request(Method::PUT, &format!("/v1/functions/{name}"))
            .multipart(form),
    );
    tokio::pin!(request);
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    loop {
        tokio::select! {
            result = &mut request => {
                if tty && !quiet && started.elapsed() >= Duration::from_secs(1) {
                    eprintln!();
                }
                return result;
            }
            _ = ticks.tick() => {
                if quiet {
                    continue;
                }
                let secs = started.elapsed().as_secs();
                if tty {
                    eprint!("\r  compiling {name}... {secs}s");
                } else if secs.is_multiple_of(5) {
                    eprintln!("  compiling {name}... {secs}s");
                }
            }
        }
    }
}

/// The error for a function that does not exist, naming the closest one that does
/// (`None` when it exists, or the list cannot be read).
async fn no_such_function(client: &Client, name: &str) -> Option<anyhow::Error> {
    let functions: Vec<FunctionInfo> = client
        .json(client.request(Method::GET, "/v1/functions"))
        .await
        .ok()?;
    if functions.iter().any(|f| f.name == name) {
        return None;
    }
    Some(anyhow::anyhow!(
        "function {name:?} does not exist{}; `cirrus ls` lists the functions",
        cirrus_api::suggest::did_you_mean(name, functions.iter().map(|f| f.name.as_str()))
    ))
}

async fn invoke(client: &Client, args: InvokeArgs, json: bool) -> anyhow::Result<()> {
    let (name, qualifier) = Qualifier::split(&args.target).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(missing) = no_such_function(client, name).await {
        return Err(missing);
    }
    let body = match (&args.data, &args.file) {
        (Some(data), _) => data.clone().into_bytes(),
        (None, Some(path)) if path == Path::new("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => Vec::new(),
    };
    let mut path = format!("/v1/functions/{name}/invoke");
    if qualifier != Qualifier::Latest {
        path.push_str(&format!("?qualifier={qualifier}"));
    }
    let mut request = client
        .request(Method::POST, &path)
        .header(reqwest::header::CONTENT_TYPE, &args.content_type)
        .body(body);
    if args.asynchronous {
        request = request.header("x-cirrus-invocation-type", "Event");
        if let Some(key) = &args.idempotency_key {
            request = request.header("x-cirrus-idempotency-key", key);
        }
        let accepted: cirrus_api::Accepted = client.json(request).await?;
        if json {
            return output::json(&accepted);
        }
        let note = if accepted.duplicate {
            " (duplicate of an earlier event)"
        } else {
            ""
        };
        println!("{}{note}", accepted.request_id);
        return Ok(());
    }
    let response = client.send(request).await?;
    if args.verbose {
        eprintln!("status: {}", response.status());
        for (k, v) in response.headers() {
            if k.as_str().starts_with("cirrus-") {
                eprintln!("{k}: {}", v.to_str().unwrap_or("?"));
            }
        }
    }
    let response = client::ok(response).await?;
    output::body(&response.bytes().await?)
}

async fn alias(client: &Client, command: AliasCommand, json: bool) -> anyhow::Result<()> {
    let (info, verb): (Vec<AliasInfo>, &str) = match command {
        AliasCommand::Set {
            name,
            alias,
            version,
        } => {
            let a: AliasInfo = client
                .json(
                    client
                        .request(
                            Method::PUT,
                            &format!("/v1/functions/{name}/aliases/{alias}"),
                        )
                        .json(&cirrus_api::AliasTarget { version }),
                )
                .await?;
            (vec![a], "set")
        }
        AliasCommand::Rm { name, alias } => {
            let a: AliasInfo = client
                .json(client.request(
                    Method::DELETE,
                    &format!("/v1/functions/{name}/aliases/{alias}"),
                ))
                .await?;
            (vec![a], "deleted")
        }
        AliasCommand::Ls { name } => (
            client
                .json(client.request(Method::GET, &format!("/v1/functions/{name}/aliases")))
                .await?,
            "",
        ),
    };
    if json {
        return output::json(&info);
    }
    if verb.is_empty() {
        output::table(
            &["ALIAS", "VERSION"],
            info.iter()
                .map(|a| vec![a.alias.clone(), a.version.to_string()])
                .collect(),
        );
    } else {
        for a in info {
            println!(
                "{verb} alias {}@{} → version {}",
                a.function, a.alias, a.version
            );
        }
    }
    Ok(())
}

fn print_log(line: &LogLine, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(line)?);
    } else {
        let short = line
            .request_id
            .get(line.request_id.len().saturating_sub(8)..)
            .unwrap_or("");
        println!(
            "{} {} v{} {:<8} {}",
            line.time,
            short,
            line.version,
            line.stream.as_str(),
            line.line
        );
    }
    Ok(())
}

async fn logs(client: &Client, args: LogsArgs, json: bool) -> anyhow::Result<()> {
    let mut path = format!("/v1/functions/{}/logs?limit={}", args.name, args.limit);
    if let Some(id) = &args.request_id {
        path.push_str(&format!("&request_id={id}"));
    }
    if !args.follow {
        let page: Page<LogLine> = client.json(client.request(Method::GET, &path)).await?;
        // A deleted function's history stays readable; a name with none is a mistake.
        if page.items.is_empty() {
            if let Some(missing) = no_such_function(client, &args.name).await {
                return Err(missing);
            }
        }
        for line in &page.items {
            print_log(line, json)?;
        }
        return Ok(());
    }
    if let Some(missing) = no_such_function(client, &args.name).await {
        return Err(missing);
    }
    path.push_str("&follow=true");
    let response = client::ok(client.send(client.request(Method::GET, &path)).await?).await?;
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk?);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line: LogLine = serde_json::from_slice(&line).context("decoding a log line")?;
            print_log(&line, json)?;
        }
    }
    Ok(())
}

async fn usage(client: &Client, args: UsageArgs, json: bool) -> anyhow::Result<()> {
    let mut query = vec![("group_by", args.group_by.clone())];
    query.extend(args.from.clone().map(|f| ("from", f)));
    query.extend(args.to.clone().map(|t| ("to", t)));
    let report: UsageReport = client
        .json(client.request(Method::GET, "/v1/usage").query(&query))
        .await?;
    if json {
        return output::json(&report);
    }
    let header = [
        args.group_by.as_str(),
        "requests",
        "errors",
        "cold_starts",
        "billed_ms",
        "gb_seconds",
        "cpu_seconds",
        "cost",
    ];
    let cells = |r: &UsageRow| {
        vec![
            r.key.clone(),
            r.requests.to_string(),
            r.errors.to_string(),
            r.cold_starts.to_string(),
            r.billed_ms.to_string(),
            r.gb_seconds.to_string(),
            r.cpu_seconds.to_string(),
            r.cost.to_string(),
        ]
    };
    if args.csv {
        println!("{}", header.join(","));
        for row in &report.rows {
            println!(
                "{}",
                cells(row)
                    .iter()
                    .map(|c| output::csv_field(c))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = report.rows.iter().map(cells).collect();
    rows.push(cells(&report.total));
    let upper: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
    output::table(&upper.iter().map(String::as_str).collect::<Vec<_>>(), rows);
    println!(
        "{} to {}: {} {} after a free-tier discount of {}",
        report.from,
        report.to,
        report.total_cost,
        report.prices.currency,
        report.free_tier_discount
    );
    Ok(())
}

async fn dlq(client: &Client, command: DlqCommand, json: bool) -> anyhow::Result<()> {
    let affected = |verb: &'static str| {
        move |a: cirrus_api::Affected| {
            if json {
                output::json(&a)
            } else {
                println!("{verb} {} event(s)", a.count);
                Ok(())
            }
        }
    };
    let scope = |function: &Option<String>| {
        function
            .as_ref()
            .map(|f| vec![("function", f.clone())])
            .unwrap_or_default()
    };
    match command {
        DlqCommand::Ls { function } => {
            let page: Page<cirrus_api::DeadEvent> = client
                .json(
                    client
                        .request(Method::GET, "/v1/dlq")
                        .query(&scope(&function)),
                )
                .await?;
            if json {
                return output::json(&page.items);
            }
            let rows = page
                .items
                .iter()
                .map(|e| {
                    vec![
                        e.failed_at.clone(),
                        e.request_id.clone(),
                        e.function.clone(),
                        e.attempts.to_string(),
                        e.size_bytes.to_string(),
                        e.last_error.clone(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "FAILED",
                    "REQUEST ID",
                    "FUNCTION",
                    "ATTEMPTS",
                    "BYTES",
                    "LAST ERROR",
                ],
                rows,
            );
            Ok(())
        }
        DlqCommand::Show { request_id } => {
            let event: cirrus_api::DeadEvent = client
                .json(client.request(Method::GET, &format!("/v1/dlq/{request_id}")))
                .await?;
            output::json(&event)
        }
        DlqCommand::Redrive {
            request_id,
            function,
            ..
        } => {
            let path = request_id.map_or("/v1/dlq/redrive".to_owned(), |id| {
                format!("/v1/dlq/{id}/redrive")
            });
            affected("redrove")(
                client
                    .json(client.request(Method::POST, &path).query(&scope(&function)))
                    .await?,
            )
        }
        DlqCommand::Purge {
            request_id,
            function,
            ..
        } => {
            let path = request_id.map_or("/v1/dlq".to_owned(), |id| format!("/v1/dlq/{id}"));
            affected("purged")(
                client
                    .json(
                        client
                            .request(Method::DELETE, &path)
                            .query(&scope(&function)),
                    )
                    .await?,
            )
        }
    }
}

/// The triggers of `function` (none if it does not exist yet).
async fn triggers_of(client: &Client, function: &str) -> anyhow::Result<Vec<TriggerInfo>> {
    client
        .json(
            client
                .request(Method::GET, "/v1/triggers")
                .query(&[("function", function)]),
        )
        .await
}

/// Removes the triggers of `function` that are not in `wanted`.
async fn remove_stale_triggers(
    client: &Client,
    function: &str,
    wanted: &[TriggerSpec],
) -> anyhow::Result<()> {
    for stale in triggers_of(client, function)
        .await?
        .iter()
        .filter(|t| !wanted.contains(&t.spec))
    {
        client::ok(
            client
                .send(client.request(Method::DELETE, &format!("/v1/triggers/{}", stale.id)))
                .await?,
        )
        .await?;
    }
    Ok(())
}

/// Adds the triggers of `wanted` that `function` does not have yet.
async fn add_missing_triggers(
    client: &Client,
    function: &str,
    wanted: &[TriggerSpec],
) -> anyhow::Result<()> {
    let current = triggers_of(client, function).await?;
    for spec in wanted
        .iter()
        .filter(|s| !current.iter().any(|t| &t.spec == *s))
    {
        let _: TriggerInfo = client
            .json(
                client
                    .request(Method::POST, &format!("/v1/functions/{function}/triggers"))
                    .json(spec),
            )
            .await?;
    }
    Ok(())
}

/// How a trigger holding a connection is doing: `connected, 12 messages`, or the error.
fn state(trigger: &TriggerInfo) -> String {
    let Some(state) = &trigger.state else {
        return "-".into();
    };
    let mut text = format!(
        "{}, {} messages",
        if state.connected {
            "connected"
        } else {
            "disconnected"
        },
        state.messages
    );
    if let Some(error) = &state.last_error {
        text.push_str(&format!("; last error: {error}"));
        if let Some(at) = &state.last_error_at {
            text.push_str(&format!(" ({at})"));
        }
    }
    text
}

fn describe(spec: &TriggerSpec) -> (String, String) {
    match spec {
        TriggerSpec::Route(r) => ("route".into(), r.clone()),
        TriggerSpec::Topic(t) => ("topic".into(), t.clone()),
        TriggerSpec::Schedule(s) => ("schedule".into(), s.clone()),
        TriggerSpec::Table(t) => ("table".into(), t.clone()),
        TriggerSpec::Mqtt(m) => ("mqtt".into(), format!("{} {}", m.broker, m.filter)),
        TriggerSpec::Postgres(p) => ("postgres".into(), format!("{} {}", p.url, p.table)),
        TriggerSpec::Nats(n) => {
            let mut text = format!("{} {}", n.broker, n.subject);
            if let Some(stream) = &n.stream {
                text.push_str(&format!(" stream={stream}"));
            }
            ("nats".into(), text)
        }
        TriggerSpec::Bucket(b) => {
            let events: Vec<String> = b
                .events
                .iter()
                .map(|e| format!("{e:?}").to_lowercase())
                .collect();
            let mut text = format!("{} {}", b.name, events.join(","));
            if !b.prefix.is_empty() {
                text.push_str(&format!(" prefix={}", b.prefix));
            }
            if !b.suffix.is_empty() {
                text.push_str(&format!(" suffix={}", b.suffix));
            }
            ("bucket".into(), text)
        }
    }
}

async fn trigger(client: &Client, command: TriggerCommand, json: bool) -> anyhow::Result<()> {
    let triggers: Vec<TriggerInfo> = match command {
        TriggerCommand::Add(add) => {
            let AddTrigger {
                function,
                route,
                topic,
                schedule,
                table,
                bucket,
                events,
                prefix,
                suffix,
                mqtt,
                postgres,
                batch_size,
                batch_window,
                nats,
                stream,
                consumer,
                broker,
                protocol,
                username,
                password_env,
                ca_file,
                client_id,
            } = *add;
            if mqtt.is_none() && nats.is_none() && postgres.is_none() {
                for (flag, given) in [
                    ("--broker", broker.is_some()),
                    ("--username", username.is_some()),
                    ("--password-env", password_env.is_some()),
                ] {
                    if given {
                        bail!("{flag} goes with --mqtt, --nats or --postgres");
                    }
                }
            }
            // --table names a KV table, or with --postgres the database's table.
            let other_kind = route.is_some()
                || topic.is_some()
                || schedule.is_some()
                || bucket.is_some()
                || mqtt.is_some()
                || nats.is_some();
            if table.is_some() && postgres.is_none() && other_kind {
                bail!("give one kind of trigger: --table is a KV table's (or --postgres's)");
            }
            if batch_size.is_some() && nats.is_none() && postgres.is_none() {
                bail!("--batch-size goes with --nats --stream or --postgres");
            }
            if postgres.is_some() && (username.is_some() || broker.is_some()) {
                bail!("with --postgres the user and host are part of the URL");
            }
            let spec = match (route, topic, schedule, table, bucket) {
                (_, _, _, Some(table), _) if postgres.is_some() => {
                    TriggerSpec::Postgres(cirrus_api::trigger::PostgresTrigger {
                        url: postgres.unwrap_or_default(),
                        table,
                        password_env,
                        batch_size,
                        batch_window,
                    })
                }
                _ if nats.is_some() => TriggerSpec::Nats(cirrus_api::trigger::NatsTrigger {
                    subject: nats.unwrap_or_default(),
                    broker: broker.unwrap_or_default(),
                    stream,
                    consumer,
                    username,
                    password_env,
                    batch_size,
                    batch_window,
                }),
                _ if mqtt.is_some() => TriggerSpec::Mqtt(cirrus_api::trigger::MqttTrigger {
                    filter: mqtt.unwrap_or_default(),
                    broker: broker.unwrap_or_default(),
                    protocol: protocol.unwrap_or_default(),
                    username,
                    password_env,
                    ca_file,
                    client_id,
                }),
                (Some(r), ..) => TriggerSpec::Route(r),
                (None, Some(t), ..) => TriggerSpec::Topic(t),
                (None, None, Some(s), ..) => TriggerSpec::Schedule(s),
                (None, None, None, Some(t), _) => TriggerSpec::Table(t),
                (None, None, None, None, Some(name)) => {
                    TriggerSpec::Bucket(cirrus_api::trigger::BucketTrigger {
                        name,
                        events: if events.is_empty() {
                            vec![
                                cirrus_api::trigger::BucketEvent::Created,
                                cirrus_api::trigger::BucketEvent::Removed,
                            ]
                        } else {
                            events
                        },
                        prefix: prefix.unwrap_or_default(),
                        suffix: suffix.unwrap_or_default(),
                    })
                }
                (None, None, None, None, None) => {
                    bail!("give --route, --topic, --schedule, --table, --bucket, --mqtt, --nats or --postgres")
                }
            };
            vec![
                client
                    .json(
                        client
                            .request(Method::POST, &format!("/v1/functions/{function}/triggers"))
                            .json(&spec),
                    )
                    .await?,
            ]
        }
        TriggerCommand::Ls { function } => {
            let query: Vec<(&str, String)> =
                function.map(|f| vec![("function", f)]).unwrap_or_default();
            client
                .json(client.request(Method::GET, "/v1/triggers").query(&query))
                .await?
        }
        TriggerCommand::Rm { id } => vec![
            client
                .json(client.request(Method::DELETE, &format!("/v1/triggers/{id}")))
                .await?,
        ],
    };
    if json {
        return output::json(&triggers);
    }
    let rows = triggers
        .iter()
        .map(|t| {
            let (kind, what) = describe(&t.spec);
            vec![t.id.clone(), t.function.clone(), kind, what, state(t)]
        })
        .collect();
    output::table(&["ID", "FUNCTION", "KIND", "TRIGGER", "STATE"], rows);
    Ok(())
}

async fn kv(client: &Client, command: KvCommand, json: bool) -> anyhow::Result<()> {
    let path = |table: &str, key: &str| format!("/v1/kv/{table}/{}", encode_segment(key));
    let entry = match command {
        KvCommand::Get { table, key } => {
            let response = client::ok(
                client
                    .send(client.request(Method::GET, &path(&table, &key)))
                    .await?,
            )
            .await?;
            return output::body(&response.bytes().await?);
        }
        KvCommand::Put {
            table,
            key,
            value,
            content_type,
            if_version,
        } => {
            let mut request = client
                .request(Method::PUT, &path(&table, &key))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(value);
            if let Some(v) = if_version {
                request = request.header(reqwest::header::IF_MATCH, format!("\"{v}\""));
            }
            client.json::<cirrus_api::KvEntry>(request).await?
        }
        KvCommand::Rm { table, key } => {
            client
                .json::<cirrus_api::KvEntry>(client.request(Method::DELETE, &path(&table, &key)))
                .await?
        }
        KvCommand::Ls {
            table,
            prefix,
            limit,
        } => {
            let page: Page<cirrus_api::KvEntry> =
                list_by_prefix(client, &format!("/v1/kv/{table}"), prefix, limit).await?;
            if json {
                return output::json(&page);
            }
            let rows = page
                .items
                .iter()
                .map(|e| {
                    vec![
                        e.key.clone(),
                        e.version.to_string(),
                        e.size_bytes.to_string(),
                        e.updated_at.clone(),
                    ]
                })
                .collect();
            output::table(&["KEY", "VERSION", "BYTES", "UPDATED"], rows);
            return Ok(());
        }
    };
    if json {
        return output::json(&entry);
    }
    println!("{}/{} version {}", entry.table, entry.key, entry.version);
    Ok(())
}

async fn bucket(client: &Client, command: BucketCommand, json: bool) -> anyhow::Result<()> {
    match command {
        BucketCommand::Ls => {
            let page: Page<cirrus_api::BucketInfo> = client
                .json(client.request(Method::GET, "/v1/buckets"))
                .await?;
            if json {
                return output::json(&page);
            }
            let rows = page
                .items
                .into_iter()
                .map(|b| vec![b.name, b.created_at])
                .collect();
            output::table(&["BUCKET", "CREATED"], rows);
        }
        BucketCommand::Mb { name } => {
            let made: cirrus_api::BucketInfo = client
                .json(client.request(Method::PUT, &format!("/v1/buckets/{name}")))
                .await?;
            if json {
                return output::json(&made);
            }
            println!("made bucket {}", made.name);
        }
        BucketCommand::Rb { name } => {
            client::ok(
                client
                    .send(client.request(Method::DELETE, &format!("/v1/buckets/{name}")))
                    .await?,
            )
            .await?;
            if !json {
                println!("removed bucket {name}");
            }
        }
    }
    Ok(())
}

async fn object(client: &Client, command: ObjectCommand, json: bool) -> anyhow::Result<()> {
    let path = |bucket: &str, key: &str| {
        format!(
            "/v1/buckets/{bucket}/objects/{}",
            key.split('/')
                .map(encode_segment)
                .collect::<Vec<_>>()
                .join("/")
        )
    };
    match command {
        ObjectCommand::Ls {
            bucket,
            prefix,
            limit,
        } => {
            let page: Page<cirrus_api::ObjectInfo> = list_by_prefix(
                client,
                &format!("/v1/buckets/{bucket}/objects"),
                prefix,
                limit,
            )
            .await?;
            if json {
                return output::json(&page);
            }
            let rows = page
                .items
                .into_iter()
                .map(|o| vec![o.key, o.size.to_string(), o.last_modified])
                .collect();
            output::table(&["KEY", "BYTES", "MODIFIED"], rows);
        }
        ObjectCommand::Put {
            bucket,
            key,
            file,
            content_type,
        } => {
            let body = if file.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
                bytes
            } else {
                tokio::fs::read(&file)
                    .await
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let stored: cirrus_api::ObjectInfo = client
                .json(
                    client
                        .request(Method::PUT, &path(&bucket, &key))
                        .header(reqwest::header::CONTENT_TYPE, content_type)
                        .body(body),
                )
                .await?;
            if json {
                return output::json(&stored);
            }
            println!(
                "{bucket}/{} {} bytes etag {}",
                stored.key, stored.size, stored.etag
            );
        }
        ObjectCommand::Get {
            bucket,
            key,
            output,
        } => {
            let response = client::ok(
                client
                    .send(client.request(Method::GET, &path(&bucket, &key)))
                    .await?,
            )
            .await?;
            let bytes = response.bytes().await?;
            match output {
                Some(file) => tokio::fs::write(&file, &bytes)
                    .await
                    .with_context(|| format!("writing {}", file.display()))?,
                None => output::body(&bytes)?,
            }
        }
        ObjectCommand::Rm { bucket, key } => {
            client::ok(
                client
                    .send(client.request(Method::DELETE, &path(&bucket, &key)))
                    .await?,
            )
            .await?;
            if !json {
                println!("removed {bucket}/{key}");
            }
        }
    }
    Ok(())
}

/// One page of a listing by prefix (KV tables, objects).
async fn list_by_prefix<T: serde::de::DeserializeOwned>(
    client: &Client,
    path: &str,
    prefix: Option<String>,
    limit: usize,
) -> anyhow::Result<Page<T>> {
    let mut query = vec![("limit", limit.to_string())];
    query.extend(prefix.map(|p| ("prefix", p)));
    client
        .json(client.request(Method::GET, path).query(&query))
        .await
}

/// Percent-encodes a key for one URL path segment.
fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
