//! Arrow schemas of every table Tributary writes (the data contracts, in one place).

use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;
use tributary_events::contract::{DECIMAL_PRECISION, DECIMAL_SCALE, Kind, source_fields};

pub fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}
pub fn decimal() -> DataType {
    DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
}

fn envelope(required_keys: bool) -> Vec<Field> {
    vec![
        Field::new("event_id", DataType::Utf8, !required_keys),
        Field::new("event_time", ts(), !required_keys),
        Field::new("source", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("workspace_id", DataType::Utf8, true),
        Field::new("customer_id", DataType::Utf8, true),
        Field::new("egress_approved", DataType::Boolean, true),
    ]
}

/// Bronze, one table per source, partitioned by `event_date`.
pub fn bronze() -> SchemaRef {
    let mut f = envelope(false);
    f.extend([
        Field::new("payload", DataType::Utf8, false),
        Field::new("_rescued_data", DataType::Utf8, true),
        Field::new("_source_file", DataType::Utf8, true),
        Field::new("_source_line", DataType::Int64, true),
        Field::new("_kafka_topic", DataType::Utf8, true),
        Field::new("_kafka_partition", DataType::Int32, true),
        Field::new("_kafka_offset", DataType::Int64, true),
        Field::new("_kafka_timestamp", ts(), true),
        Field::new("_ingested_at", ts(), false),
        Field::new("event_date", DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(f))
}

/// Quarantine, one table per layer, partitioned by `source`.
pub fn quarantine() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("reason", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
        Field::new("event_id", DataType::Utf8, true),
        Field::new("_source_file", DataType::Utf8, true),
        Field::new("_source_line", DataType::Int64, true),
        Field::new("_lineage", DataType::Utf8, true),
        Field::new("_quarantined_at", ts(), false),
        Field::new("source", DataType::Utf8, false),
    ]))
}

pub fn kind_type(k: Kind) -> DataType {
    match k {
        Kind::Str => DataType::Utf8,
        Kind::I64 => DataType::Int64,
        Kind::F64 => DataType::Float64,
        Kind::Ts => ts(),
        Kind::Decimal => decimal(),
    }
}

/// Silver, one table per source: envelope with non-null keys, typed source fields, lineage.
pub fn silver(source: &str) -> SchemaRef {
    let mut f = envelope(true);
    for sf in source_fields(source) {
        f.push(Field::new(sf.name, kind_type(sf.kind), !sf.required));
    }
    f.extend([
        Field::new("payload", DataType::Utf8, false),
        Field::new("_rescued_data", DataType::Utf8, true),
        Field::new("_source_file", DataType::Utf8, true),
        Field::new("_source_line", DataType::Int64, true),
        Field::new("_kafka_topic", DataType::Utf8, true),
        Field::new("_kafka_partition", DataType::Int32, true),
        Field::new("_kafka_offset", DataType::Int64, true),
        Field::new("_bronze_version", DataType::Int64, false),
        Field::new("_ingested_at", ts(), false),
        Field::new("event_date", DataType::Utf8, false),
    ]);
    Arc::new(Schema::new(f))
}

/// Gold event counts per window (minute / hour / day tables) per (region, source, workspace);
/// partitioned by `event_date`. Monitoring output: rows are updated as data arrives (late data
/// included, counted in `late_events`); `is_final` says the source's watermark has passed the
/// window's end, `completeness` the fraction of the region's sources whose data has.
pub fn gold_event_counts() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("window_start", ts(), false),
        Field::new("window_end", ts(), false),
        Field::new("region", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("workspace_id", DataType::Utf8, false),
        Field::new("event_count", DataType::Int64, false),
        Field::new("late_events", DataType::Int64, false),
        Field::new("is_final", DataType::Boolean, false),
        Field::new("watermark", ts(), true),
        Field::new("sources_reported", DataType::Int32, false),
        Field::new("completeness", DataType::Float64, false),
        Field::new("updated_at", ts(), false),
        Field::new("event_date", DataType::Utf8, false),
    ]))
}

