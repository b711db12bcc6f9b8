//! How results reach stdout: aligned tables (and key/value listings) for people,
//! `-o json` and `-o yaml` for scripts, one object per line (or YAML document) for streams.
use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

/// The `-o/--output` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON (camelCase field names); streams print one object per line.
    Json,
    /// YAML; streams print one document per event, each after `---`.
    Yaml,
}

/// What `-o/--output` says: a [`Format`] for the commands that ask the agent (the global
/// flag), the file to write for `inject` (whose own `-o FILE` takes the global flag's place
/// under it). One type for both, because clap hands a global flag's value to the
/// subcommand's argument of the same name and back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputArg {
    Format(Format),
    File(std::path::PathBuf),
}

impl OutputArg {
    /// The format of the agent's commands (only `inject` takes a file, and it does not
    /// print through [`Format`]).
    pub fn format(&self) -> Format {
        match self {
            OutputArg::Format(format) => *format,
            OutputArg::File(_) => Format::Table,
        }
    }

    /// The global flag: `table`, `json` or `yaml`.
    pub(crate) fn format_parser() -> impl clap::builder::TypedValueParser<Value = OutputArg> {
        use clap::builder::TypedValueParser;
        clap::builder::EnumValueParser::<Format>::new().map(OutputArg::Format)
    }

    /// `inject -o FILE`.
    pub(crate) fn file_parser() -> impl clap::builder::TypedValueParser<Value = OutputArg> {
        use clap::builder::TypedValueParser;
        clap::builder::PathBufValueParser::new().map(OutputArg::File)
    }
}

/// Columns aligned with spaces, two between columns, under a header the caller writes in
/// upper case (`NAME`, `SENT/s`); an empty cell shows as `-`. Without a header it serves key/value listings (`Key:  value`).
#[derive(Debug, Default)]
pub struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: AsRef<str>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: Some(header.into_iter().map(|h| h.as_ref().to_string()).collect()),
            rows: Vec::new(),
        }
    }

    /// A listing of `Key:  value` lines, the values aligned.
    pub(crate) fn key_values() -> Self {
        Table::default()
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// One `Key:  value` line of a [`Table::key_values`] listing.
    pub fn pair(&mut self, key: &str, value: impl Into<String>) {
        self.row([format!("{key}:"), value.into()]);
    }

    pub(crate) fn render(&self) -> String {
        let lines: Vec<&Vec<String>> = self.header.iter().chain(&self.rows).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let cell = |line: &Vec<String>, column: usize| -> String {
            match line.get(column).map(|c| c.replace(['\n', '\r', '\t'], " ")) {
                Some(text) if !text.trim().is_empty() => text,
                _ => "-".to_string(),
            }
        };
        let mut widths = vec![0; columns];
        for line in &lines {
            for (column, width) in widths.iter_mut().enumerate() {
                *width = (*width).max(cell(line, column).chars().count());
            }
        }
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (column, width) in widths.iter().enumerate() {
                let value = cell(line, column);
                text.push_str(&value);
                if column + 1 < columns {
                    let pad = width - value.chars().count() + 2;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Writes `text` (adding a final newline if it lacks one) and flushes, so that a reader
/// at the other end of a pipe sees each frame or event at once.
pub fn write(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// `view` as pretty JSON, as YAML, or as the text `table` makes of it.
pub(crate) fn render<T: Serialize>(
    format: Format,
    view: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<String> {
    Ok(match format {
        Format::Table => table(view),
        Format::Json => {
            let mut text = serde_json::to_string_pretty(view).context("encoding JSON")?;
            text.push('\n');
            text
        }
        Format::Yaml => serde_yaml_ng::to_string(view).context("encoding YAML")?,
    })
}

/// One item of a stream: a line of compact JSON, a `---` YAML document, or the text
/// `line` makes of it.
pub(crate) fn render_item<T: Serialize>(
    format: Format,
    view: &T,
    line: impl FnOnce(&T) -> String,
) -> Result<String> {
    Ok(match format {
        Format::Table => line(view),
        Format::Json => {
            let mut text = serde_json::to_string(view).context("encoding JSON")?;
            text.push('\n');
            text
        }
        Format::Yaml => format!(
            "---\n{}",
            serde_yaml_ng::to_string(view).context("encoding YAML")?
        ),
    })
}

/// `yes` / `no`.
pub(crate) fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_with_two_spaces() {
        let mut table = Table::new(["NAMESPACE", "NAME", "CONNS"]);
        table.row(["default", "client-7f9c", "3"]);
        table.row(["kube-system", "", "12"]);
        table.row(["x".to_string(), "ünïcode".to_string(), String::new()]);
        assert_eq!(
            table.render(),
            "NAMESPACE    NAME         CONNS\n\
             default      client-7f9c  3\n\
             kube-system  -            12\n\
             x            ünïcode      -\n"
        );
    }

    #[test]
    fn table_fills_short_rows_and_flattens_newlines() {
        let mut table = Table::new(["A", "B"]);
        table.row(["1"]);
        table.row(["two\nlines", "ok"]);
        assert_eq!(
            table.render(),
            "A          B\n1          -\ntwo lines  ok\n"
        );
    }

    #[test]
    fn table_without_rows_is_its_header() {
        assert_eq!(Table::new(["ID", "POD"]).render(), "ID  POD\n");
    }

    #[test]
    fn key_values_align_values() {
        let mut listing = Table::key_values();
        listing.pair("Name", "client");
        listing.pair("Service account", "default");
        listing.pair("Error", "");
        assert_eq!(
            listing.render(),
            "Name:             client\n\
             Service account:  default\n\
             Error:            -\n"
        );
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Sample {
        pod_name: String,
        bytes_sent: u64,
    }

    #[test]
    fn formats_render_json_yaml_and_stream_items() {
        let sample = Sample {
            pod_name: "default/a".into(),
            bytes_sent: 5,
        };
        let json = render(Format::Json, &sample, |_| unreachable!()).unwrap();
        assert_eq!(
            json,
            "{\n  \"podName\": \"default/a\",\n  \"bytesSent\": 5\n}\n"
        );
        let yaml = render(Format::Yaml, &sample, |_| unreachable!()).unwrap();
        assert_eq!(yaml, "podName: default/a\nbytesSent: 5\n");
        let table = render(Format::Table, &sample, |s| s.pod_name.clone()).unwrap();
        assert_eq!(table, "default/a");
        let line = render_item(Format::Json, &sample, |_| unreachable!()).unwrap();
        assert_eq!(line, "{\"podName\":\"default/a\",\"bytesSent\":5}\n");
        let doc = render_item(Format::Yaml, &sample, |_| unreachable!()).unwrap();
        assert_eq!(doc, "---\npodName: default/a\nbytesSent: 5\n");
    }
}
