//! thumbnail: an S3-triggered function. For each `ObjectCreated` record it reads the
//! photo (a binary PPM) from the object store, scales it down to fit THUMB_SIZE pixels
//! (64 by default), writes the thumbnail to the THUMB_BUCKET bucket ("thumbnails") under
//! the same key, and records the photo's metadata (size, dimensions, SHA-256) as a row of
//! the `photos` KV table. Grants: bucket:uploads:read, bucket:thumbnails:write,
//! kv:photos:write.

use platform::{decode, respond, Api};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Thumbnail;

wasip2::http::proxy::export!(Thumbnail);

/// A decoded image: RGB, 8 bits a channel.
struct Image {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

/// Binary PPM (`P6`): the header's fields are separated by whitespace, `#` starts a
/// comment, and a single whitespace byte precedes the pixels.
fn decode_ppm(data: &[u8]) -> Result<Image, String> {
    let mut pos = 0;
    let mut field = || -> Result<String, String> {
        loop {
            match data.get(pos) {
                Some(b'#') => {
                    while data.get(pos).is_some_and(|&b| b != b'\n') {
                        pos += 1;
                    }
                }
                Some(b) if b.is_ascii_whitespace() => pos += 1,
                Some(_) => break,
                None => return Err("the PPM header ends early".into()),
            }
        }
        let start = pos;
        while data.get(pos).is_some_and(|b| !b.is_ascii_whitespace()) {
            pos += 1;
        }
        Ok(String::from_utf8_lossy(&data[start..pos]).into_owned())
    };
    if field()? != "P6" {
        return Err("not a binary PPM (P6) image".into());
    }
    let number = |text: String, what: &str| -> Result<usize, String> {
        text.parse().map_err(|_| format!("the PPM {what} {text:?} is not a number"))
    };
    let width = number(field()?, "width")?;
    let height = number(field()?, "height")?;
    let max = number(field()?, "maximum value")?;
    if max == 0 || max > 255 {
        return Err(format!("PPM maximum value {max} is not 1-255"));
    }
    if width == 0 || height == 0 || width > 16384 || height > 16384 {
        return Err(format!("PPM size {width}x{height} is out of range"));
    }
    let start = pos + 1;
    let len = width * height * 3;
    let raw = data
        .get(start..start + len)
        .ok_or_else(|| format!("the PPM needs {len} bytes of pixels"))?;
    // Samples are 0..=max; the thumbnail is written with 255 as its maximum.
    let pixels = if max == 255 {
        raw.to_vec()
    } else {
        raw.iter()
            .map(|&v| ((usize::from(v).min(max) * 255 + max / 2) / max) as u8)
            .collect()
    };
    Ok(Image { width, height, pixels })
}

fn encode_ppm(image: &Image) -> Vec<u8> {
    let mut out = format!("P6\n{} {}\n255\n", image.width, image.height).into_bytes();
    out.extend_from_slice(&image.pixels);
    out
}

/// Box-filter downscale by a whole factor so the larger side fits `size`.
fn thumbnail(image: &Image, size: usize) -> Image {
    let factor = image.width.max(image.height).div_ceil(size).max(1);
    let (w, h) = (image.width.div_ceil(factor), image.height.div_ceil(factor));
    let mut pixels = Vec::with_capacity(w * h * 3);
    for ty in 0..h {
        for tx in 0..w {
            let mut sum = [0u32; 3];
            let mut count = 0;
            for y in ty * factor..((ty + 1) * factor).min(image.height) {
                for x in tx * factor..((tx + 1) * factor).min(image.width) {
                    let i = (y * image.width + x) * 3;
                    for c in 0..3 {
                        sum[c] += u32::from(image.pixels[i + c]);
                    }
                    count += 1;
                }
            }
            for s in sum {
                pixels.push(((s + count / 2) / count) as u8);
            }
        }
    }
    Image { width: w, height: h, pixels }
}

fn process(record: &Value, api: &Api) -> Result<Value, (u16, String)> {
    let bucket = record["s3"]["bucket"]["name"].as_str().unwrap_or_default();
    // S3 notifications encode keys like form values.
    let key = decode(record["s3"]["object"]["key"].as_str().unwrap_or_default(), true);
    let fetched = api.get_object(bucket, &key).map_err(|e| (502, e))?;
    if fetched.status != 200 {
        return Err((502, format!("reading {bucket}/{key}: HTTP {}", fetched.status)));
    }
    let photo = decode_ppm(&fetched.body).map_err(|e| (422, format!("{key}: {e}")))?;
    let size = std::env::var("THUMB_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s: &usize| s > 0)
        .unwrap_or(64);
    let thumb = thumbnail(&photo, size);
    let thumb_bytes = encode_ppm(&thumb);
    let thumb_bucket = std::env::var("THUMB_BUCKET").unwrap_or_else(|_| "thumbnails".into());
    let stored = api
        .put_object(&thumb_bucket, &key, "image/x-portable-pixmap", &thumb_bytes)
        .map_err(|e| (502, e))?;
    if stored.status != 201 {
        return Err((502, format!("writing the thumbnail: HTTP {} {}", stored.status, String::from_utf8_lossy(&stored.body))));
    }
    let row = json!({
        "bucket": bucket,
        "key": key,
        "size": fetched.body.len(),
        "width": photo.width,
        "height": photo.height,
        "sha256": format!("{:x}", Sha256::digest(&fetched.body)),
        "thumbnail": {
            "bucket": thumb_bucket,
            "key": key,
            "width": thumb.width,
            "height": thumb.height,
            "size": thumb_bytes.len(),
        },
    });
    let saved = api
        .put_json("photos", &key, row.to_string().as_bytes())
        .map_err(|e| (502, e))?;
    if saved.status != 200 {
        return Err((502, format!("recording the metadata: HTTP {} {}", saved.status, String::from_utf8_lossy(&saved.body))));
    }
    Ok(row)
}

impl wasip2::exports::http::incoming_handler::Guest for Thumbnail {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let body = platform::request_body(&request, 1 << 20);
        let event: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return respond(out, 400, "text/plain", format!("not an S3 event: {e}\n").as_bytes()),
        };
        let api = match Api::from_env() {
            Ok(api) => api,
            Err(e) => return respond(out, 500, "text/plain", e.as_bytes()),
        };
        let mut done = Vec::new();
        for record in event["Records"].as_array().into_iter().flatten() {
            if !record["eventName"].as_str().unwrap_or_default().starts_with("ObjectCreated") {
                continue;
            }
            match process(record, &api) {
                Ok(row) => done.push(row),
                Err((status, message)) => {
                    eprintln!("{message}");
                    return respond(out, status, "text/plain", format!("{message}\n").as_bytes());
                }
            }
        }
        println!("made {} thumbnail(s)", done.len());
        respond(out, 200, "application/json", Value::Array(done).to_string().as_bytes());
    }
}
