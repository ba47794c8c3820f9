//! summary: triggered by changes of the `photos` KV table. For each new photo it answers
//! a one-line summary as JSON; its `on_success = ["kv:photo_summaries"]` destination
//! stores that answer as a row, so this function needs no storage grant at all.

use platform::respond;
use serde_json::{json, Value};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Summary;

wasip2::http::proxy::export!(Summary);

impl wasip2::exports::http::incoming_handler::Guest for Summary {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let body = platform::request_body(&request, 1 << 20);
        let change: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return respond(out, 400, "text/plain", format!("not a KV change: {e}\n").as_bytes()),
        };
        let photo = &change["new"];
        let summary = match change["op"].as_str() {
            Some("insert") | Some("update") => json!({
                "photo": change["key"],
                "op": change["op"],
                "text": format!(
                    "{} is {}x{} ({} bytes); thumbnail {}x{} ({} bytes) in {}/{}",
                    change["key"].as_str().unwrap_or_default(),
                    photo["width"], photo["height"], photo["size"],
                    photo["thumbnail"]["width"], photo["thumbnail"]["height"], photo["thumbnail"]["size"],
                    photo["thumbnail"]["bucket"].as_str().unwrap_or_default(),
                    photo["thumbnail"]["key"].as_str().unwrap_or_default(),
                ),
                "pixels": photo["width"].as_u64().unwrap_or(0) * photo["height"].as_u64().unwrap_or(0),
                "sha256": photo["sha256"],
            }),
            _ => json!({ "photo": change["key"], "op": change["op"], "text": "removed" }),
        };
        println!("{}", summary["text"].as_str().unwrap_or_default());
        respond(out, 200, "application/json", summary.to_string().as_bytes());
    }
}
