//! Schema inference and evolution of bronze tables, and source drift detection.
//!
//! Each bronze table has, besides the envelope and lineage columns, one typed column per payload
//! field its schema knows. The schema lives in the Delta log itself: the columns are the table's
//! (added with a `metadata` action in the same commit as the first rows that carry them) and two
//! table properties record the inferred types (`json` and `string` are both stored as text) and
//! the schema version. So every writer — a restarted one, a second Kafka consumer — sees the same
//! schema as the data, atomically; the Delta log keeps every earlier version.
//!
//! The first batch of a source infers its schema; schema hints (config, then the data contract's
//! typed fields) override inferred types. Later batches evolve it according to the mode:
//! `addNewColumns` adds new fields as columns (ingestion goes on), `rescue` keeps the schema and
//! puts unknown fields in `_rescued_data`, `failOnNewColumns` stops the source naming the field
//! and where it came from, `none` ignores new fields (they stay in `payload`). A value whose type
//! does not fit its column is never coerced: the column stays NULL and the value goes to
//! `_rescued_data` (and is reported). `payload` keeps every field's exact text in every mode.

use crate::builder::{BronzeRows, FieldCells};
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::Field;
use std::collections::{BTreeMap, HashMap};
use tributary_core::config::{BronzeConfig, DriftConfig};
use tributary_core::event_log::{Level, emit};
use tributary_core::field_type::{FieldType, parse_hints};
use tributary_core::{Error, Result};
use tributary_delta::{Action, Table};
use tributary_events::contract::{Kind, source_fields};

pub const PROP_VERSION: &str = "tributary.schema.version";
pub const PROP_COLUMNS: &str = "tributary.schema.columns";
pub const PROP_MODE: &str = "tributary.schema.mode";

/// Columns a payload field may never become (bronze's own columns, compared case-insensitively).
pub fn reserved(name: &str) -> bool {
    static NAMES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        tributary_delta::schemas::bronze().fields().iter().map(|f| f.name().to_ascii_lowercase()).collect()
    });
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    AddNewColumns,
    Rescue,
    FailOnNewColumns,
    None,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "addNewColumns" => Self::AddNewColumns,
            "rescue" => Self::Rescue,
            "failOnNewColumns" => Self::FailOnNewColumns,
            "none" => Self::None,
            other => return Err(Error::user(format!("unknown schema evolution mode {other:?}"))),
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddNewColumns => "addNewColumns",
            Self::Rescue => "rescue",
            Self::FailOnNewColumns => "failOnNewColumns",
            Self::None => "none",
        }
    }
}

/// The typed payload columns of one bronze table, in table order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceSchema {
    /// 0 until the first batch has been inferred.
    pub version: i64,
    pub columns: Vec<(String, FieldType)>,
}

impl SourceSchema {
    pub fn from_properties(table: &str, props: &HashMap<String, String>) -> Result<Self> {
        let version = props.get(PROP_VERSION).and_then(|v| v.parse().ok()).unwrap_or(0);
        let columns = match props.get(PROP_COLUMNS) {
            None => Vec::new(),
            Some(text) => {
                let pairs: Vec<(String, String)> = serde_json::from_str(text)
                    .map_err(|e| Error::internal(format!("{table}: corrupt {PROP_COLUMNS}")).with_source(e))?;
                pairs
                    .into_iter()
                    .map(|(n, t)| {
                        FieldType::parse(&t)
                            .map(|t| (n.clone(), t))
                            .ok_or_else(|| Error::internal(format!("{table}: column {n} has unknown type {t}")))
                    })
                    .collect::<Result<_>>()?
            }
        };
        Ok(Self { version, columns })
    }

    pub fn properties(&self, mode: Mode) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = self.columns.iter().map(|(n, t)| (n.as_str(), t.to_string())).collect();
        vec![
            (PROP_VERSION.into(), self.version.to_string()),
            (PROP_COLUMNS.into(), serde_json::to_string(&pairs).unwrap_or_default()),
            (PROP_MODE.into(), mode.as_str().into()),
        ]
    }

    pub fn get(&self, name: &str) -> Option<FieldType> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    /// A column whose name differs from `name` only by case.
    pub fn case_clash(&self, name: &str) -> Option<&str> {
        self.columns.iter().find(|(n, _)| n != name && n.eq_ignore_ascii_case(name)).map(|(n, _)| n.as_str())
    }
}

/// The JSON kind of a raw value, without parsing it fully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    Null,
    Bool,
    Int,
    Float,
    Str,
    Nested,
}

