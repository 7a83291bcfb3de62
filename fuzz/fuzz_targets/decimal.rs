//! The exact-decimal parser on arbitrary text: a value or a reason, never a panic; a value is
//! exact (re-rendered at scale 9 and parsed again it is the same) and within precision.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(v) = tributary_events::decimal::parse(text, 38, 9) {
        assert!(v.unsigned_abs() < 10u128.pow(38), "{text} -> {v} exceeds precision 38");
        let digits = format!("{:010}", v.unsigned_abs());
        let (i, f) = digits.split_at(digits.len() - 9);
        let plain = format!("{}{i}.{f}", if v < 0 { "-" } else { "" });
        assert_eq!(tributary_events::decimal::parse(&plain, 38, 9), Ok(v), "{text} -> {plain}");
    }
});
