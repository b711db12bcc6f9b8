//! Writes a YAML value in block style for readers of YAML 1.1, as Kubernetes' own
//! (`kubectl`, the API server) are.
//!
//! serde_yaml_ng reads YAML 1.2, where `yes`, `on`, `0644` are strings, and writes them
//! without quotes — which `kubectl` then reads as the boolean true and the number 420.
//! This writer leaves a string unquoted only when every YAML reader, 1.1 or 1.2, reads it
//! back as that string; any other string is double-quoted. Multi-line strings are
//! literal blocks (`|`) when that is exact, double-quoted otherwise. Mapping order is
//! kept; sequences are indented under their key (`containers:` then `  - name: …`).
use std::fmt::Write as _;

use anyhow::{Result, bail};
use serde_yaml_ng::Value;

/// `value` as a YAML document (without `---`), ending in a newline.
pub fn document(value: &Value) -> Result<String> {
    let mut out = String::new();
    match value {
        Value::Mapping(map) if !map.is_empty() => mapping(&mut out, map, 0, false)?,
        Value::Sequence(seq) if !seq.is_empty() => sequence(&mut out, seq, 0, false)?,
        other => {
            // A scalar (or an empty collection) alone: the same as after `key:`, less
            // the space.
            value_after_indicator(&mut out, other, 0)?;
            out.remove(0);
        }
    }
    Ok(out)
}

/// The entries of `map`, each on its own line at `indent`; the first without indentation
/// when the line has begun already (`- ` of a sequence item).
fn mapping(
    out: &mut String,
    map: &serde_yaml_ng::Mapping,
    indent: usize,
    line_begun: bool,
) -> Result<()> {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !line_begun {
            pad(out, indent);
        }
        out.push_str(&key_text(key)?);
        out.push(':');
        value_after_indicator(out, value, indent)?;
    }
    Ok(())
}

/// The items of `seq`, each `- ` at `indent`; the first without indentation when the
/// line has begun already (an item of a sequence in a sequence).
fn sequence(out: &mut String, seq: &[Value], indent: usize, line_begun: bool) -> Result<()> {
    for (i, item) in seq.iter().enumerate() {
        if i > 0 || !line_begun {
            pad(out, indent);
        }
        out.push('-');
        match item {
            // `- name: x` then the other entries under `name`.
            Value::Mapping(map) if !map.is_empty() => {
                out.push(' ');
                mapping(out, map, indent + 2, true)?;
            }
            Value::Sequence(inner) if !inner.is_empty() => {
                out.push(' ');
                sequence(out, inner, indent + 2, true)?;
            }
            other => value_after_indicator(out, other, indent)?,
        }
    }
    Ok(())
}

/// A value after `key:` or `-` (written at `indent`): a scalar on the same line,
/// a collection on the lines below, indented by two more.
fn value_after_indicator(out: &mut String, value: &Value, indent: usize) -> Result<()> {
    match value {
        Value::Mapping(map) if map.is_empty() => out.push_str(" {}\n"),
        Value::Sequence(seq) if seq.is_empty() => out.push_str(" []\n"),
        Value::Mapping(map) => {
            out.push('\n');
            mapping(out, map, indent + 2, false)?;
        }
        Value::Sequence(seq) => {
            out.push('\n');
            sequence(out, seq, indent + 2, false)?;
        }
        Value::String(text) if literal_block_fits(text) => literal_block(out, text, indent + 2),
        Value::Tagged(tagged) => {
            let _ = write!(out, " {}", tagged.tag);
            value_after_indicator(out, &tagged.value, indent)?;
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar)?);
            out.push('\n');
        }
    }
    Ok(())
}

/// A mapping key: a scalar on one line.
fn key_text(key: &Value) -> Result<String> {
    match key {
        Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => {
            bail!("a mapping key that is not a plain value (a string, number or boolean)")
        }
        scalar => scalar_text(scalar),
    }
}

fn scalar_text(value: &Value) -> Result<String> {
    Ok(match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if plain_is_exact(s) => s.clone(),
        Value::String(s) => double_quoted(s),
        Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => {
            bail!("internal: a collection where a scalar was expected")
        }
    })
}

/// Words YAML 1.1 reads as booleans or null (`y`, `on`, `NO`, `~`…), and YAML 1.2 too.
const RESERVED_WORDS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~",
];

/// Whether `text` written plain (unquoted) reads back as this string in YAML 1.1 and
/// 1.2 alike. Deliberately narrow: names, paths, image references, flags, quantities
/// (`16Mi`), words separated by single spaces; everything else is quoted.
pub(crate) fn plain_is_exact(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if RESERVED_WORDS.contains(&text)
        || first == b' '
        || last == b' '
        || last == b':'
        // Document markers, at the start of a line.
        || text.starts_with("---")
        || text.starts_with("...")
    {
        return false;
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._/:=@+, $()".contains(&b);
    // `: ` would start a mapping value.
    if !bytes.iter().copied().all(allowed) || text.contains(": ") {
        return false;
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let Some(&lead) = unsigned.as_bytes().first() else {
        return false;
    };
    if lead == b'.' {
        // .5, .inf, .nan
        return false;
    }
    if lead.is_ascii_digit() {
        // Numbers, in either version: decimal, 0x/0o/0b, 1_000, 1e3, 1.5, 12:30 (1.1's
        // base 60); timestamps (2026-01-02, 2026-01-02T10:00:00Z). A letter that no
        // number has makes it a string (`16Mi`, `10m`, `30s`, `1h`); otherwise quote.
        return !unsigned.contains([':', ' '])
            && unsigned
                .bytes()
                .any(|b| b.is_ascii_alphabetic() && !b"abcdefoxABCDEFOX".contains(&b));
    }
    match first {
        // `-name`, `--flag`: a dash not followed by a space or digit.
        b'-' => unsigned.as_bytes()[0] == b'-' || unsigned.as_bytes()[0].is_ascii_alphabetic(),
        // `+` starts numbers, `,`, `:` and `@` are indicators, `=` is 1.1's value key.
        b'+' | b',' | b':' | b'@' | b'=' | b'(' | b')' => false,
        _ => true,
    }
}

/// A double-quoted scalar, escaped as YAML (and JSON) escape.
fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters YAML does not allow as they are (controls, DEL) or reads as line breaks
/// or byte-order marks.
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

/// Whether `text` is a multi-line string a literal block gives back exactly: printable,
/// no carriage returns, its first line not indented (it sets the block's indentation) and
/// no line ending in blanks.
fn literal_block_fits(text: &str) -> bool {
    text.contains('\n')
        && !text.starts_with([' ', '\t', '\n'])
        && !text.chars().any(|c| c == '\r' || needs_escape(c))
        && text.split('\n').all(|line| !line.ends_with([' ', '\t']))
}

/// `|`, `|-` or `|+` (by its final line breaks: one, none, more), then the lines of
/// `text` at `indent`.
fn literal_block(out: &mut String, text: &str, indent: usize) {
    let body = text.trim_end_matches('\n');
    let breaks = text.len() - body.len();
    out.push_str(match breaks {
        0 => " |-\n",
        1 => " |\n",
        _ => " |+\n",
    });
    for line in body.split('\n') {
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
    // With `|+` the breaks after the last line are kept: as empty lines.
    for _ in 1..breaks {
        out.push('\n');
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}
