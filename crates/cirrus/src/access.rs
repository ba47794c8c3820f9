//! `cirrus secret`, `cirrus key` and `cirrus audit`.

use crate::client::Client;
use crate::output;
use anyhow::Context as _;
use cirrus_api::access::{AuditRecord, CreatedKey, KeyInfo, NewKey, Scope, SecretInfo};
use cirrus_api::Page;
use clap::Subcommand;
use reqwest::Method;
use std::io::Read as _;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create or rotate a secret: the value from stdin (one trailing newline dropped) or
    /// --from-file (as it is). Reference it from a function as env = { VAR = "secret:NAME" };
    /// environments started from now on get the new value
    Set {
        name: String,
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// List secrets (names, dates and the function versions using them; never values)
    Ls,
    /// Delete a secret no function version references
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key; its token and AWS secret are shown this once
    Create {
        /// admin, deploy, read, or invoke:FUNCTION (invoke:* for any function)
        #[arg(long)]
        scope: Scope,
        /// How long it lasts (e.g. 30d, 12h); without it, until revoked
        #[arg(long)]
        expires: Option<String>,
        /// Who holds it, or what it is for
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List API keys (never their secrets)
    Ls,
    /// Revoke a key: its token and AWS key pair stop working at once
    Revoke { id: String },
}

pub async fn secret(client: &Client, command: SecretCommand, json: bool) -> anyhow::Result<()> {
    match command {
        SecretCommand::Set { name, from_file } => {
            let value = match from_file {
                Some(path) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                None => {
                    let mut value = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut value)
                        .context("reading the secret from stdin")?;
                    if value.ends_with(b"\n") {
                        value.pop();
                        if value.ends_with(b"\r") {
                            value.pop();
                        }
                    }
                    value
                }
            };
            let info: SecretInfo = client
                .json(
                    client
                        .request(Method::PUT, &format!("/v1/secrets/{name}"))
                        .body(value),
                )
                .await?;
            if json {
                return output::json(&info);
            }
            if info.created_at == info.updated_at {
                println!("secret {} created", info.name);
            } else {
                println!(
                    "secret {} rotated: environments started from now on get the new value",
                    info.name
                );
            }
            Ok(())
        }
        SecretCommand::Ls => {
            let page: Page<SecretInfo> = client
                .json(client.request(Method::GET, "/v1/secrets"))
                .await?;
            if json {
                return output::json(&page.items);
            }
            let rows = page
                .items
                .into_iter()
                .map(|s| vec![s.name, s.updated_at, s.used_by.join(", ")])
                .collect();
            output::table(&["NAME", "UPDATED", "USED BY"], rows);
            Ok(())
        }
        SecretCommand::Rm { name } => {
            let info: SecretInfo = client
                .json(client.request(Method::DELETE, &format!("/v1/secrets/{name}")))
                .await?;
            if json {
                return output::json(&info);
            }
            println!("secret {} deleted", info.name);
            Ok(())
        }
    }
}

pub async fn key(client: &Client, command: KeyCommand, json: bool) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create {
            scope,
            expires,
            name,
        } => {
            let created: CreatedKey = client
                .json(client.request(Method::POST, "/v1/keys").json(&NewKey {
                    scope,
                    name,
                    expires_in: expires,
                }))
                .await?;
            if json {
                return output::json(&created);
            }
            let k = &created.key;
            println!("key {} (scope {}) created", k.id, k.scope);
            if let Some(expires) = &k.expires_at {
                println!("expires:               {expires}");
            }
            println!("token:                 {}", created.token);
            println!("aws_access_key_id:     {}", k.access_key_id);
            println!("aws_secret_access_key: {}", created.secret_access_key);
            println!("These secrets are shown only now: store them.");
            Ok(())
        }
        KeyCommand::Ls => {
            let page: Page<KeyInfo> = client.json(client.request(Method::GET, "/v1/keys")).await?;
            if json {
                return output::json(&page.items);
            }
            let rows = page
                .items
                .into_iter()
                .map(|k| {
                    let state = match (&k.revoked_at, &k.expires_at) {
                        (Some(at), _) => format!("revoked {at}"),
                        (None, Some(at)) => format!("expires {at}"),
                        (None, None) => "active".to_owned(),
                    };
                    vec![
                        k.id,
                        k.scope.to_string(),
                        k.name,
                        k.access_key_id,
                        k.created_at,
                        state,
                    ]
                })
                .collect();
            output::table(
                &["ID", "SCOPE", "NAME", "ACCESS KEY ID", "CREATED", "STATE"],
                rows,
            );
            Ok(())
        }
        KeyCommand::Revoke { id } => {
            let key: KeyInfo = client
                .json(client.request(Method::DELETE, &format!("/v1/keys/{id}")))
                .await?;
            if json {
                return output::json(&key);
            }
            println!("key {} revoked", key.id);
            Ok(())
        }
    }
}

pub async fn audit(client: &Client, limit: usize, json: bool) -> anyhow::Result<()> {
    let page: Page<AuditRecord> = client
        .json(
            client
                .request(Method::GET, "/v1/audit")
                .query(&[("limit", limit)]),
        )
        .await?;
    if json {
        return output::json(&page.items);
    }
    let rows = page
        .items
        .into_iter()
        .map(|e| vec![e.time, e.actor, e.method, e.path, e.status.to_string()])
        .collect();
    output::table(&["TIME", "ACTOR", "METHOD", "PATH", "STATUS"], rows);
    Ok(())
}
