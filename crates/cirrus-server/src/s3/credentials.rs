//! S3 access keys: `<data-dir>/s3-credentials` in the AWS shared-credentials format,
//! written with a fresh key pair (profile `default`) on first start. Every profile in
//! the file is accepted, so more keys can be added by hand.

use crate::keys::Principal;
use anyhow::Context as _;
use rand::Rng as _;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub const CREDENTIALS_FILE: &str = "s3-credentials";

/// Access key id → secret key: the file's pairs (each with the admin's rights), and the
/// pairs issued with API keys (each with its key's scope).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    keys: HashMap<String, String>,
    /// The `default` profile's pair (for Cirrus's own clients).
    default: Option<(String, String)>,
    issued: Option<Arc<crate::keys::ApiKeys>>,
}

/// What AWS answers for a key it does not know.
pub const UNKNOWN_KEY: &str = "The AWS Access Key Id you provided does not exist in our records.";

impl Credentials {
    #[cfg(test)]
    pub fn secret(&self, access_key: &str) -> Option<&str> {
        self.keys.get(access_key).map(String::as_str)
    }

    /// Accepts the pairs issued with API keys too.
    pub fn with_issued(mut self, keys: Arc<crate::keys::ApiKeys>) -> Self {
        self.issued = Some(keys);
        self
    }

    /// The secret of `access_key` and who holds it; the reason when it is unknown,
    /// revoked or expired.
    pub fn lookup(&self, access_key: &str) -> Result<(Cow<'_, str>, Principal), String> {
        if let Some(secret) = self.keys.get(access_key) {
            let principal = Principal {
                actor: format!("aws:{access_key}"),
                scope: cirrus_api::access::Scope::Admin,
            };
            return Ok((Cow::Borrowed(secret.as_str()), principal));
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        match self
            .issued
            .as_ref()
            .and_then(|k| k.aws_secret(access_key, now_ms))
        {
            Some(Ok((secret, principal))) => Ok((Cow::Owned(secret), principal)),
            Some(Err(e)) => Err(e.message),
            None => Err(UNKNOWN_KEY.to_owned()),
        }
    }

    /// The `default` profile's access key and secret.
    pub fn default_pair(&self) -> Option<(&str, &str)> {
        self.default
            .as_ref()
            .map(|(id, secret)| (id.as_str(), secret.as_str()))
    }

    /// The first key pair (the `default` profile's when present).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut keys = HashMap::new();
        let mut default = None;
        let mut profile = String::new();
        let mut current: (Option<String>, Option<String>) = (None, None);
        let mut flush =
            |current: &mut (Option<String>, Option<String>), profile: &str| -> anyhow::Result<()> {
                match std::mem::take(current) {
                    (Some(id), Some(secret)) => {
                        if profile == "default" {
                            default = Some((id.clone(), secret.clone()));
                        }
                        keys.insert(id, secret);
                        Ok(())
                    }
                    (None, None) => Ok(()),
                    _ => anyhow::bail!(
                    "profile [{profile}] needs both aws_access_key_id and aws_secret_access_key"
                ),
                }
            };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                flush(&mut current, &profile)?;
                profile = name.trim().to_owned();
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                anyhow::bail!("line {line:?} is not `name = value`");
            };
            match name.trim() {
                "aws_access_key_id" => current.0 = Some(value.trim().to_owned()),
                "aws_secret_access_key" => current.1 = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        flush(&mut current, &profile)?;
        if keys.is_empty() {
            anyhow::bail!("no key pair in the file");
        }
        Ok(Self {
            keys,
            default,
            issued: None,
        })
    }
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Credentials> {
    let text = load_or_create_text(data_dir)?;
    Credentials::parse(&text)
        .with_context(|| format!("reading {}", data_dir.join(CREDENTIALS_FILE).display()))
}

/// The credentials file's text, created with a new pair if there is none.
pub fn load_or_create_text(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(CREDENTIALS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => return Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!(
        "CIRRUS{}",
        random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 14)
    );
    let secret = random_string(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        40,
    );
    let text = format!(
        "# Cirrus S3 API keys (AWS shared-credentials format). Every profile here is accepted.\n[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"
    );
    crate::auth::create_private_file(&path, text.as_bytes())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_and_every_profile_counts() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.keys, again.keys);
        let parsed = Credentials::parse(
            "[default]\naws_access_key_id = A\naws_secret_access_key = s1\n\n[other]\naws_access_key_id=B\naws_secret_access_key=s2\n",
        )
        .unwrap();
        assert_eq!(parsed.secret("A"), Some("s1"));
        assert_eq!(parsed.secret("B"), Some("s2"));
        assert_eq!(parsed.default_pair(), Some(("A", "s1")));
        assert!(Credentials::parse("[x]\naws_access_key_id = A\n").is_err());
    }
}
