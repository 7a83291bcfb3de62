//! Prometheus text exposition format (0.0.4) and OpenMetrics 1.0 text: a parser and a renderer
//! of our own (the metrics bridge reads dumps produced by processes we do not control, and the
//! existing crates were judged unsafe on hostile input).
//!
//! The parser never panics and never gives up on a whole dump because of one bad line: every line
//! it cannot read is reported (`Exposition::errors`, with its line number) and skipped, the rest
//! is kept. It handles label-value escapes (`\\`, `\"`, `\n`), `+Inf` / `-Inf` / `NaN`,
//! histograms, summaries and OpenMetrics counters (samples are tied to their family by the
//! `_bucket` / `_sum` / `_count` / `_total` / `_created` / `_info` suffixes of a declared
//! `# TYPE`), timestamps (integer milliseconds in the Prometheus format, float seconds in
//! OpenMetrics), ignores exemplars, and requires OpenMetrics' `# EOF` (nothing may follow it).

use std::collections::HashMap;
use std::fmt::Write as _;

/// Which text format a dump is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    /// `untyped` (Prometheus) or `unknown` (OpenMetrics), and samples without a `# TYPE`.
    Unknown,
}

impl MetricType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            "gaugehistogram" => Self::GaugeHistogram,
            "summary" => Self::Summary,
            "info" => Self::Info,
            "stateset" => Self::StateSet,
            "untyped" | "unknown" => Self::Unknown,
            _ => return None,
        })
    }

    /// The type name in the Prometheus text format (which lacks OpenMetrics' extra types).
    pub fn prometheus_name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge | Self::Info | Self::StateSet => "gauge",
            Self::Histogram | Self::GaugeHistogram => "histogram",
            Self::Summary => "summary",
            Self::Unknown => "untyped",
        }
    }

    /// Sample-name suffixes a family of this type may carry.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            Self::Counter => &["_total", "_created"],
            Self::Histogram => &["_bucket", "_sum", "_count", "_created"],
            Self::GaugeHistogram => &["_bucket", "_gsum", "_gcount"],
            Self::Summary => &["_sum", "_count", "_created"],
            Self::Info => &["_info"],
            _ => &[],
        }
    }
}

/// A metric family's metadata (`# TYPE`, `# HELP`, `# UNIT`).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: MetricType,
    pub help: Option<String>,
    pub unit: Option<String>,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The family it belongs to (its name without a type suffix, or its own name).
    pub family: String,
    /// The sample's full name (`http_request_duration_seconds_bucket`).
    pub name: String,
    /// Labels in input order (unescaped values).
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Milliseconds since the epoch, when the line carries a timestamp.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// The series identity: name and labels sorted by name, rendered canonically. Two samples of
    /// one series have the same identity whatever their label order in the input.
    pub fn series_key(&self) -> String {
        let mut labels: Vec<&(String, String)> = self.labels.iter().collect();
        labels.sort();
        let mut out = self.name.clone();
        render_labels(&mut out, labels.into_iter());
        out
    }
}

/// A line that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

/// Everything read from one dump.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub families: Vec<Family>,
    pub samples: Vec<Sample>,
    pub errors: Vec<LineError>,
    /// OpenMetrics: the `# EOF` line was seen (a dump without it is truncated).
    pub eof: bool,
}

/// At most this many labels per sample: a hostile line cannot make one sample arbitrarily wide.
pub const MAX_LABELS: usize = 256;

/// One sample line as read, borrowing from the input: what [`parse_each`] hands its callback.
#[derive(Debug, Clone, Copy)]
pub struct SampleRef<'a, 'l> {
    /// The sample's full name.
    pub name: &'a str,
    /// Index into the families read so far of the declared family it belongs to; `None` when
    /// no `# TYPE`/`# HELP`/`# UNIT` declared one (its family is then its own name).
    pub family: Option<usize>,
    /// Labels in input order: names, and values exactly as written between the quotes (escapes
    /// checked but kept, which is also how the text formats render them).
    pub labels: &'l [(&'a str, &'a str)],
    pub value: f64,
    /// Milliseconds since the epoch, when the line carries a timestamp.
    pub timestamp_ms: Option<i64>,
}

