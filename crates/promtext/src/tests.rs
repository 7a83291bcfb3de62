use super::*;
use proptest::prelude::*;

const PROM: &str = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# A histogram, which has a pretty complex representation in the text format:
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320

# Finally a summary, which has a complex representation, too:
# HELP rpc_duration_seconds A summary of the RPC duration in seconds.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds{quantile="0.99"} NaN
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
"#;

#[test]
fn the_reference_example_of_the_prometheus_format() {
    let e = parse(PROM.as_bytes(), Format::Prometheus);
    assert!(e.errors.is_empty(), "{:?}", e.errors);
    assert_eq!(e.samples.len(), 13);
    let s = &e.samples[0];
    assert_eq!((s.family.as_str(), s.value, s.timestamp_ms), ("http_requests_total", 1027.0, Some(1395066363000)));
    assert_eq!(s.labels, vec![("method".into(), "post".into()), ("code".into(), "200".into())]);
    let ms = &e.samples[2];
    assert_eq!(ms.labels[0].1, r"C:\DIR\FILE.TXT");
    assert_eq!(ms.labels[1].1, "Cannot find file:\n\"FILE.TXT\"");
    assert_eq!(e.samples[4].value, f64::INFINITY);
    assert_eq!(e.samples[4].timestamp_ms, Some(-3982045));
    let hist: Vec<&str> = e.samples[5..9].iter().map(|s| s.family.as_str()).collect();
    assert_eq!(hist, ["http_request_duration_seconds"; 4]);
    assert!(e.samples[10].value.is_nan());
    assert_eq!(e.samples[12].family, "rpc_duration_seconds");
    let h = e.families.iter().find(|f| f.name == "http_request_duration_seconds").unwrap();
    assert_eq!(h.kind, MetricType::Histogram);
    assert_eq!(h.help.as_deref(), Some("A histogram of the request duration."));
}

#[test]
fn openmetrics_counters_units_exemplars_and_eof() {
    let text = "# TYPE foo counter\n# UNIT foo seconds\n# HELP foo Foo.\nfoo_total 17.0 1520879607.789 # {trace_id=\"KOO5S4vxi0o\"} 0.67\nfoo_created 1520430000.123\n# TYPE bar info\nbar_info{version=\"1.2\"} 1\n# EOF\n";
    let e = parse(text.as_bytes(), Format::OpenMetrics);
    assert!(e.errors.is_empty(), "{:?}", e.errors);
    assert!(e.eof);
    assert_eq!(e.samples[0].family, "foo");
    assert_eq!(e.samples[0].timestamp_ms, Some(1520879607789), "float seconds -> ms");
    assert_eq!(e.samples[1].family, "foo");
    assert_eq!(e.samples[2].family, "bar");
    assert_eq!(e.families[0].unit.as_deref(), Some("seconds"));
    // Truncated (no EOF) and content after EOF are errors; the samples before are kept.
    let cut = parse(b"# TYPE a gauge\na 1\n", Format::OpenMetrics);
    assert_eq!(cut.samples.len(), 1);
    assert!(cut.errors.iter().any(|e| e.message.contains("truncated")));
    let after = parse(b"a 1\n# EOF\nb 2\n", Format::OpenMetrics);
    assert_eq!(after.samples.len(), 1);
    assert_eq!(after.errors, vec![LineError { line: 3, message: "content after # EOF".into() }]);
}

#[test]
fn bad_lines_are_reported_with_their_line_and_skipped() {
    let mut text =
        "ok 1\n1bad 2\nx{a=\"1\",a=\"2\"} 3\ny{a=\"\\q\"} 4\nz{a=\"unterminated} 5\nw 0x10\nv 1 2 3\nu{é=\"1\"} 1\nt\n"
            .as_bytes()
            .to_vec();
    text.extend_from_slice(b"\xff 1\nlast{a=\"1\",} 7\n");
    let e = parse(&text, Format::Prometheus);
    let names: Vec<&str> = e.samples.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ok", "last"], "a trailing comma is allowed in the Prometheus format");
    let lines: Vec<usize> = e.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8, 9, 10], "{:?}", e.errors);
    assert!(e.errors[1].message.contains("duplicate label a"));
    assert!(e.errors[2].message.contains("invalid escape"));
    // OpenMetrics is stricter: trailing comma, blank lines, unknown comments.
    let om = parse(b"a{b=\"1\",} 1\n\n# foo\n# EOF\n", Format::OpenMetrics);
    assert_eq!(om.errors.len(), 3, "{:?}", om.errors);
}

#[test]
fn series_key_ignores_label_order() {
    let a = parse(b"m{x=\"1\",y=\"2\"} 1\nm{y=\"2\",x=\"1\"} 2\n", Format::Prometheus);
    assert_eq!(a.samples[0].series_key(), a.samples[1].series_key());
    assert_eq!(a.samples[0].series_key(), "m{x=\"1\",y=\"2\"}");
}

fn label_value() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9 \\\\\"\n{}=,#é]{0,12}").unwrap()
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::NAN),
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        (-1_000_000i64..1_000_000).prop_map(|v| v as f64),
    ]
}

proptest! {
    /// Whatever we render, we read back exactly (escapes, special values, timestamps).
    #[test]
    fn render_then_parse_is_exact(
        samples in proptest::collection::vec(
            ("[a-z_][a-z0-9_]{0,8}", proptest::collection::btree_map("[a-z_][a-z0-9_]{0,5}", label_value(), 0..4), value(), proptest::option::of(any::<i64>())),
            1..8,
        )
    ) {
        let mut samples: Vec<Sample> = samples
            .into_iter()
            .map(|(name, labels, value, ts)| Sample {
                family: name.clone(),
                name,
                labels: labels.into_iter().collect(),
                value,
                timestamp_ms: ts,
            })
            .collect();
        let text = render(&[], &samples, true);
        let mut back = parse(text.as_bytes(), Format::Prometheus);
        prop_assert!(back.errors.is_empty(), "{:?}\n{}", back.errors, text);
        // `render` groups by family: compare in a canonical (stable) order.
        samples.sort_by(|a, b| a.name.cmp(&b.name));
        back.samples.sort_by(|a, b| a.name.cmp(&b.name));
        prop_assert_eq!(back.samples.len(), samples.len());
        for (a, b) in samples.iter().zip(&back.samples) {
            prop_assert_eq!(&a.name, &b.name);
            prop_assert_eq!(&a.labels, &b.labels);
            prop_assert!(a.value.to_bits() == b.value.to_bits() || (a.value.is_nan() && b.value.is_nan()));
            prop_assert_eq!(a.timestamp_ms, b.timestamp_ms);
        }
    }

    /// Arbitrary bytes: never a panic, and every line is either a sample, metadata or an error.
    #[test]
    fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        for f in [Format::Prometheus, Format::OpenMetrics] {
            let _ = parse(&data, f);
        }
    }
}
