//! Cross-origin access to a function's URL (`/fn/NAME`), as Lambda's function URLs
//! configure it: which origins, methods and headers a browser may use, what it may read
//! of the answer, for how long it may cache a preflight, and whether credentials go along.

use serde::{Deserialize, Serialize};

/// The longest preflight cache a function may ask for (Lambda's limit).
pub const MAX_AGE_LIMIT: u32 = 86_400;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cors {
    /// `*`, or origins such as `https://app.example.com` (scheme, host, optional port).
    pub allow_origins: Vec<String>,
    /// Methods a cross-origin request may use (`*`: any); empty: GET, HEAD and POST.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers beyond the CORS-safelisted ones (`*`: any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers the page may read beyond the safelisted ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Seconds a browser may cache a preflight's answer (0: not sent).
    #[serde(skip_serializing_if = "is_zero")]
    pub max_age: u32,
    /// Whether cookies and `Authorization` go along (not with `*` origins).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An HTTP token (RFC 9110 §5.6.2): method and header names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `origin` is one a browser sends: `scheme://host[:port]`, nothing more.
pub fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let scheme_ok = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
            if host.contains(':') && !host.starts_with('[') {
                (rest, None)
            } else {
                (host, Some(port))
            }
        }
        _ => (rest, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    scheme_ok && host_ok && port_ok
}

impl Cors {
    pub fn validate(&self) -> Result<(), String> {
        if self.allow_origins.is_empty() {
            return Err("allow_origins: list at least one origin (or \"*\")".to_owned());
        }
        for origin in &self.allow_origins {
            if origin != "*" && !is_origin(origin) {
                return Err(format!(
                    "allow_origins: {origin:?} is not an origin: use \"*\" or scheme://host[:port] (e.g. \"https://app.example.com\"), without a path or trailing slash"
                ));
            }
        }
        for method in &self.allow_methods {
            if method != "*" && !is_token(method) {
                return Err(format!("allow_methods: {method:?} is not an HTTP method"));
            }
        }
        for (field, headers) in [
            ("allow_headers", &self.allow_headers),
            ("expose_headers", &self.expose_headers),
        ] {
            for header in headers {
                if header != "*" && !is_token(header) {
                    return Err(format!("{field}: {header:?} is not a header name"));
                }
            }
        }
        if self.max_age > MAX_AGE_LIMIT {
            return Err(format!("max_age: at most {MAX_AGE_LIMIT} seconds"));
        }
        if self.allow_credentials && self.allow_origins.iter().any(|o| o == "*") {
            return Err(
                "allow_credentials cannot go with the origin \"*\" (browsers refuse it): list the origins"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Whether a request from `origin` may read the answer; `Some("*")` or the origin.
    pub fn allowed_origin<'a>(&'a self, origin: &'a str) -> Option<&'a str> {
        if self.allow_origins.iter().any(|o| o == "*") {
            return Some("*");
        }
        self.allow_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
            .then_some(origin)
    }

    pub fn allows_method(&self, method: &str) -> bool {
        if self.allow_methods.is_empty() {
            return matches!(method, "GET" | "HEAD" | "POST");
        }
        self.allow_methods.iter().any(|m| m == "*" || m == method)
    }

    pub fn allows_header(&self, header: &str) -> bool {
        self.allow_headers
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(header))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        for ok in [
            "https://app.example.com",
            "http://localhost:8080",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
            "app+x://host",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://",
            "https://a b",
            "https://host:99999",
            "https://host:",
            "https://*.example.com",
            "null",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }

    #[test]
    fn validation_and_matching() {
        let cors = Cors {
            allow_origins: vec!["https://app.example.com".into()],
            allow_methods: vec!["PUT".into()],
            allow_headers: vec!["X-Token".into()],
            allow_credentials: true,
            ..Default::default()
        };
        assert!(cors.validate().is_ok());
        assert_eq!(
            cors.allowed_origin("https://APP.example.com"),
            Some("https://APP.example.com")
        );
        assert_eq!(cors.allowed_origin("https://evil.example"), None);
        assert!(cors.allows_method("PUT") && !cors.allows_method("DELETE"));
        assert!(cors.allows_header("x-token") && !cors.allows_header("x-other"));
        let star = Cors {
            allow_origins: vec!["*".into()],
            allow_credentials: true,
            ..Default::default()
        };
        assert!(star.validate().unwrap_err().contains("allow_credentials"));
        assert!(Cors::default().validate().is_err());
        let long = Cors {
            allow_origins: vec!["*".into()],
            max_age: 90_000,
            ..Default::default()
        };
        assert!(long.validate().is_err());
        let default_methods = Cors {
            allow_origins: vec!["*".into()],
            ..Default::default()
        };
        assert!(default_methods.allows_method("POST") && !default_methods.allows_method("PUT"));
    }
}
