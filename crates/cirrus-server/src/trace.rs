//! W3C Trace Context (`traceparent`): continue a caller's trace or start one, and hand
//! the guest a `traceparent` naming this invocation as the parent of what it calls.

use rand::RngCore as _;

/// The trace position of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, shared by every span of the trace.
    pub trace_id: String,
    /// The caller's span, when the request carried a valid `traceparent`.
    pub parent_id: Option<String>,
    /// This invocation's own span: 16 lowercase hex digits.
    pub span_id: String,
    /// Trace flags (`01` = sampled).
    pub flags: String,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A new trace id: the time in milliseconds (6 bytes, big-endian), then 10 random
/// bytes, as AWS X-Ray's trace ids start with the time. Ids that follow the clock make
/// the invocation records' index by trace append at its end instead of writing a page
/// anywhere in it for every record: wholly random ids cost about a fifth of the
/// server's throughput in `scripts/bench-vs-wasmtime`. The 10 random bytes keep what
/// Trace Context Level 2 asks of a random trace id (its rightmost 7 bytes random).
fn new_trace_id() -> String {
    let mut id = [0u8; 16];
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    rand::rng().fill_bytes(&mut id[6..]);
    hex::encode(id)
}

/// The trace id, parent id and flags of a valid `traceparent`. All-zero ids are
/// invalid (the specification reserves them), so such a header counts as absent.
fn parse(value: &str) -> Option<(&str, &str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let valid = is_hex(version, 2)
        && version != "ff"
        && is_hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && is_hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && is_hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    valid.then_some((trace, parent, flags))
}

/// The header if it is a valid `traceparent`, for events stored to run later: an
/// invalid one is dropped at the door rather than carried along.
pub fn valid_traceparent(header: Option<&str>) -> Option<String> {
    header
        .filter(|value| parse(value).is_some())
        .map(|value| value.trim().to_owned())
}

/// The trace an event without one belongs to, the same for every attempt: its trace id
/// from the event's id (a UUID: 32 hex digits), its parent span from a hash of it.
pub fn event_traceparent(event_id: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(event_id.as_bytes());
    let compact: String = event_id.chars().filter(char::is_ascii_hexdigit).collect();
    let trace_id = if compact.len() == 32 && compact.chars().any(|c| c != '0') {
        compact.to_ascii_lowercase()
    } else {
        hex::encode(&digest[..16])
    };
    format!("00-{trace_id}-{}-01", hex::encode(&digest[16..24]))
}

impl TraceContext {
    /// Continues the trace of a valid `traceparent` header, or starts a new one.
    /// Invalid headers are ignored, as the specification asks.
    pub fn from_header(traceparent: Option<&str>) -> Self {
        let parsed = traceparent
            .and_then(parse)
            .map(|(trace, parent, flags)| (trace.to_owned(), parent.to_owned(), flags.to_owned()));
        let span_id = random_hex(8);
        match parsed {
            Some((trace_id, parent_id, flags)) => Self {
                trace_id,
                parent_id: Some(parent_id),
                span_id,
                flags,
            },
            None => Self {
                trace_id: new_trace_id(),
                parent_id: None,
                span_id,
                flags: "01".into(),
            },
        }
    }

    /// The header the guest receives: this invocation is the parent of its calls.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace() {
        let t = TraceContext::from_header(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(t.span_id.len(), 16);
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert_eq!(
            t.traceparent(),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", t.span_id)
        );
    }

    #[test]
    fn starts_a_new_trace_for_missing_or_invalid_headers() {
        for bad in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            Some("00-00000000000000000000000000000000-0000000000000000-00"),
        ] {
            let t = TraceContext::from_header(bad);
            assert!(t.parent_id.is_none(), "{bad:?}");
            assert!(is_hex(&t.trace_id, 32), "{bad:?}");
            assert_eq!(t.flags, "01");
            assert_ne!(t.trace_id, "0".repeat(32));
            assert_eq!(valid_traceparent(bad), None, "{bad:?}");
        }
        assert_eq!(
            valid_traceparent(Some(
                " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 "
            )),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into())
        );
    }

    #[test]
    fn new_trace_ids_follow_the_clock_and_end_random() {
        let first = TraceContext::from_header(None).trace_id;
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = TraceContext::from_header(None).trace_id;
        assert!(is_hex(&first, 32) && is_hex(&second, 32));
        assert!(first[..12] < second[..12], "{first} then {second}");
        let ms = u64::from_str_radix(&second[..12], 16).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            now.abs_diff(ms) < 60_000,
            "{second} is not stamped with now"
        );
        assert_ne!(first[12..], second[12..]);
    }

    #[test]
    fn an_event_without_a_trace_has_one_of_its_own_for_every_attempt() {
        let id = "01a24d95-60ca-7609-8070-8d4d733662aa";
        let first = event_traceparent(id);
        assert_eq!(first, event_traceparent(id));
        assert_eq!(valid_traceparent(Some(&first)), Some(first.clone()));
        let t = TraceContext::from_header(Some(&first));
        assert_eq!(t.trace_id, "01a24d9560ca760980708d4d733662aa");
        // Not a UUID: hashed instead.
        let other = event_traceparent("custom-id");
        assert!(valid_traceparent(Some(&other)).is_some(), "{other}");
        assert_ne!(other, first);
    }
}