pub fn classify(raw: &str) -> Seen {
    match raw.as_bytes().first() {
        Some(b'"') => Seen::Str,
        Some(b'{') | Some(b'[') => Seen::Nested,
        Some(b't') | Some(b'f') => Seen::Bool,
        Some(b'n') | None => Seen::Null,
        _ if raw.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) => Seen::Float,
        _ if raw.parse::<i64>().is_ok() => Seen::Int,
        _ => Seen::Float,
    }
}

pub fn seen_name(s: Seen) -> &'static str {
    match s {
        Seen::Null => "null",
        Seen::Bool => "boolean",
        Seen::Int => "integer",
        Seen::Float => "number",
        Seen::Str => "string",
        Seen::Nested => "object/array",
    }
}

/// Parses an RFC 3339 timestamp string (the JSON text, with quotes) to UTC microseconds.
pub fn parse_timestamp(raw: &str) -> Option<i64> {
    let s: String = serde_json::from_str(raw).ok()?;
    if s.len() < 20 || s.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(&s).ok().map(|t| t.timestamp_micros())
}

/// Parses an exact decimal (a JSON number in any spelling, or a string holding one) at
/// `decimal(precision, scale)`: `tributary_events::decimal`, the one parser silver uses too.
pub fn parse_decimal(raw: &str, precision: u8, scale: i8) -> Option<i128> {
    tributary_events::decimal::parse(raw, precision, scale).ok()
}

/// Whether a raw value fits a column type (null fits every type).
pub fn fits(t: FieldType, raw: &str) -> bool {
    let seen = classify(raw);
    match (t, seen) {
        (_, Seen::Null) => true,
        (FieldType::String, s) => s == Seen::Str,
        (FieldType::Long, s) => s == Seen::Int,
        // 1e400 is valid JSON but no double: rescued, never stored as infinity.
        (FieldType::Double, s) => matches!(s, Seen::Int | Seen::Float) && raw.parse::<f64>().is_ok_and(f64::is_finite),
        (FieldType::Boolean, s) => s == Seen::Bool,
        (FieldType::Timestamp, s) => s == Seen::Str && parse_timestamp(raw).is_some(),
        (FieldType::Json, _) => true,
        (FieldType::Decimal { precision, scale }, s) => {
            matches!(s, Seen::Int | Seen::Float | Seen::Str) && parse_decimal(raw, precision, scale).is_some()
        }
    }
}

/// The type the values of a new field suggest.
pub fn infer(cells: &FieldCells) -> FieldType {
    let mut t: Option<FieldType> = None;
    for (seen, n) in &cells.seen {
        if *n == 0 || *seen == Seen::Null {
            continue;
        }
        let this = match seen {
            Seen::Bool => FieldType::Boolean,
            Seen::Int => FieldType::Long,
            Seen::Float => FieldType::Double,
            Seen::Nested => FieldType::Json,
            Seen::Str => {
                // A timestamp only if every sampled string value is one.
                if !cells.string_samples.is_empty() && cells.string_samples.iter().all(|r| parse_timestamp(r).is_some())
                {
                    FieldType::Timestamp
                } else {
                    FieldType::String
                }
            }
            Seen::Null => continue,
        };
        t = Some(match t {
            None => this,
            Some(prev) => FieldType::unify(prev, this),
        });
    }
    t.unwrap_or(FieldType::String)
}

/// Hints of one source: config first, then the data contract's typed fields.
pub fn hints(cfg: &BronzeConfig, source: &str) -> Result<Vec<(String, FieldType)>> {
    let mut out = match cfg.source_options.get(source) {
        Some(o) => parse_hints(&o.schema_hints).map_err(Error::user)?,
        None => Vec::new(),
    };
    for f in source_fields(source) {
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(f.name)) {
            continue;
        }
        let t = match f.kind {
            Kind::Str => FieldType::String,
            Kind::I64 => FieldType::Long,
            Kind::F64 => FieldType::Double,
            Kind::Ts => FieldType::Timestamp,
            Kind::Decimal => FieldType::Decimal {
                precision: tributary_events::contract::DECIMAL_PRECISION,
                scale: tributary_events::contract::DECIMAL_SCALE as i8,
            },
        };
        out.push((f.name.to_string(), t));
    }
    Ok(out)
}