impl SampleRef<'_, '_> {
    /// The owned [`Sample`] (label values unescaped).
    pub fn to_owned_sample(&self, families: &[Family]) -> Sample {
        Sample {
            family: self.family.map(|i| families[i].name.clone()).unwrap_or_else(|| self.name.to_string()),
            name: self.name.to_string(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), unescape(v, true).expect("escapes checked when parsed")))
                .collect(),
            value: self.value,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// Parses a whole dump. Never panics; bad lines are reported in `errors` and skipped.
pub fn parse(input: &[u8], format: Format) -> Exposition {
    let mut samples = Vec::new();
    let mut out = parse_each(input, format, |s, families| samples.push(s.to_owned_sample(families)));
    out.samples = samples;
    out
}

/// Parses a whole dump and hands each sample to `on_sample` as it is read (with the families
/// read so far), without an allocation per sample; the returned exposition holds the families,
/// the errors and whether `# EOF` was seen (its `samples` stays empty). Never panics.
pub fn parse_each<'a>(
    input: &'a [u8],
    format: Format,
    mut on_sample: impl FnMut(&SampleRef<'a, '_>, &[Family]),
) -> Exposition {
    let mut out = Exposition::default();
    let mut family_index: HashMap<String, usize> = HashMap::new();
    let mut labels: Vec<(&'a str, &'a str)> = Vec::new();
    let mut after_eof = false;
    let mut last_line = 0;
    let mut lines = input.split(|b| *b == b'\n').enumerate().peekable();
    while let Some((i, raw)) = lines.next() {
        let n = i + 1;
        // A final newline ends the last line; it does not start an empty one.
        if raw.is_empty() && lines.peek().is_none() {
            break;
        }
        last_line = n;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let err = |message: String| LineError { line: n, message };
        let Ok(line) = std::str::from_utf8(raw) else {
            out.errors.push(err("not valid UTF-8".into()));
            continue;
        };
        if after_eof {
            if !line.trim().is_empty() {
                out.errors.push(err("content after # EOF".into()));
            }
            continue;
        }
        if line.trim().is_empty() {
            if format == Format::OpenMetrics {
                out.errors.push(err("empty line (not allowed in OpenMetrics)".into()));
            }
            continue;
        }
        let result = if let Some(comment) = line.strip_prefix('#') {
            parse_comment(comment, format, &mut out, &mut family_index).map(|eof| {
                if eof {
                    after_eof = true;
                    out.eof = true;
                }
            })
        } else {
            labels.clear();
            parse_sample(line, format, &mut labels).map(|(name, value, timestamp_ms)| {
                let family = family_for(name, &out.families, &family_index);
                on_sample(&SampleRef { name, family, labels: &labels, value, timestamp_ms }, &out.families);
            })
        };
        if let Err(m) = result {
            out.errors.push(err(m));
        }
    }
    if format == Format::OpenMetrics && !out.eof {
        out.errors.push(LineError { line: last_line, message: "no # EOF: the dump is truncated".into() });
    }
    out
}

fn family_for(sample: &str, families: &[Family], index: &HashMap<String, usize>) -> Option<usize> {
    if let Some(&i) = index.get(sample) {
        return Some(i);
    }
    for (pos, _) in sample.match_indices('_') {
        let (base, suffix) = sample.split_at(pos);
        if let Some(&i) = index.get(base)
            && families[i].kind.suffixes().contains(&suffix)
        {
            return Some(i);
        }
    }
    None
}

/// `# HELP`, `# TYPE`, `# UNIT`, `# EOF`; returns whether it was `# EOF`.
fn parse_comment(
    rest: &str,
    format: Format,
    out: &mut Exposition,
    index: &mut HashMap<String, usize>,
) -> Result<bool, String> {
    let body = rest.strip_prefix(' ').unwrap_or(rest);
    if body.trim_end() == "EOF" && format == Format::OpenMetrics {
        return Ok(true);
    }
    let (keyword, after) = body.split_once(' ').unwrap_or((body, ""));
    if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
        return match format {
            // Any other comment is allowed (and ignored) in the Prometheus format.
            Format::Prometheus => Ok(false),
            Format::OpenMetrics => Err(format!("unknown comment # {keyword}")),
        };
    }
    let after = after.trim_start_matches([' ', '\t']);
    let (name, text) = after.split_once([' ', '\t']).unwrap_or((after, ""));
    if !valid_metric_name(name) {
        return Err(format!("# {keyword}: invalid metric name {name:?}"));
    }
    let fam = match index.get(name) {
        Some(&i) => i,
        None => {
            out.families.push(Family { name: name.to_string(), kind: MetricType::Unknown, help: None, unit: None });
            index.insert(name.to_string(), out.families.len() - 1);
            out.families.len() - 1
        }
    };
    let f = &mut out.families[fam];
    match keyword {
        "HELP" => {
            if f.help.is_some() {
                return Err(format!("second # HELP for {name}"));
            }
            f.help = Some(unescape(text, false)?);
        }
        "TYPE" => {
            let t = text.trim();
            f.kind = MetricType::parse(t).ok_or_else(|| format!("# TYPE {name}: unknown type {t:?}"))?;
        }
        _ => f.unit = Some(text.trim().to_string()),
    }
    Ok(false)
}

