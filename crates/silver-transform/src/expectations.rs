//! Data-quality expectations: boolean SQL expressions over silver rows, evaluated vectorised on
//! Arrow batches with DataFusion's expression stack (SQL → logical expression → type coercion →
//! physical expression). Only DataFusion's expression crates are linked, not its query engine,
//! and only in silver-transform.
//!
//! Expressions may use columns of the silver table, literals and SQL operators (comparisons,
//! arithmetic, `AND`/`OR`/`NOT`, `IS [NOT] NULL`, `[NOT] IN (…)`, `BETWEEN`, `[NOT] LIKE`,
//! `CASE`, `CAST`); there is no function registry, so function calls are rejected when the
//! config is loaded. A row passes when the expression is TRUE; FALSE and NULL fail.

use datafusion_common::config::ConfigOptions;
use datafusion_common::{DFSchema, TableReference};
use datafusion_expr::planner::ContextProvider;
use datafusion_expr::{AggregateUDF, ExprSchemable as _, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};
use datafusion_physical_expr::PhysicalExpr;
use datafusion_sql::planner::{PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;
use deltalake::arrow::array::{Array, BooleanArray, RecordBatch};
use deltalake::arrow::datatypes::{DataType, SchemaRef};
use std::sync::Arc;
use tributary_core::config::ExpectationConfig;
use tributary_core::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Warn,
    Drop,
    Quarantine,
    Fail,
}

impl Action {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "warn" => Self::Warn,
            "drop" => Self::Drop,
            "quarantine" => Self::Quarantine,
            "fail" => Self::Fail,
            other => return Err(Error::user(format!("unknown expectation action {other:?}"))),
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warn => "warn",
            Self::Drop => "drop",
            Self::Quarantine => "quarantine",
            Self::Fail => "fail",
        }
    }
}

/// One compiled expectation.
pub struct Expectation {
    pub name: String,
    pub expr: String,
    pub action: Action,
    physical: Arc<dyn PhysicalExpr>,
}

impl std::fmt::Debug for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expectation").field("name", &self.name).field("expr", &self.expr).finish()
    }
}

struct NoCatalog {
    options: ConfigOptions,
}

impl ContextProvider for NoCatalog {
    fn get_table_source(&self, name: TableReference) -> datafusion_common::Result<Arc<dyn TableSource>> {
        datafusion_common::plan_err!("expectations cannot refer to tables ({name})")
    }
    fn get_function_meta(&self, _name: &str) -> Option<Arc<ScalarUDF>> {
        None
    }
    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, _name: &str) -> Option<Arc<AggregateUDF>> {
        None
    }
    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        vec![]
    }
    fn udaf_names(&self) -> Vec<String> {
        vec![]
    }
    fn udwf_names(&self) -> Vec<String> {
        vec![]
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        vec![]
    }
}

impl Expectation {
    /// Compiles `cfg` against `schema` (the silver table's); a bad expression is a user error
    /// naming the rule.
    pub fn compile(cfg: &ExpectationConfig, table: &str, schema: &SchemaRef) -> Result<Self> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Error::user(format!("expectation {:?} on {table}: {what} `{}`: {e}", cfg.name, cfg.expr))
        };
        let action = Action::parse(&cfg.action)?;
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| bad("schema", &e))?;
        let sql = Parser::new(&GenericDialect {})
            .try_with_sql(&cfg.expr)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| bad("cannot parse", &e))?;
        let provider = NoCatalog { options: ConfigOptions::default() };
        let logical = SqlToRel::new(&provider)
            .sql_to_expr(sql, &df_schema, &mut PlannerContext::new())
            .map_err(|e| bad("cannot plan", &e))?;
        let simplifier = datafusion_optimizer::simplify_expressions::ExprSimplifier::new(
            datafusion_expr::simplify::SimplifyContext::builder().with_schema(Arc::new(df_schema.clone())).build(),
        );
        let logical = simplifier.coerce(logical, &df_schema).map_err(|e| bad("type error in", &e))?;
        let ty = logical.get_type(&df_schema).map_err(|e| bad("type error in", &e))?;
        if ty != DataType::Boolean {
            return Err(bad("must be a boolean expression, not", &ty));
        }
        let physical = datafusion_physical_expr::create_physical_expr(
            &logical,
            &df_schema,
            &datafusion_expr::execution_props::ExecutionProps::new(),
            &datafusion_expr::physical_planning_context::PhysicalPlanningContext::default(),
        )
        .map_err(|e| bad("cannot compile", &e))?;
        Ok(Self { name: cfg.name.clone(), expr: cfg.expr.clone(), action, physical })
    }

    /// Per row: passed (TRUE) or failed (FALSE or NULL).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<bool>> {
        let value = self
            .physical
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| Error::internal(format!("evaluating expectation {:?}", self.name)).with_source(e))?;
        let b = value
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| Error::internal(format!("expectation {:?} did not yield booleans", self.name)))?;
        Ok((0..b.len()).map(|i| b.is_valid(i) && b.value(i)).collect())
    }
}

/// The expectations that apply to one source's silver table, compiled.
pub fn for_source(cfgs: &[ExpectationConfig], source: &str, schema: &SchemaRef) -> Result<Vec<Expectation>> {
    cfgs.iter()
        .filter(|c| c.table == "*" || c.table == source)
        .map(|c| Expectation::compile(c, &format!("silver/{source}"), schema))
        .collect()
}

