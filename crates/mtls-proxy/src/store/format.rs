//! Rendering rows for people and for programs: an aligned table and JSON
//! lines. Used by `mtls-proxy logs` and by the admin API, which both want
//! the same shapes.
//!
//! The JSON shape of one row (and of [`RecordRow`]'s `Serialize`):
//!
//! ```text
//! {"id":1,"time":"2024-05-01T12:00:00.123456Z","ts_us":1714564800123456,
//!  "duration_us":1234,"kind":"request","route":"api","upstream":"10.0.0.2:80",
//!  "method":"GET","path":"/v1","query":null,"status":200,"bytes_in":0,
//!  "bytes_out":12,"client_identity":"spiffe://corp/web","peer":"10.0.0.9:5555",
//!  "tls_version":"TLSv1.3","sni":"api.example.com","error":null,
//!  "request_headers":[["accept","*/*"]],"response_headers":[],
//!  "truncated":false,"response_body":"hello world"}
//! ```
//!
//! A captured body appears as `request_body` / `response_body` when it is
//! valid UTF-8, and as `request_body_hex` / `response_body_hex` otherwise;
//! a body that was not captured has neither key.

use std::fmt::Write as _;
use std::io;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use super::{Kind, RecordRow};

/// How `logs` prints rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// One JSON object per line.
    Json,
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(OutputFormat::Table),
            "json" | "jsonl" => Ok(OutputFormat::Json),
            other => Err(format!(
                "unknown output format {other:?}: expected `table` or `json`"
            )),
        }
    }
}

/// Writes `rows` in `format`.
pub fn write_rows<W: io::Write>(
    out: W,
    rows: &[RecordRow],
    format: OutputFormat,
) -> io::Result<()> {
    match format {
        OutputFormat::Table => write_table(out, rows),
        OutputFormat::Json => write_json_lines(out, rows),
    }
}