fn valid_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Checks that a label value's escapes are `\\`, `\"` and `\n` only.
fn check_escapes(s: &str) -> Result<(), String> {
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'\\' && !matches!(bytes.next(), Some(b'\\' | b'n' | b'"')) {
            // The rare bad case: let `unescape` name the offending escape.
            return unescape(s, true).map(|_| ());
        }
    }
    Ok(())
}

/// Undoes `\\`, `\n` (and `\"` in label values); any other escape is an error.
fn unescape(s: &str, quotes: bool) -> Result<String, String> {
    if !s.contains('\\') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            Some(o) => return Err(format!("invalid escape \\{o}")),
            None => return Err("a trailing backslash".into()),
        }
    }
    Ok(out)
}

/// A sample line: its name, value and timestamp; its labels go to `labels`.
fn parse_sample<'a>(
    line: &'a str,
    format: Format,
    labels: &mut Vec<(&'a str, &'a str)>,
) -> Result<(&'a str, f64, Option<i64>), String> {
    let bytes = line.as_bytes();
    let name_end = bytes.iter().position(|b| matches!(b, b'{' | b' ' | b'\t')).unwrap_or(bytes.len());
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut pos = name_end;
    if bytes.get(pos) == Some(&b'{') {
        pos = parse_labels(line, pos + 1, format, labels)?;
    }
    let rest = &line[pos..];
    if !rest.starts_with([' ', '\t']) {
        return Err(format!("{name}: expected a space before the value"));
    }
    // OpenMetrics exemplars (` # {..} value [ts]`) are ignored.
    let (rest, _exemplar) = match format {
        Format::OpenMetrics => match find_exemplar(rest) {
            Some(i) => (&rest[..i], Some(&rest[i + 3..])),
            None => (rest, None),
        },
        Format::Prometheus => (rest, None),
    };
    let mut tokens = rest.split([' ', '\t']).filter(|t| !t.is_empty());
    let value_text = tokens.next().ok_or_else(|| format!("{name}: no value"))?;
    let value = parse_value(value_text).ok_or_else(|| format!("{name}: invalid value {value_text:?}"))?;
    let timestamp_ms = match tokens.next() {
        None => None,
        Some(t) => Some(parse_timestamp(t, format).ok_or_else(|| format!("{name}: invalid timestamp {t:?}"))?),
    };
    if let Some(extra) = tokens.next() {
        return Err(format!("{name}: unexpected {extra:?} after the timestamp"));
    }
    Ok((name, value, timestamp_ms))
}

/// Where ` # ` (an OpenMetrics exemplar) starts, if anywhere.
fn find_exemplar(rest: &str) -> Option<usize> {
    let b = rest.as_bytes();
    let mut from = 0;
    while let Some(i) = b[from..].iter().position(|&c| c == b'#') {
        let at = from + i;
        if at >= 1 && b[at - 1] == b' ' && b.get(at + 1) == Some(&b' ') {
            return Some(at - 1);
        }
        from = at + 1;
    }
    None
}

/// Labels from just after `{`; returns the position after `}`.
fn parse_labels<'a>(
    line: &'a str,
    mut pos: usize,
    format: Format,
    out: &mut Vec<(&'a str, &'a str)>,
) -> Result<usize, String> {
    let bytes = line.as_bytes();
    let skip_ws = |mut p: usize| {
        while p < bytes.len() && (bytes[p] == b' ' || bytes[p] == b'\t') {
            p += 1;
        }
        p
    };
    loop {
        pos = skip_ws(pos);
        match bytes.get(pos) {
            Some(b'}') => {
                if !out.is_empty() && format == Format::OpenMetrics && bytes[..pos].trim_ascii_end().ends_with(b",") {
                    return Err("trailing comma in labels".into());
                }
                return Ok(pos + 1);
            }
            None => return Err("unterminated labels".into()),
            _ => {}
        }
        let start = pos;
        while pos < bytes.len() && (bytes[pos].is_ascii_alphanumeric() || bytes[pos] == b'_') {
            pos += 1;
        }
        let lname = &line[start..pos];
        if !valid_label_name(lname) {
            let shown: String = line[start..].chars().take(pos - start + 1).collect();
            return Err(format!("invalid label name {shown:?}"));
        }
        pos = skip_ws(pos);
        if bytes.get(pos) != Some(&b'=') {
            return Err(format!("label {lname}: expected ="));
        }
        pos = skip_ws(pos + 1);
        if bytes.get(pos) != Some(&b'"') {
            return Err(format!("label {lname}: expected a quoted value"));
        }
        pos += 1;
        let vstart = pos;
        while pos < bytes.len() && bytes[pos] != b'"' {
            pos += if bytes[pos] == b'\\' { 2 } else { 1 };
        }
        if pos >= bytes.len() {
            return Err(format!("label {lname}: unterminated value"));
        }
        let value = &line[vstart..pos];
        check_escapes(value).map_err(|e| format!("label {lname}: {e}"))?;
        pos += 1;
        if out.iter().any(|(n, _)| *n == lname) {
            return Err(format!("duplicate label {lname}"));
        }
        if out.len() >= MAX_LABELS {
            return Err(format!("more than {MAX_LABELS} labels"));
        }
        out.push((lname, value));
        pos = skip_ws(pos);
        match bytes.get(pos) {
            Some(b',') => pos += 1,
            Some(b'}') => {}
            _ => return Err(format!("label {lname}: expected , or }}")),
        }
    }
}

