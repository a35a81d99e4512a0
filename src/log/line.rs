//! One log line, as text or as a JSON object, with a UTC timestamp. Runs on the writer
//! thread: the reactor thread only hands over the parts.

use std::fmt::Write as _;

pub const LEVEL_NAMES: [&str; 6] = ["", "trace", "debug", "info", "warn", "error"];
/// As text lines show them, padded to one width.
const LEVEL_LABELS: [&str; 6] = ["", "TRACE", "DEBUG", "INFO ", "WARN ", "ERROR"];

/// What the reactor thread hands the writer for one call.
pub struct Record {
    /// Milliseconds since the Unix epoch, taken when the call was made.
    pub time_ms: u64,
    pub level: u8,
    /// The logger's name, then the message: one allocation for both, bytes as Lua gave
    /// them (checked for UTF-8 only where JSON needs it, on the writer thread).
    pub text: Vec<u8>,
    pub name_len: usize,
}

impl Record {
    pub fn name(&self) -> &[u8] {
        &self.text[..self.name_len]
    }
    pub fn message(&self) -> &[u8] {
        &self.text[self.name_len..]
    }
}

/// The timestamp of the last line, kept: lines come in bursts within one millisecond.
#[derive(Default)]
pub struct Clock {
    ms: u64,
    text: String,
}

impl Clock {
    fn stamp(&mut self, time_ms: u64) -> &str {
        if self.text.is_empty() || self.ms != time_ms {
            self.ms = time_ms;
            self.text.clear();
            timestamp(&mut self.text, time_ms);
        }
        &self.text
    }
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The UTC day a time falls on (days since the epoch): rotation by day compares these.
pub fn day_of(time_ms: u64) -> i64 {
    (time_ms / 86_400_000) as i64
}

/// `2026-11-22T00:30:05.123Z`
pub fn timestamp(out: &mut String, time_ms: u64) {
    let secs = time_ms / 1000;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        time_ms % 1000
    );
}

fn json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let mut s = String::with_capacity(text.len() + 2);
    json_escape(&mut s, &text);
    out.extend_from_slice(s.as_bytes());
}

fn json_escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends the record as one line (text or JSON) ending in a newline. A message's own
/// newlines stay in text lines (a traceback reads as one), and are escaped in JSON.
pub fn format(out: &mut Vec<u8>, clock: &mut Clock, r: &Record, json: bool) {
    let level = (r.level as usize).min(5);
    if json {
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(clock.stamp(r.time_ms).as_bytes());
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(LEVEL_NAMES[level].as_bytes());
        out.extend_from_slice(b"\",\"logger\":");
        json_string(out, r.name());
        out.extend_from_slice(b",\"msg\":");
        json_string(out, r.message());
        out.extend_from_slice(b"}\n");
    } else {
        out.extend_from_slice(clock.stamp(r.time_ms).as_bytes());
        out.push(b' ');
        out.extend_from_slice(LEVEL_LABELS[level].as_bytes());
        out.push(b' ');
        if !r.name().is_empty() {
            out.push(b'[');
            out.extend_from_slice(r.name());
            out.extend_from_slice(b"] ");
        }
        out.extend_from_slice(r.message());
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, msg: &str) -> Record {
        Record { time_ms: 1_763_771_405_123, level: 3, text: format!("{name}{msg}").into_bytes(), name_len: name.len() }
    }

    fn line(r: &Record, json: bool) -> String {
        let mut out = Vec::new();
        format(&mut out, &mut Clock::default(), r, json);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn text_and_json_lines() {
 assert_eq!(line(&record("db", "hello"), false), "2025-11-22T00:30:05.123Z INFO  [db] hello\n");
        assert_eq!(line(&record("", "a \"q\"\n\u{1}"), true), "{\"time\":\"2025-11-22T00:30:05.123Z\",\"level\":\"info\",\"logger\":\"\",\"msg\":\"a \\\"q\\\"\\n\\u0001\"}\n");
    }
}
