//! Durations on the wire are human strings (`"30s"`, `"1m 30s"`, `"250ms"`);
//! a bare number is read as seconds so JSON clients can send `30`.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// Parses `"2s"`, `"500ms"`, `"5m"` or a bare number of seconds (`"30"`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?} ({e}); use forms like \"30s\", \"500ms\", \"5m\"")
    })
}

/// Formats a duration the way [`parse`] reads it back.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_and_bare_forms() {
        assert_eq!(parse("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("30").unwrap(), Duration::from_secs(30));
        assert!(parse("soon").unwrap_err().contains("invalid duration"));
    }

    #[test]
    fn format_round_trips() {
        for d in [Duration::from_millis(1500), Duration::from_secs(900)] {
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