/// Gold billing usage per window (hour / day tables) per (region, customer, sku), exact decimals.
/// Billing output: `record_type = 'window'` rows are provisional until the billing watermark
/// passes the window's end, then final and never rewritten; events later than that become
/// `record_type = 'adjustment'` rows (final at once) with the `reason`. Invoice = sum of both.
pub fn gold_billing() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("window_start", ts(), false),
        Field::new("window_end", ts(), false),
        Field::new("region", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("dbu", decimal(), false),
        Field::new("event_count", DataType::Int64, false),
        Field::new("record_type", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("is_final", DataType::Boolean, false),
        Field::new("watermark", ts(), true),
        Field::new("updated_at", ts(), false),
        Field::new("event_date", DataType::Utf8, false),
    ]))
}

/// Central events: the egress-approved rows of every region; partitioned by (region, event_date).
pub fn central_events() -> SchemaRef {
    let mut f = envelope(true);
    f.retain(|x| x.name() != "region");
    f.extend([
        Field::new("payload", DataType::Utf8, false),
        Field::new("_origin_version", DataType::Int64, false),
        Field::new("_federated_at", ts(), false),
        Field::new("region", DataType::Utf8, false),
        Field::new("event_date", DataType::Utf8, false),
    ]);
    Arc::new(Schema::new(f))
}

/// `central/region_watermarks`: per region, gold table and source, the max committed event_time
/// and watermark the region's gold was computed with.
pub fn central_watermarks() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("max_event_time", ts(), false),
        Field::new("watermark", ts(), false),
        Field::new("gold_version", DataType::Int64, false),
        Field::new("updated_at", ts(), false),
        Field::new("region", DataType::Utf8, false),
        Field::new("gold_table", DataType::Utf8, false),
    ]))
}

/// Central copy of a gold table: same columns, partitioned by (region, event_date).
pub fn central_gold(gold: SchemaRef) -> SchemaRef {
    gold
}

pub const BRONZE_PARTITIONS: &[&str] = &["event_date"];
pub const QUARANTINE_PARTITIONS: &[&str] = &["source"];
pub const SILVER_PARTITIONS: &[&str] = &["event_date"];
pub const GOLD_PARTITIONS: &[&str] = &["event_date"];
pub const CENTRAL_PARTITIONS: &[&str] = &["region", "event_date"];

/// Columns that define a table's logical content (what fingerprints compare): everything but
/// processing-time and physical lineage columns.
pub fn logical_columns(schema: &Schema) -> Vec<String> {
    const SKIP: &[&str] = &[
        "_lineage",
        "_ingested_at",
        "_kafka_timestamp",
        "_quarantined_at",
        "_federated_at",
        "updated_at",
        "watermark",
        "_bronze_version",
        "_origin_version",
    ];
    // Sorted: tables that evolved their schemas in different batches can differ in column order.
    let mut cols: Vec<String> =
        schema.fields().iter().map(|f| f.name().clone()).filter(|n| !SKIP.contains(&n.as_str())).collect();
    cols.sort();
    cols
}

/// The pipeline event log (`<data_root>/_tributary/event_log`), partitioned by `event_date`.
pub fn event_log() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("timestamp", ts(), false),
        Field::new("level", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("details", DataType::Utf8, false),
        Field::new("event_date", DataType::Utf8, false),
    ]))
}
pub const EVENT_LOG_PARTITIONS: &[&str] = &["event_date"];

/// The Arrow type a bronze column of an inferred schema is stored as.
pub fn field_type_arrow(t: tributary_core::field_type::FieldType) -> DataType {
    use tributary_core::field_type::FieldType as F;
    match t {
        F::String | F::Json => DataType::Utf8,
        F::Long => DataType::Int64,
        F::Double => DataType::Float64,
        F::Boolean => DataType::Boolean,
        F::Timestamp => ts(),
        F::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
    }
}
