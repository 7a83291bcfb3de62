//! The metrics bridge's Prometheus/OpenMetrics parser on arbitrary bytes: never a panic, and
//! whatever it reads renders to text that parses back to the same samples.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_promtext::{Format, parse, render};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Prometheus, Format::OpenMetrics] {
        let mut e = parse(data, format);
        let text = render(&e.families, &e.samples, true);
        let mut back = parse(text.as_bytes(), Format::Prometheus);
        // `render` groups samples by family: compare in a canonical (stable) order.
        let key = |s: &tributary_promtext::Sample| (s.name.clone(), s.labels.clone(), s.timestamp_ms, s.value.to_bits());
        e.samples.sort_by_key(key);
        back.samples.sort_by_key(key);
        assert!(back.errors.is_empty(), "{:?}\n{text}", back.errors);
        assert_eq!(back.samples.len(), e.samples.len());
        for (a, b) in e.samples.iter().zip(&back.samples) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.labels, b.labels);
            assert!(a.value.to_bits() == b.value.to_bits() || (a.value.is_nan() && b.value.is_nan()));
            assert_eq!(a.timestamp_ms, b.timestamp_ms);
        }
    }
});