/// What the schema step decided for one batch.
#[derive(Debug, Default)]
pub struct Decision {
    /// The schema the batch is written in.
    pub schema: SourceSchema,
    /// Columns added by this batch (empty: no metadata action).
    pub added: Vec<(String, FieldType)>,
    /// New fields not added (rescue / none), with their row counts.
    pub not_added: Vec<(String, u64)>,
    /// `failOnNewColumns`: the first new field and where it was seen.
    pub stop: Option<String>,
}

impl Decision {
    pub fn arrow_fields(&self) -> Vec<Field> {
        self.added.iter().map(|(n, t)| Field::new(n, tributary_delta::schemas::field_type_arrow(*t), true)).collect()
    }
}

/// Decides the schema of a batch from the table's current schema and the fields observed.
pub fn decide(
    current: &SourceSchema,
    mode: Mode,
    hints: &[(String, FieldType)],
    observed: &BTreeMap<String, FieldCells>,
) -> Decision {
    let mut d = Decision { schema: current.clone(), ..Default::default() };
    let first = current.version == 0;
    for (name, cells) in observed {
        if current.get(name).is_some() || reserved(name) || d.schema.case_clash(name).is_some() {
            continue;
        }
        // All-null fields carry no type yet; they are added once a value shows up.
        if cells.non_null() == 0 && !first {
            continue;
        }
        let hinted = hints.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
        let t = hinted.unwrap_or_else(|| infer(cells));
        if first || mode == Mode::AddNewColumns {
            d.schema.columns.push((name.clone(), t));
            d.added.push((name.clone(), t));
            continue;
        }
        match mode {
            Mode::FailOnNewColumns => {
                if d.stop.is_none() {
                    d.stop = Some(format!(
                        "new field `{name}` ({} rows, first at {}) and schema evolution mode failOnNewColumns",
                        cells.present, cells.first_lineage
                    ));
                }
            }
            _ => d.not_added.push((name.clone(), cells.present)),
        }
    }
    if !d.added.is_empty() {
        d.schema.version = current.version + 1;
    }
    d
}

/// Per-window statistics a drift check compares against the baseline.
#[derive(Debug, Default, Clone)]
struct Window {
    rows: u64,
    lines: u64,
    malformed: u64,
    /// Field → (present, null) counts.
    fields: HashMap<String, (u64, u64)>,
}

impl Window {
    fn absorb(&mut self, other: &Window) {
        self.rows += other.rows;
        self.lines += other.lines;
        self.malformed += other.malformed;
        for (k, (p, n)) in &other.fields {
            let e = self.fields.entry(k.clone()).or_default();
            e.0 += p;
            e.1 += n;
        }
    }
    fn null_rate(&self, field: &str) -> f64 {
        let (present, nulls) = self.fields.get(field).copied().unwrap_or((0, 0));
        if self.rows == 0 { 0.0 } else { (self.rows - present + nulls) as f64 / self.rows as f64 }
    }
    fn malformed_rate(&self) -> f64 {
        if self.lines == 0 { 0.0 } else { self.malformed as f64 / self.lines as f64 }
    }
}

/// One drift finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// new_field | missing_field | type_change | null_rate | malformed_rate
    pub kind: &'static str,
    pub field: String,
    pub details: serde_json::Value,
}

/// Source drift: rates are compared window by window (at least `window_rows` rows) against the
/// baseline of every earlier window of this process; new fields and type changes are reported
/// per batch. The baseline is kept in memory: after a restart the first window only builds it.
#[derive(Debug)]
pub struct DriftTracker {
    cfg: DriftConfig,
    window: Window,
    baseline: Window,
}

impl DriftTracker {
    pub fn new(cfg: DriftConfig) -> Self {
        Self { cfg, window: Window::default(), baseline: Window::default() }
    }

