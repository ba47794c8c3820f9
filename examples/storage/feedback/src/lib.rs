//! feedback: a form on an HTTP route. `GET` serves the form; `POST` (an HTML form,
//! `application/x-www-form-urlencoded`) is validated and stored as a row of the
//! `feedback` KV table keyed by the request id: 201 with the id, or 400 with the reasons
//! and nothing stored. Grant: kv:feedback:write.

use platform::{decode, respond, Api};
use serde_json::{json, Map, Value};
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

struct Feedback;

wasip2::http::proxy::export!(Feedback);

const FORM: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Feedback</title></head>
<body>
<h1>Tell us what you think</h1>
<form method="post">
  <label>Name <input name="name" required maxlength="100"></label><br>
  <label>Email <input name="email" type="email" required></label><br>
  <label>Message <textarea name="message" required maxlength="2000"></textarea></label><br>
  <label>Rating (1-5) <input name="rating" type="number" min="1" max="5"></label><br>
  <button type="submit">Send</button>
</form>
</body></html>
"#;

fn fields(body: &[u8]) -> Map<String, Value> {
    let text = String::from_utf8_lossy(body);
    let mut map = Map::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(decode(k, true), Value::String(decode(v, true).trim().to_owned()));
    }
    map
}

/// The reasons the submission is invalid, by field (empty when it is valid).
fn validate(form: &Map<String, Value>) -> Map<String, Value> {
    let get = |name: &str| form.get(name).and_then(Value::as_str).unwrap_or("");
    let mut errors = Map::new();
    let mut fail = |field: &str, why: &str| {
        errors.insert(field.into(), Value::String(why.into()));
    };
    let name = get("name");
    if name.is_empty() || name.chars().count() > 100 {
        fail("name", "required, at most 100 characters");
    }
    let email = get("email");
    let valid_email = email.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
    }) && !email.contains(char::is_whitespace);
    if !valid_email {
        fail("email", "must be an address like name@example.com");
    }
    let message = get("message");
    if message.is_empty() || message.chars().count() > 2000 {
        fail("message", "required, at most 2000 characters");
    }
    let rating = get("rating");
    if !rating.is_empty() && !matches!(rating.parse::<u8>(), Ok(1..=5)) {
        fail("rating", "a whole number from 1 to 5");
    }
    errors
}

impl wasip2::exports::http::incoming_handler::Guest for Feedback {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match request.method() {
            Method::Get => return respond(out, 200, "text/html; charset=utf-8", FORM.as_bytes()),
            Method::Post => {}
            _ => return respond(out, 405, "text/plain", b"GET shows the form; POST sends it\n"),
        }
        let content_type = platform::header(&request, "content-type").unwrap_or_default();
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            let answer = json!({ "errors": { "form": "send an HTML form (application/x-www-form-urlencoded)" } });
            return respond(out, 400, "application/json", answer.to_string().as_bytes());
        }
        let form = fields(&platform::request_body(&request, 64 << 10));
        let errors = validate(&form);
        if !errors.is_empty() {
            let answer = json!({ "errors": errors });
            return respond(out, 400, "application/json", answer.to_string().as_bytes());
        }
        // The request id comes with each request (a warm environment serves many).
        let id = platform::header(&request, "cirrus-request-id").unwrap_or_default();
        let mut row = Map::new();
        for field in ["name", "email", "message", "rating"] {
            if let Some(v) = form.get(field).filter(|v| v.as_str() != Some("")) {
                row.insert(field.into(), v.clone());
            }
        }
        let stored = Api::from_env().and_then(|api| {
            api.put_json("feedback", &id, Value::Object(row).to_string().as_bytes())
        });
        match stored {
            Ok(reply) if reply.status == 200 => {
                let answer = json!({ "id": id });
                respond(out, 201, "application/json", answer.to_string().as_bytes())
            }
            Ok(reply) => {
                eprintln!("storing feedback failed: HTTP {} {}", reply.status, String::from_utf8_lossy(&reply.body));
                respond(out, 502, "text/plain", b"could not store the feedback\n")
            }
            Err(e) => {
                eprintln!("storing feedback failed: {e}");
                respond(out, 502, "text/plain", b"could not store the feedback\n")
            }
        }
    }
}
