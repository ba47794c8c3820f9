//! Short-lived tokens that let a function reach exactly the storage its config grants.
//! A token is `cft1.<claims>.<mac>`: base64url JSON claims (function and its
//! incarnation, grants, lineage, expiry) and an HMAC-SHA256 over them with a key derived
//! from the admin token, so tokens die with a rotated admin token. A token is honoured
//! only while the incarnation of the function it names exists: deleting the function (or
//! deleting and creating it again, or restarting the server, which no invocation
//! outlives) ends its tokens at once. [`Sealer`] is that scheme for any signed value (the
//! lineage header uses it with a key of its own).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cirrus_api::grant::{Access, Grant, Resource};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "cft1.";

/// Signs values as `<prefix><base64url JSON>.<base64url HMAC-SHA256>` and opens them
/// again, with a key derived from the admin token and a label naming the purpose (so a
/// value sealed for one purpose never verifies as another).
pub struct Sealer {
    key: [u8; 32],
    prefix: &'static str,
}

impl Sealer {
    pub fn new(admin_token: &str, label: &[u8], prefix: &'static str) -> Self {
        Self {
            key: crate::sigv4::hmac(admin_token.as_bytes(), label),
            prefix,
        }
    }

    pub fn seal<T: Serialize>(&self, value: &T) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default());
        let mac = URL_SAFE_NO_PAD.encode(crate::sigv4::hmac(&self.key, body.as_bytes()));
        format!("{}{body}.{mac}", self.prefix)
    }

    /// The value, if `sealed` was made by [`Sealer::seal`] with this key and prefix.
    pub fn open<T: DeserializeOwned>(&self, sealed: &str) -> Option<T> {
        let (body, mac) = sealed.strip_prefix(self.prefix)?.split_once('.')?;
        let expected = URL_SAFE_NO_PAD.encode(crate::sigv4::hmac(&self.key, body.as_bytes()));
        if !crate::sigv4::constant_time_eq(expected.as_bytes(), mac.as_bytes()) {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "f")]
    pub function: String,
    /// Which incarnation of `function` the token was minted for (see
    /// `Registry::incarnation`).
    #[serde(rename = "i")]
    pub incarnation: u64,
    /// The invocation the token was minted for, and its pipeline depth: the lineage of
    /// what the function writes (so a function triggering itself stops at the limit).
    #[serde(rename = "r")]
    pub request_id: String,
    #[serde(rename = "h")]
    pub hops: u32,
    /// The request the invocation's lineage started with; `None` when it is that
    /// request itself.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(rename = "g")]
    pub grants: Vec<Grant>,
    /// Milliseconds since the epoch.
    #[serde(rename = "exp")]
    pub expires_ms: u64,
}

impl Claims {
    pub fn allows(&self, resource: &Resource, access: Access) -> bool {
        self.grants.iter().any(|g| g.allows(resource, access))
    }

    /// What the token's writes descend from: the invocation it was minted for.
    pub fn lineage(&self) -> crate::lineage::Lineage {
        crate::lineage::Lineage {
            root: self.root.clone().unwrap_or_else(|| self.request_id.clone()),
            request_id: self.request_id.clone(),
            hops: self.hops,
        }
    }
}

pub struct TokenIssuer {
    sealer: Sealer,
}

impl TokenIssuer {
    pub fn new(admin_token: &str) -> Self {
        Self {
            sealer: Sealer::new(admin_token, b"cirrus function tokens v1", PREFIX),
        }
    }

    pub fn issue(&self, claims: &Claims) -> String {
        self.sealer.seal(claims)
    }

    /// Whether `token` looks like a function token at all (rather than the admin token).
    pub fn is_function_token(token: &str) -> bool {
        token.starts_with(PREFIX)
    }

    /// The claims of a genuine, unexpired token.
    pub fn verify(&self, token: &str, now_ms: u64) -> Option<Claims> {
        let claims: Claims = self.sealer.open(token)?;
        (now_ms < claims.expires_ms).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_resist_tampering() {
        let issuer = TokenIssuer::new("admin");
        let claims = Claims {
            function: "thumb".into(),
            incarnation: 7,
            request_id: "r1".into(),
            hops: 2,
            root: Some("r0".into()),
            grants: vec!["bucket:uploads:read".parse().unwrap()],
            expires_ms: 1000,
        };
        let token = issuer.issue(&claims);
        assert_eq!(issuer.verify(&token, 999), Some(claims.clone()));
        assert_eq!(issuer.verify(&token, 1000), None);
        assert_eq!(TokenIssuer::new("other").verify(&token, 0), None);
        let forged = Claims {
            grants: vec!["bucket:uploads:write".parse().unwrap()],
            ..claims
        };
        let forged_body = issuer.issue(&forged);
        let (_, mac) = token.rsplit_once('.').unwrap();
        let (body, _) = forged_body.rsplit_once('.').unwrap();
        assert_eq!(issuer.verify(&format!("{body}.{mac}"), 0), None);
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_prefix() {
        let a = Sealer::new("admin", b"purpose a", "x1.");
        let b = Sealer::new("admin", b"purpose b", "x1.");
        let sealed = a.seal(&vec![1, 2, 3]);
        assert_eq!(a.open::<Vec<i32>>(&sealed), Some(vec![1, 2, 3]));
        assert_eq!(b.open::<Vec<i32>>(&sealed), None);
        assert_eq!(a.open::<Vec<i32>>(&sealed.replacen("x1.", "y1.", 1)), None);
        assert_eq!(a.open::<Vec<i32>>("x1.garbage"), None);
    }
}