    /// Adds one batch; returns the rate findings when a window completes.
    pub fn observe(&mut self, rows: u64, lines: u64, malformed: u64, stats: &FieldStats) -> Vec<Finding> {
        if !self.cfg.enabled {
            return vec![];
        }
        self.window.rows += rows;
        self.window.lines += lines;
        self.window.malformed += malformed;
        for (name, (p, n)) in stats {
            let e = self.window.fields.entry(name.clone()).or_default();
            e.0 += p;
            e.1 += n;
        }
        if self.window.lines < self.cfg.window_rows {
            return vec![];
        }
        let w = std::mem::take(&mut self.window);
        let mut out = Vec::new();
        let base_malformed = self.baseline.malformed_rate();
        if w.malformed_rate() - base_malformed > self.cfg.malformed_rate_jump {
            out.push(Finding {
                kind: "malformed_rate",
                field: String::new(),
                details: serde_json::json!({"baseline": base_malformed, "now": w.malformed_rate(), "lines": w.lines,
                                            "malformed": w.malformed, "threshold": self.cfg.malformed_rate_jump}),
            });
        }
        if self.baseline.rows >= self.cfg.window_rows && w.rows > 0 {
            let mut names: Vec<&String> = w.fields.keys().collect();
            names.sort();
            for name in names {
                let (present_w, _) = w.fields[name];
                let (present_b, _) = self.baseline.fields.get(name).copied().unwrap_or((0, 0));
                if present_w == 0 && present_b > 0 {
                    out.push(Finding {
                        kind: "missing_field",
                        field: name.clone(),
                        details: serde_json::json!({"baseline_present_rate": present_b as f64 / self.baseline.rows as f64,
                                                    "rows": w.rows}),
                    });
                    continue;
                }
                let (b, now) = (self.baseline.null_rate(name), w.null_rate(name));
                if self.baseline.fields.contains_key(name) && now - b > self.cfg.null_rate_jump {
                    out.push(Finding {
                        kind: "null_rate",
                        field: name.clone(),
                        details: serde_json::json!({"baseline": b, "now": now, "rows": w.rows,
                                                    "threshold": self.cfg.null_rate_jump}),
                    });
                }
            }
        }
        self.baseline.absorb(&w);
        out
    }
}

/// Field → (rows present, rows null) for every column of a schema.
pub type FieldStats = HashMap<String, (u64, u64)>;

pub fn field_stats(schema: &SourceSchema, observed: &BTreeMap<String, FieldCells>) -> FieldStats {
    schema
        .columns
        .iter()
        .map(|(name, _)| (name.clone(), observed.get(name).map(|c| (c.present, c.nulls())).unwrap_or((0, 0))))
        .collect()
}

/// A batch typed and ready to commit.
#[derive(Debug)]
pub struct Prepared {
    pub batches: Vec<RecordBatch>,
    /// The schema-evolution `metadata` action to commit with the data, if the schema changed.
    pub metadata: Option<Action>,
    pub decision: Decision,
    pub mode: Mode,
    /// new_field and type_change findings of this batch.
    pub findings: Vec<Finding>,
    pub stats: FieldStats,
    pub rows: u64,
    pub rescued_values: u64,
}

pub enum Step {
    Ready(Box<Prepared>),
    /// `failOnNewColumns` met a new field: the message; nothing may be committed.
    Stop(String),
}

/// Decides the batch's schema against the table's (read from the loaded snapshot), prepares the
/// evolution action and builds the typed batch.
pub fn prepare(table: &mut Table, mode: Mode, hints: &[(String, FieldType)], rows: BronzeRows) -> Result<Step> {
    table.sync_schema()?;
    let current = SourceSchema::from_properties(&table.name, &table.properties()?)?;
    let decision = decide(&current, mode, hints, rows.observed());
    if let Some(stop) = &decision.stop {
        return Ok(Step::Stop(format!(
            "{}: {stop}; the source is stopped (nothing of the batch was committed)",
            table.name
        )));
    }
    let mut findings = Vec::new();
    if current.version > 0 {
        for (name, t) in &decision.added {
            let c = &rows.observed()[name];
            findings.push(Finding {
                kind: "new_field",
                field: name.clone(),
                details: serde_json::json!({"type": t.to_string(), "rows": c.present, "first_seen": c.first_lineage,
                                            "action": "column added", "mode": mode.as_str()}),
            });
        }
        for (name, n) in &decision.not_added {
            let c = &rows.observed()[name];
            let action = if mode == Mode::Rescue { "rescued" } else { "ignored (kept in payload)" };
            findings.push(Finding {
                kind: "new_field",
                field: name.clone(),
                details: serde_json::json!({"rows": n, "first_seen": c.first_lineage, "action": action,
                                            "mode": mode.as_str()}),
            });
        }
    }
    let stats = field_stats(&decision.schema, rows.observed());
    let metadata = if decision.added.is_empty() {
        None
    } else {
        Some(table.evolve(&decision.arrow_fields(), &decision.schema.properties(mode))?)
    };
    let n = rows.len() as u64;
    let built = rows.finish(&decision.schema, mode)?;
    findings.extend(built.type_changes);
    Ok(Step::Ready(Box::new(Prepared {
        batches: built.batches,
        metadata,
        decision,
        mode,
        findings,
        stats,
        rows: n,
        rescued_values: built.rescued_values,
    })))
}

