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
    /// Admin token [default: from <data-dir>/admin.token]
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
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl Client {
    pub fn new(target: &Target) -> anyhow::Result<Self> {
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
