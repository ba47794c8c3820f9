//! AWS's event-stream framing (`application/vnd.amazon.eventstream`), as
//! InvokeWithResponseStream answers: each message is a prelude (total and header
//! lengths, CRC-32), string headers, the payload and a CRC-32 of it all.

use bytes::Bytes;

/// One `event` message: `:event-type`, `:content-type` and the payload.
pub fn event(event_type: &str, content_type: &str, payload: &[u8]) -> Bytes {
    let mut headers = Vec::new();
    for (name, value) in [
        (":event-type", event_type),
        (":content-type", content_type),
        (":message-type", "event"),
    ] {
        headers.push(name.len() as u8);
        headers.extend_from_slice(name.as_bytes());
        // Type 7: a string, with a 16-bit length.
        headers.push(7);
        headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        headers.extend_from_slice(value.as_bytes());
    }
    let total = 12 + headers.len() + payload.len() + 4;
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_be_bytes());
    message.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&message);
    message.extend_from_slice(&prelude_crc.to_be_bytes());
    message.extend_from_slice(&headers);
    message.extend_from_slice(payload);
    let crc = crc32fast::hash(&message);
    message.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(message)
}

/// A piece of the function's response.
pub fn payload_chunk(payload: &[u8]) -> Bytes {
    event("PayloadChunk", "application/octet-stream", payload)
}

/// The last message: `{}` when the function succeeded, else its error.
pub fn invoke_complete(error: Option<(&str, &str)>) -> Bytes {
    let body = match error {
        None => serde_json::json!({}),
        Some((code, details)) => serde_json::json!({ "ErrorCode": code, "ErrorDetails": details }),
    };
    event(
        "InvokeComplete",
        "application/json",
        body.to_string().as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_frame_and_check_themselves() {
        let m = payload_chunk(b"hello");
        let total = u32::from_be_bytes(m[0..4].try_into().unwrap()) as usize;
        let headers = u32::from_be_bytes(m[4..8].try_into().unwrap()) as usize;
        assert_eq!(total, m.len());
        assert_eq!(
            u32::from_be_bytes(m[8..12].try_into().unwrap()),
            crc32fast::hash(&m[..8])
        );
        assert_eq!(&m[12 + headers..total - 4], b"hello");
        assert_eq!(
            u32::from_be_bytes(m[total - 4..].try_into().unwrap()),
            crc32fast::hash(&m[..total - 4])
        );
        let text = String::from_utf8_lossy(&m[12..12 + headers]);
        assert!(text.contains(":event-type") && text.contains("PayloadChunk"));
    }
}