/// What the expectations decided for one batch.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Per row: keep in silver.
    pub keep: Vec<bool>,
    /// Per row: the quarantine rule that took it (first in declaration order), if any.
    pub quarantined_by: Vec<Option<usize>>,
    /// Per expectation: (passed, failed) over the batch.
    pub counts: Vec<(u64, u64)>,
    /// First row failing a `fail` expectation: (expectation index, row).
    pub failure: Option<(usize, usize)>,
}

/// Evaluates every expectation over `batch`. Counts are per rule and independent of the others;
/// a row failing any `quarantine` rule is quarantined, else a row failing any `drop` rule is
/// dropped; `warn` only counts.
pub fn judge(expectations: &[Expectation], batch: &RecordBatch) -> Result<Verdict> {
    let n = batch.num_rows();
    let mut v = Verdict { keep: vec![true; n], quarantined_by: vec![None; n], ..Default::default() };
    for (k, e) in expectations.iter().enumerate() {
        let pass = e.evaluate(batch)?;
        let failed = pass.iter().filter(|p| !**p).count() as u64;
        v.counts.push((n as u64 - failed, failed));
        for (row, ok) in pass.iter().enumerate() {
            if *ok {
                continue;
            }
            match e.action {
                Action::Warn => {}
                Action::Drop => v.keep[row] = false,
                Action::Quarantine => {
                    v.keep[row] = false;
                    if v.quarantined_by[row].is_none() {
                        v.quarantined_by[row] = Some(k);
                    }
                }
                Action::Fail => {
                    if v.failure.is_none() {
                        v.failure = Some((k, row));
                    }
                }
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Decimal128Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use deltalake::arrow::datatypes::{Field, Schema, TimeUnit};

    fn cfg(name: &str, expr: &str, action: &str) -> ExpectationConfig {
        ExpectationConfig { name: name.into(), table: "billing".into(), expr: expr.into(), action: action.into() }
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, true),
            Field::new("dbu", DataType::Decimal128(38, 9), true),
            Field::new("n", DataType::Int64, true),
            Field::new("event_time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c"), Some("d")])),
                Arc::new(
                    Decimal128Array::from(vec![Some(1_500_000_000), Some(0), Some(-1), None])
                        .with_precision_and_scale(38, 9)
                        .unwrap(),
                ),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        1_000_000_000_000_000,
                        1_500_000_000_000_000,
                        1_600_000_000_000_000,
                        1_700_000_000_000_000,
                    ])
                    .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap()
    }

    #[test]
    fn sql_expressions_evaluate_vectorised_with_null_as_failed() {
        let b = batch();
        let s = b.schema();
        let e = Expectation::compile(&cfg("nn", "event_id IS NOT NULL", "warn"), "t", &s).unwrap();
        assert_eq!(e.evaluate(&b).unwrap(), vec![true, false, true, true]);
        let e = Expectation::compile(&cfg("pos", "dbu >= 0", "warn"), "t", &s).unwrap();
        assert_eq!(e.evaluate(&b).unwrap(), vec![true, true, false, false]);
        let e = Expectation::compile(&cfg("time", "event_time > '2020-01-01'", "warn"), "t", &s).unwrap();
        assert_eq!(e.evaluate(&b).unwrap(), vec![false, false, true, true]);
        let e = Expectation::compile(&cfg("mix", "n BETWEEN 2 AND 3 OR event_id IN ('a')", "warn"), "t", &s).unwrap();
        assert_eq!(e.evaluate(&b).unwrap(), vec![true, true, true, false]);
    }

    #[test]
    fn bad_expressions_are_user_errors_naming_the_rule() {
        let s = batch().schema();
        let err = Expectation::compile(&cfg("typo", "dbux >= 0", "warn"), "silver/billing", &s).unwrap_err();
        assert!(err.to_string().contains("typo") && err.to_string().contains("dbux"), "{err}");
        let err = Expectation::compile(&cfg("notbool", "n + 1", "warn"), "t", &s).unwrap_err();
        assert!(err.to_string().contains("boolean"), "{err}");
        assert!(Expectation::compile(&cfg("syntax", "n >>= ", "warn"), "t", &s).is_err());
        assert!(Expectation::compile(&cfg("fn", "length(event_id) > 0", "warn"), "t", &s).is_err());
    }

    #[test]
    fn example_config_expectations_compile_against_the_silver_schemas() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/region-service.toml");
        let cfg = tributary_core::Config::load(Some(&path)).unwrap();
        assert!(!cfg.silver.expectations.is_empty());
        let mut n = 0;
        for source in tributary_core::config::SOURCES {
            n += for_source(&cfg.silver.expectations, source, &tributary_delta::schemas::silver(source)).unwrap().len();
        }
        assert!(n >= cfg.silver.expectations.len());
    }

    #[test]
    fn judge_applies_actions_in_order_and_counts_per_rule() {
        let b = batch();
        let s = b.schema();
        let rules = vec![
            Expectation::compile(&cfg("w", "n < 4", "warn"), "t", &s).unwrap(),
            Expectation::compile(&cfg("d", "dbu >= 0", "drop"), "t", &s).unwrap(),
            Expectation::compile(&cfg("q", "event_id IS NOT NULL", "quarantine"), "t", &s).unwrap(),
        ];
        let v = judge(&rules, &b).unwrap();
        assert_eq!(v.counts, vec![(3, 1), (2, 2), (3, 1)]);
        assert_eq!(v.keep, vec![true, false, false, false]);
        assert_eq!(v.quarantined_by, vec![None, Some(2), None, None]);
        assert!(v.failure.is_none());
        let f = vec![Expectation::compile(&cfg("f", "n <> 3", "fail"), "t", &s).unwrap()];
        assert_eq!(judge(&f, &b).unwrap().failure, Some((0, 2)));
    }
}