/// A sample value: decimal or exponent notation, `+Inf`, `-Inf`, `NaN` (any case, as
/// Prometheus' own parser).
pub fn parse_value(s: &str) -> Option<f64> {
    // Only digits, sign, dot and exponent: no hex, no underscores, no words.
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E')) {
        return s.parse::<f64>().ok();
    }
    let is = |w: &[&str]| w.iter().any(|w| s.eq_ignore_ascii_case(w));
    if is(&["+inf", "inf", "+infinity", "infinity"]) {
        Some(f64::INFINITY)
    } else if is(&["-inf", "-infinity"]) {
        Some(f64::NEG_INFINITY)
    } else if is(&["nan"]) {
        Some(f64::NAN)
    } else {
        None
    }
}

fn parse_timestamp(s: &str, format: Format) -> Option<i64> {
    match format {
        Format::Prometheus => s.parse::<i64>().ok(),
        Format::OpenMetrics => {
            let secs = parse_value(s)?;
            let ms = (secs * 1000.0).round();
            (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64)
        }
    }
}

/// Appends a value as the text formats spell it (see [`format_value`]).
pub fn push_value(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v:?}");
    } else {
        out.push_str(if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "+Inf"
        } else {
            "-Inf"
        });
    }
}

/// A value as the text formats spell it (`+Inf`, `-Inf`, `NaN`, else the shortest exact form).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v:?}")
    }
}

/// Appends a label value escaped as the text formats want it (`\\`, `\"`, `\n`).
pub fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn render_labels<'a>(out: &mut String, labels: impl Iterator<Item = &'a (String, String)>) {
    let mut first = true;
    for (k, v) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(out, v);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

/// One sample line in the Prometheus text format (no newline).
pub fn render_sample(out: &mut String, s: &Sample, with_timestamp: bool) {
    out.push_str(&s.name);
    render_labels(out, s.labels.iter());
    out.push(' ');
    push_value(out, s.value);
    if with_timestamp && let Some(t) = s.timestamp_ms {
        let _ = write!(out, " {t}");
    }
}

/// `# HELP` and `# TYPE` lines of a family in the Prometheus text format.
pub fn render_family_header(out: &mut String, f: &Family) {
    // In the Prometheus text format a counter's family is named like its sample (`x_total`);
    // OpenMetrics names it without the suffix. Written the OpenMetrics way, Prometheus would
    // take `x_total` for an untyped metric without help.
    let name = if f.kind == MetricType::Counter && !f.name.ends_with("_total") {
        std::borrow::Cow::Owned(format!("{}_total", f.name))
    } else {
        std::borrow::Cow::Borrowed(f.name.as_str())
    };
    if let Some(h) = &f.help {
        let _ = write!(out, "# HELP {name} ");
        for c in h.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('\n');
    }
    let _ = writeln!(out, "# TYPE {name} {}", f.kind.prometheus_name());
}

/// A whole exposition in the Prometheus text format: each family's header, then its samples
/// (samples of undeclared families last, untyped).
pub fn render(families: &[Family], samples: &[Sample], with_timestamps: bool) -> String {
    let mut out = String::new();
    let mut by_family: HashMap<&str, Vec<&Sample>> = HashMap::new();
    for s in samples {
        by_family.entry(s.family.as_str()).or_default().push(s);
    }
    for f in families {
        let Some(ss) = by_family.remove(f.name.as_str()) else { continue };
        render_family_header(&mut out, f);
        for s in ss {
            render_sample(&mut out, s, with_timestamps);
            out.push('\n');
        }
    }
    let mut rest: Vec<(&str, Vec<&Sample>)> = by_family.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(b.0));
    for (_, ss) in rest {
        for s in ss {
            render_sample(&mut out, s, with_timestamps);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;
