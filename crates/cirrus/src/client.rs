//! The management API client: finds the server and token, sends requests, and turns
//! error answers into messages.

use anyhow::{bail, Context as _};
use cirrus_api::ErrorBody;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// `cirrus up` writes its address here so local clients find a server on any port.
pub const URL_FILE: &str = "server.url";
/// Where `cirrus up` writes the object API's address.
pub const S3_URL_FILE: &str = "s3.url";

/// Where the client finds the server: flags, then environment, then the data dir.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Server URL [default: from <data-dir>/server.url, else http://127.0.0.1:8080]
    #[arg(long, env = "CIRRUS_URL", global = true)]
    pub url: Option<String>,
    /// Admin token or API key [default: from <data-dir>/admin.token]
    #[arg(long, env = "CIRRUS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory of a local server
    #[arg(
        long,
        env = "CIRRUS_DATA_DIR",
        default_value = ".cirrus",
        global = true
    )]
    pub data_dir: PathBuf,
    /// A CA certificate (PEM) to trust besides the system's, for a server with a
    /// self-signed or private certificate
    #[arg(long, env = "CIRRUS_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
}

pub struct Client {
    http: reqwest::Client,
    pub base: String,
    token: Option<String>,
    /// Where a token was looked for, for the message when none was found.
    token_file: PathBuf,
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The data dir a client reads the server's address and token from: as given, or for
/// the default (`.cirrus`) missing here, the nearest one in a folder above, so commands
/// work inside a project made next to where `cirrus up` runs.
fn data_dir(given: &Path) -> PathBuf {
    if given != Path::new(".cirrus") || given.exists() {
        return given.to_path_buf();
    }
    let Ok(here) = std::env::current_dir() else {
        return given.to_path_buf();
    };
    here.ancestors()
        .skip(1)
        .map(|dir| dir.join(".cirrus"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| given.to_path_buf())
}

impl Client {
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        let target = &Target {
            data_dir: data_dir(&target.data_dir),
            ..target.clone()
        };
        let base = target
            .url
            .clone()
            .or_else(|| read_trimmed(&target.data_dir.join(URL_FILE)))
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let token = target
            .token
            .clone()
            .or_else(|| read_trimmed(&target.data_dir.join(cirrus_server::auth::TOKEN_FILE)));
        let mut http = reqwest::Client::builder();
        if let Some(path) = &target.cacert {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            http = http.add_root_certificate(cert);
        }
        Ok(Self {
            http: http.build()?,
            base: base.trim_end_matches('/').to_owned(),
            token,
            token_file: target.data_dir.join(cirrus_server::auth::TOKEN_FILE),
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the Cirrus server at {} (is `cirrus up` running?)",
                self.base
            )
        })?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
            bail!(
                "the server at {} needs a token, and none was found: not in --token, not in CIRRUS_TOKEN, and no {} ({}). Pass the admin token or an API key with --token or CIRRUS_TOKEN, or point --data-dir (CIRRUS_DATA_DIR) at the server's data directory",
                self.base,
                self.token_file.display(),
                if self.token_file.exists() { "it is empty" } else { "it does not exist" }
            );
        }
        Ok(response)
    }

    /// Sends and decodes a JSON answer; error answers become errors with their message.
    pub async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        let response = ok(self.send(request).await?).await?;
        response
            .json()
            .await
            .context("decoding the server's answer")
    }
}

/// Turns an error answer into an error carrying its code and message.
pub async fn ok(response: Response) -> anyhow::Result<Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => bail!(
            "{} ({}): {}",
            e.error.code,
            status.as_u16(),
            e.error.message
        ),
        Err(_) => bail!(
            "server answered {status}: {}",
            String::from_utf8_lossy(&body)
        ),
    }
}
