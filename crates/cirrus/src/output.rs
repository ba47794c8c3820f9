//! Human tables and `--json` output.

use serde::Serialize;

pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Left-aligned columns sized to their widest cell.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// One CSV field, quoted when it holds a comma, quote or line break.
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// A body (a function's answer, a value, an object) on stdout as it is; at a terminal, a
/// newline after it if it has none, so the prompt starts on a line of its own.
pub fn body(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    let mut stdout = std::io::stdout();
    stdout.write_all(bytes)?;
    if stdout.is_terminal() && !bytes.is_empty() && !bytes.ends_with(b"\n") {
        stdout.write_all(b"\n")?;
    }
    Ok(())
}