/// After the batch committed: schema_change and drift records, metrics.
pub fn committed(region: &str, table: &str, p: &Prepared, drift: &mut DriftTracker, lines: u64, malformed: u64) {
    if !p.decision.added.is_empty() {
        let added: Vec<(String, String)> = p.decision.added.iter().map(|(n, t)| (n.clone(), t.to_string())).collect();
        emit(
            Level::Info,
            crate::STAGE,
            region,
            table,
            "schema_change",
            serde_json::json!({"version": p.decision.schema.version, "mode": p.mode.as_str(), "added": added,
                               "columns": p.decision.schema.columns.len()}),
        );
        tributary_core::metrics::schema_version(crate::STAGE, region, table, p.decision.schema.version);
    }
    let mut findings = p.findings.clone();
    findings.extend(drift.observe(p.rows, lines, malformed, &p.stats));
    report(region, table, &findings);
}

/// Records findings in the event log and the drift metric.
pub fn report(region: &str, table: &str, findings: &[Finding]) {
    for f in findings {
        tributary_core::metrics::drift_detected(region, table, f.kind, &f.field);
        let mut details = f.details.clone();
        if let Some(o) = details.as_object_mut() {
            o.insert("kind".into(), f.kind.into());
            o.insert("field".into(), f.field.clone().into());
        }
        emit(Level::Warn, crate::STAGE, region, table, "drift", details);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_and_fit_never_coerce() {
        assert_eq!(classify("12"), Seen::Int);
        assert_eq!(classify("-1.5e3"), Seen::Float);
        assert_eq!(classify("99999999999999999999"), Seen::Float);
        assert_eq!(classify("\"x\""), Seen::Str);
        assert_eq!(classify("{\"a\":1}"), Seen::Nested);
        assert!(fits(FieldType::Double, "12"));
        assert!(!fits(FieldType::Long, "12.5"));
        assert!(!fits(FieldType::Double, "1761955e200124"), "found by cargo-fuzz: out of f64 range");
        assert!(!fits(FieldType::Long, "\"12\""));
        assert!(!fits(FieldType::String, "12"));
        assert!(fits(FieldType::String, "null"));
        assert!(fits(FieldType::Timestamp, "\"2026-11-01T00:00:00Z\""));
        assert!(!fits(FieldType::Timestamp, "\"yesterday\""));
        let dec = FieldType::Decimal { precision: 38, scale: 9 };
        assert!(fits(dec, "0.123456789"));
        assert!(fits(dec, "1.1000000000000"));
        assert!(!fits(dec, "0.1234567891"));
        assert!(fits(dec, "\"1.5\""), "a decimal sent as a string is exact");
        assert!(fits(dec, "7e-9") && fits(dec, "1.5E+3"), "exponent spellings of exact values");
        assert!(!fits(dec, "\"abc\""));
        assert_eq!(parse_decimal("-12.5", 38, 9), Some(-12_500_000_000));
        assert_eq!(parse_decimal("123.45", 4, 2), None);
        assert_eq!(parse_decimal("1e3", 38, 9), Some(1_000_000_000_000));
    }

    fn cells(present: u64, nulls: u64) -> FieldCells {
        let mut c = FieldCells { present, ..Default::default() };
        c.seen.insert(Seen::Null, nulls);
        c.seen.insert(Seen::Str, present - nulls);
        c
    }

    #[test]
    fn drift_fires_on_jumps_and_stays_quiet_on_steady_data() {
        let cfg = DriftConfig { enabled: true, window_rows: 100, null_rate_jump: 0.2, malformed_rate_jump: 0.05 };
        let schema = SourceSchema {
            version: 1,
            columns: vec![("a".into(), FieldType::String), ("b".into(), FieldType::String)],
        };
        let mut t = DriftTracker::new(cfg);
        let steady = BTreeMap::from([("a".to_string(), cells(100, 5)), ("b".to_string(), cells(50, 0))]);
        for _ in 0..5 {
            assert!(t.observe(100, 101, 1, &field_stats(&schema, &steady)).is_empty());
        }
        // a's nulls jump from 5% to 50%; b disappears; malformed jumps from 1% to 20%.
        let bad = BTreeMap::from([("a".to_string(), cells(100, 50))]);
        let f = t.observe(100, 125, 25, &field_stats(&schema, &bad));
        let kinds: Vec<(&str, &str)> = f.iter().map(|x| (x.kind, x.field.as_str())).collect();
        assert_eq!(kinds, vec![("malformed_rate", ""), ("null_rate", "a"), ("missing_field", "b")]);
    }
}
