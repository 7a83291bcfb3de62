//! The bronze decoder on arbitrary bytes: it must return an event or a reason, never panic, and
//! whatever it accepts must keep its promises (payload is a JSON object whose field ranges point
//! at valid JSON values).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = "billing";
    if let Ok(d) = tributary_events::decode_event(data, source, 1 << 20) {
        let payload: serde_json::Value = serde_json::from_str(&d.payload).expect("payload is JSON");
        assert!(payload.is_object());
        for (_, r) in &d.payload_fields {
            let raw = &d.payload[r.start as usize..r.end as usize];
            serde_json::from_str::<serde_json::Value>(raw).expect("field range is a JSON value");
        }
        if let Some(rescued) = &d.rescued {
            assert!(serde_json::from_str::<serde_json::Value>(rescued).expect("rescued is JSON").is_object());
        }
    }
});
