//! The bronze decoder on arbitrary bytes: it must return an event or a reason, never panic, and
//! whatever it accepts must keep its promises (payload is a JSON object whose field ranges point
//! at valid JSON values).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = "billing";
    if let Ok(d) = tributary_events::decode_event(data, source, 1 << 20) {
        // What silver relies on: the payload is a JSON object of raw values (JSON numbers have
        // no range limit, so 1e400 is valid JSON and stays exact text).
        serde_json::from_str::<std::collections::BTreeMap<String, &serde_json::value::RawValue>>(&d.payload)
            .expect("payload is a JSON object");
        serde_json::from_str::<serde::de::IgnoredAny>(&d.payload).expect("payload is JSON");
        for (_, r) in &d.payload_fields {
            let raw = &d.payload[r.start as usize..r.end as usize];
            serde_json::from_str::<serde::de::IgnoredAny>(raw).expect("field range is a JSON value");
        }
        if let Some(rescued) = &d.rescued {
            serde_json::from_str::<std::collections::BTreeMap<String, &serde_json::value::RawValue>>(rescued)
                .expect("rescued is a JSON object");
        }
    }
});
