//! Per-source typed fields silver extracts from the payload (the data contract).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    I64,
    F64,
    /// RFC 3339 or epoch ms.
    Ts,
    /// Exact decimal, scale 9.
    Decimal,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// A missing or mistyped required field sends the row to quarantine.
    pub required: bool,
}

const fn f(name: &'static str, kind: Kind, required: bool) -> Field {
    Field { name, kind, required }
}

const AUDIT: &[Field] = &[
    f("actor", Kind::Str, false),
    f("action", Kind::Str, false),
    f("resource", Kind::Str, false),
    f("result", Kind::Str, false),
];
const JOB: &[Field] = &[
    f("job_id", Kind::Str, false),
    f("run_id", Kind::Str, false),
    f("state", Kind::Str, false),
    f("sequence", Kind::I64, false),
];
const BILLING: &[Field] = &[
    f("sku", Kind::Str, true),
    f("dbu", Kind::Decimal, true),
    f("usage_start", Kind::Ts, false),
    f("usage_end", Kind::Ts, false),
];
const CLUSTER: &[Field] = &[
    f("cluster_id", Kind::Str, false),
    f("cpu_pct", Kind::F64, false),
    f("mem_pct", Kind::F64, false),
    f("num_workers", Kind::I64, false),
];

pub fn source_fields(source: &str) -> &'static [Field] {
    match source {
        "audit" => AUDIT,
        "job" => JOB,
        "billing" => BILLING,
        "cluster_metrics" => CLUSTER,
        _ => &[],
    }
}

/// Decimal scale of every exact-decimal column (DBU).
pub const DECIMAL_SCALE: u32 = 9;
pub const DECIMAL_PRECISION: u8 = 38;
