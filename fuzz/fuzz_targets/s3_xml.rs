//! S3's XML: DeleteObjects documents (any bytes: parsed or `MalformedXML`, never a panic
//! or another error), and listings naming untrusted keys (any key and prefix come back
//! unchanged from the document a client parses).
#![no_main]

use cirrus_server::fuzzing::{delete_objects, listing_document};
use libfuzzer_sys::fuzz_target;
use quick_xml::events::Event;

/// The text of every `<name>` element of a document, unescaped.
fn texts(document: &str, name: &[u8]) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_str(document);
    let mut found = Vec::new();
    let mut inside = false;
    loop {
        match reader
            .read_event()
            .expect("the server's XML is well formed")
        {
            Event::Start(e) if e.name().as_ref() == name => {
                inside = true;
                found.push(String::new());
            }
            Event::Empty(e) if e.name().as_ref() == name => found.push(String::new()),
            Event::End(e) if e.name().as_ref() == name => inside = false,
            Event::Text(t) if inside => {
                let text = t.decode().expect("text is UTF-8");
                let text = quick_xml::escape::unescape(&text).expect("entities are valid");
                if let Some(last) = found.last_mut() {
                    last.push_str(&text);
                }
            }
            Event::GeneralRef(r) if inside => {
                let name = r.decode().expect("entity names are UTF-8");
                let resolved = quick_xml::escape::unescape(&format!("&{name};"))
                    .expect("entities are valid")
                    .into_owned();
                if let Some(last) = found.last_mut() {
                    last.push_str(&resolved);
                }
            }
            Event::Eof => return found,
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match delete_objects(data) {
        Ok((keys, _quiet)) => {
            for key in keys {
                assert!(key.len() <= data.len(), "a key longer than its document");
            }
        }
        Err(e) => assert_eq!(e.code, "MalformedXML", "{e:?}"),
    }

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (key, prefix) = text.split_once('\n').unwrap_or((text, ""));
    let document = listing_document(key, prefix).expect("a listing always renders");
    assert_eq!(texts(&document, b"Key"), [key]);
    assert_eq!(texts(&document, b"Prefix"), [prefix, prefix]);
});