/// Writes one JSON object per row, each followed by a newline.
pub fn write_json_lines<W: io::Write>(mut out: W, rows: &[RecordRow]) -> io::Result<()> {
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

const HEADERS: [&str; 9] = [
    "TIME", "STATUS", "METHOD", "ROUTE", "IDENTITY", "PATH", "MS", "BYTES", "ERROR",
];

/// The widest a column may grow, in characters; longer values are cut with
/// an ellipsis so one long path does not push every other row apart. The
/// last column (the error) is never cut.
const MAX_WIDTH: [usize; 9] = [24, 6, 7, 24, 40, 60, 10, 21, usize::MAX];

/// Writes an aligned table with a header line: time (RFC3339, millis),
/// status, method, route, identity, path, duration in ms, bytes in/out and
/// error. Missing values print as `-`; a failed handshake shows `TLS` as its
/// method and the server name it asked for as its path.
pub fn write_table<W: io::Write>(mut out: W, rows: &[RecordRow]) -> io::Result<()> {
    let cells: Vec<[String; 9]> = rows.iter().map(table_cells).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for (width, max) in widths.iter_mut().zip(MAX_WIDTH) {
        *width = (*width).min(max);
    }
    write_line(&mut out, &HEADERS.map(str::to_owned), &widths)?;
    for row in &cells {
        write_line(&mut out, row, &widths)?;
    }
    out.flush()
}

fn write_line<W: io::Write>(
    out: &mut W,
    cells: &[String; 9],
    widths: &[usize; 9],
) -> io::Result<()> {
    let mut line = String::new();
    for (i, (cell, &width)) in cells.iter().zip(widths).enumerate() {
        let cell = fit(cell, width);
        let last = i == cells.len() - 1;
        // Numbers read better right-aligned.
        let right = matches!(i, 1 | 6 | 7);
        let pad = width.saturating_sub(cell.chars().count());
        if right {
            line.extend(std::iter::repeat_n(' ', pad));
            line.push_str(&cell);
        } else {
            line.push_str(&cell);
            if !last {
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        if !last {
            line.push_str("  ");
        }
    }
    writeln!(out, "{}", line.trim_end())
}

/// Cuts `cell` to `width` characters, marking the cut with an ellipsis.
fn fit(cell: &str, width: usize) -> String {
    if cell.chars().count() <= width {
        return cell.to_owned();
    }
    let mut cut: String = cell.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn table_cells(row: &RecordRow) -> [String; 9] {
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    // A failed handshake has no method or path; say what it was and which
    // server name the client asked for instead.
    let (method, path) = match row.kind {
        Kind::Request => (text(&row.method), text(&row.path)),
        Kind::Handshake => ("TLS".to_owned(), text(&row.sni)),
    };
    [
        humantime::format_rfc3339_millis(row.time()).to_string(),
        row.status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        method,
        text(&row.route),
        text(&row.client_identity),
        path,
        format!("{:.1}", row.duration_us as f64 / 1000.0),
        format!("{}/{}", row.bytes_in, row.bytes_out),
        text(&row.error),
    ]
}

/// The JSON wire shape of a row, kept apart from [`RecordRow`] so the
/// domain type can change without breaking scripts that read `logs` output.
#[derive(Serialize)]
struct WireRow<'a> {
    id: i64,
    time: String,
    ts_us: i64,
    duration_us: i64,
    kind: Kind,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    method: Option<&'a str>,
    path: Option<&'a str>,
    query: Option<&'a str>,
    status: Option<u16>,
    bytes_in: u64,
    bytes_out: u64,
    client_identity: Option<&'a str>,
    peer: Option<&'a str>,
    tls_version: Option<&'a str>,
    sni: Option<&'a str>,
    error: Option<&'a str>,
    request_headers: &'a [(String, String)],
    response_headers: &'a [(String, String)],
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_body_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_body_hex: Option<String>,
}

/// A body as text when it is UTF-8, else as lowercase hex.
fn body_fields(body: Option<&[u8]>) -> (Option<&str>, Option<String>) {
    match body {
        None => (None, None),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text), None),
            Err(_) => (None, Some(hex(bytes))),
        },
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

impl Serialize for RecordRow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (request_body, request_body_hex) = body_fields(self.request_body.as_deref());
        let (response_body, response_body_hex) = body_fields(self.response_body.as_deref());
        WireRow {
            id: self.id,
            time: humantime::format_rfc3339_micros(self.time()).to_string(),
            ts_us: self.ts_us,
            duration_us: self.duration_us,
            kind: self.kind,
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            query: self.query.as_deref(),
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            client_identity: self.client_identity.as_deref(),
            peer: self.peer.as_deref(),
            tls_version: self.tls_version.as_deref(),
            sni: self.sni.as_deref(),
            error: self.error.as_deref(),
            request_headers: &self.request_headers,
            response_headers: &self.response_headers,
            truncated: self.truncated,
            request_body,
            request_body_hex,
            response_body,
            response_body_hex,
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn row() -> RecordRow {
        RecordRow {
            id: 7,
            ts_us: 1_714_564_800_123_456,
            duration_us: 12_345,
            kind: Kind::Request,
            route: Some("api".into()),
            upstream: Some("10.0.0.2:80".into()),
            method: Some("GET".into()),
            path: Some("/v1/items".into()),
            query: None,
            status: Some(200),
            bytes_in: 0,
            bytes_out: 12,
            client_identity: Some("spiffe://corp/web".into()),
            peer: Some("10.0.0.9:5555".into()),
            tls_version: Some("TLSv1.3".into()),
            sni: Some("api.example.com".into()),
            error: None,
            request_headers: vec![("accept".into(), "*/*".into())],
            response_headers: vec![],
            request_body: Some(Bytes::from_static(&[0xff, 0x00, 0x10])),
            response_body: Some(Bytes::from_static(b"hello world")),
            truncated: false,
        }
    }

    fn handshake() -> RecordRow {
        RecordRow {
            id: 8,
            ts_us: 1_714_564_801_000_000,
            duration_us: 900,
            kind: Kind::Handshake,
            route: None,
            upstream: None,
            method: None,
            path: None,
            query: None,
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            client_identity: None,
            peer: Some("10.0.0.10:6000".into()),
            tls_version: None,
            sni: Some("api.example.com".into()),
            error: Some("tls:unknown_issuer".into()),
            request_headers: vec![],
            response_headers: vec![],
            request_body: None,
            response_body: None,
            truncated: false,
        }
    }

    #[test]
    fn json_lines_have_one_object_per_row_with_text_or_hex_bodies() {
        let mut out = Vec::new();
        write_json_lines(&mut out, &[row(), handshake()]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);

        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["id"], 7);
        assert_eq!(first["time"], "2024-05-01T12:00:00.123456Z");
        assert_eq!(first["kind"], "request");
        assert_eq!(first["status"], 200);
        assert_eq!(
            first["request_headers"],
            serde_json::json!([["accept", "*/*"]])
        );
        assert_eq!(first["response_body"], "hello world");
        assert_eq!(first["request_body_hex"], "ff0010");
        assert!(first.get("request_body").is_none());
        assert!(first.get("response_body_hex").is_none());
        assert_eq!(first["query"], serde_json::Value::Null);
        assert_eq!(first["sni"], "api.example.com");

        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["kind"], "handshake");
        assert_eq!(second["error"], "tls:unknown_issuer");
        assert!(second.get("request_body").is_none());
        assert!(second.get("response_body_hex").is_none());
    }

    #[test]
    fn table_is_aligned_with_a_header() {
        let mut long = row();
        long.path = Some(format!("/{}", "x".repeat(100)));
        let mut out = Vec::new();
        write_table(&mut out, &[row(), handshake(), long]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let col = |line: &str, needle: &str| line.find(needle).map(|b| line[..b].chars().count());
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("TIME"), "{text}");
        assert!(lines[1].starts_with("2024-05-01T12:00:00.123Z"), "{text}");
        assert!(lines[1].contains("spiffe://corp/web"));
        assert!(lines[1].contains("12.3"));
        assert!(lines[1].contains("0/12"));
        assert!(lines[2].contains("TLS"));
        assert!(lines[2].ends_with("tls:unknown_issuer"), "{text}");
        assert_eq!(col(lines[0], "PATH"), col(lines[2], "api.example.com"));
        // Long paths are cut, and every column starts at the same offset.
        assert!(lines[3].contains('…'));
        assert_eq!(col(lines[0], "ROUTE"), col(lines[1], "api"));
        assert_eq!(col(lines[0], "PATH"), col(lines[1], "/v1/items"));
        assert_eq!(col(lines[0], "PATH"), col(lines[3], "/xxx"));
    }

    #[test]
    fn empty_table_prints_the_header_only() {
        let mut out = Vec::new();
        write_rows(&mut out, &[], OutputFormat::Table).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap().trim_end(),
            "TIME  STATUS  METHOD  ROUTE  IDENTITY  PATH  MS  BYTES  ERROR"
        );
        assert_eq!("json".parse::<OutputFormat>(), Ok(OutputFormat::Json));
        assert!("yaml".parse::<OutputFormat>().is_err());
    }
}
