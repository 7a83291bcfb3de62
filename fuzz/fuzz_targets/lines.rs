//! The landing line splitter on arbitrary bytes: lines are numbered from 1 in order, hold no
//! newline, and blank + non-blank lines together account for every line of the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let all: Vec<(usize, &[u8])> = tributary_events::lines::all_lines(data).collect();
    for (k, (n, l)) in all.iter().enumerate() {
        assert_eq!(*n, k + 1);
        assert!(!l.contains(&b'\n'));
    }
    let newlines = data.iter().filter(|b| **b == b'\n').count();
    let expect = if data.is_empty() { 0 } else if data.ends_with(b"\n") { newlines } else { newlines + 1 };
    assert_eq!(all.len(), expect);
    let kept = tributary_events::lines::lines(data).count();
    let blank = all.iter().filter(|(_, l)| tributary_events::lines::is_blank(l)).count();
    assert_eq!(kept + blank, all.len());
});
