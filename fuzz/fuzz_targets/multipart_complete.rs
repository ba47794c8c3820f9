//! CompleteMultipartUpload documents. Any bytes: the parts, or `MalformedXML` (never a
//! panic or another error). What parses, written out again as a client would, parses
//! to the same parts.
#![no_main]

use cirrus_server::fuzzing::complete_multipart;
use libfuzzer_sys::fuzz_target;

fn document(parts: &[(u32, String)]) -> String {
    let mut doc = String::from(
        r#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#,
    );
    for (number, etag) in parts {
        doc.push_str(&format!(
            "<Part><ETag>{}</ETag><PartNumber>{number}</PartNumber></Part>",
            // A raw CR (or NEL, U+2028) would be read back as LF (XML's end-of-line
            // rules): write them as character references, as the client's document did.
            quick_xml::escape::escape(etag.as_str())
                .replace('\r', "&#13;")
                .replace('\u{85}', "&#133;")
                .replace('\u{2028}', "&#8232;")
        ));
    }
    doc.push_str("</CompleteMultipartUpload>");
    doc
}

fuzz_target!(|data: &[u8]| {
    match complete_multipart(data) {
        Ok(parts) => {
            let again = complete_multipart(document(&parts).as_bytes())
                .expect("a document written from parsed parts parses");
            assert_eq!(again, parts);
        }
        Err(e) => assert_eq!(e.code, "MalformedXML", "{e:?}"),
    }
});
