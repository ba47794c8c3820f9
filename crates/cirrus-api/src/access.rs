//! Who may do what: API key scopes, secrets as the API shows them (never their values),
//! and the audit log.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a credential may do. `admin` may do everything; `deploy` everything `read` may
/// plus changing functions, triggers, tables and buckets, and invoking any function;
/// `read` may read everything but secrets' values (which nothing returns) and keys;
/// `invoke:NAME` may only invoke function NAME (`invoke:*`: any function).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Deploy,
    Read,
    Invoke(String),
}

/// What one request needs; each route declares one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    Admin,
    Deploy,
    Read,
    Invoke(&'a str),
}

impl Scope {
    pub fn allows(&self, need: Need<'_>) -> bool {
        match (self, need) {
            (Scope::Admin, _) => true,
            (Scope::Deploy, Need::Deploy | Need::Read | Need::Invoke(_)) => true,
            (Scope::Read, Need::Read) => true,
            (Scope::Invoke(allowed), Need::Invoke(function)) => {
                allowed == "*" || allowed == function
            }
            _ => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Deploy => f.write_str("deploy"),
            Scope::Read => f.write_str("read"),
            Scope::Invoke(function) => write!(f, "invoke:{function}"),
        }
    }
}

impl fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Admin => f.write_str("admin"),
            Need::Deploy => f.write_str("deploy"),
            Need::Read => f.write_str("read"),
            Need::Invoke(function) => write!(f, "invoke:{function}"),
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Scope::Admin),
            "deploy" => Ok(Scope::Deploy),
            "read" => Ok(Scope::Read),
            _ => match s.strip_prefix("invoke:") {
                Some("*") => Ok(Scope::Invoke("*".to_owned())),
                Some(function) => crate::spec::validate_name(function)
                    .map(|()| Scope::Invoke(function.to_owned()))
                    .map_err(|e| format!("invalid scope {s:?}: {}", e.message)),
                None => Err(format!(
                    "invalid scope {s:?}: use admin, deploy, read or invoke:FUNCTION (invoke:* for any function)"
                )),
            },
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub scope: Scope,
    /// A label for people (who holds it, what for).
    #[serde(default)]
    pub name: String,
    /// How long the key lasts (`30d`, `12h`); none: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

/// An API key as listed: never its secrets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// The AWS access key id of the key's SigV4 pair (S3 and Lambda APIs).
    pub access_key_id: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// The answer to `POST /v1/keys`: the only time the secrets are shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyInfo,
    /// `Authorization: Bearer <token>`.
    pub token: String,
    pub secret_access_key: String,
}

/// A secret as listed: its name and dates, never its value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
    /// Functions whose versions reference it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// The prefix of an `env` value that names a secret instead of holding a value.
pub const SECRET_REFERENCE: &str = "secret:";

/// The secret an `env` value references, if it is a reference.
pub fn secret_reference(value: &str) -> Option<&str> {
    value.strip_prefix(SECRET_REFERENCE)
}

/// Secret names: 1-128 of lowercase letters, digits, '-', '_' and '.', starting with a
/// letter or digit.
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid secret name: use 1-128 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
        ))
    }
}

/// One management action in the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub seq: u64,
    pub time: String,
    /// `admin-token`, `key:ID`, `aws:ACCESS_KEY_ID`, or `anonymous` for a refused
    /// attempt without credentials.
    pub actor: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_nest() {
        let deploy: Scope = "deploy".parse().unwrap();
        assert!(deploy.allows(Need::Read) && deploy.allows(Need::Invoke("f")));
        assert!(!deploy.allows(Need::Admin));
        let read: Scope = "read".parse().unwrap();
        assert!(read.allows(Need::Read) && !read.allows(Need::Deploy));
        assert!(!read.allows(Need::Invoke("f")));
        let invoke: Scope = "invoke:f".parse().unwrap();
        assert!(invoke.allows(Need::Invoke("f")) && !invoke.allows(Need::Invoke("g")));
        assert!(!invoke.allows(Need::Read));
        assert!("invoke:*"
            .parse::<Scope>()
            .unwrap()
            .allows(Need::Invoke("g")));
        assert_eq!(invoke.to_string(), "invoke:f");
        for bad in ["", "root", "invoke:", "invoke:a/b", "Admin"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secret_names() {
        assert!(validate_secret_name("db-password.v2").is_ok());
        for bad in ["", "DB", "-x", "a b", &"x".repeat(129)] {
            assert!(validate_secret_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(secret_reference("secret:db"), Some("db"));
        assert_eq!(secret_reference("plain"), None);
    }
}
