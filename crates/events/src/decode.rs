//! The bronze decoder: one NDJSON line → typed envelope + the rest of the event, or a reason.
//!
//! Numbers are never re-encoded: the payload keeps each field's exact JSON text, so a decimal
//! like `"dbu": 0.1000001` stays exact all the way to gold.

use serde_json::value::RawValue;

/// Why a line cannot become a bronze row. Each maps to a quarantine reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    InvalidUtf8 { valid_up_to: usize },
    MalformedJson(String),
    NotAnObject,
    Oversized { bytes: usize, limit: usize },
    Empty,
}

impl Reject {
    pub fn code(&self) -> &'static str {
        match self {
            Reject::InvalidUtf8 { .. } => "invalid_utf8",
            Reject::MalformedJson(_) => "malformed_json",
            Reject::NotAnObject => "not_an_object",
            Reject::Oversized { .. } => "oversized",
            Reject::Empty => "empty",
        }
    }
    pub fn detail(&self) -> String {
        match self {
            Reject::InvalidUtf8 { valid_up_to } => {
                format!("invalid UTF-8 after byte {valid_up_to}")
            }
            Reject::MalformedJson(e) => format!("malformed JSON: {e}"),
            Reject::NotAnObject => "event is valid JSON but not an object".into(),
            Reject::Oversized { bytes, limit } => {
                format!("event of {bytes} bytes exceeds the {limit}-byte limit")
            }
            Reject::Empty => "empty line".into(),
        }
    }
}

/// A decoded event: the envelope typed, everything else kept as exact JSON text.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    pub event_id: Option<String>,
    /// Microseconds since the Unix epoch.
    pub event_time: Option<i64>,
    pub region: Option<String>,
    pub workspace_id: Option<String>,
    pub customer_id: Option<String>,
    pub egress_approved: Option<bool>,
    /// JSON object of the non-envelope fields, each with its original text.
    pub payload: String,
    /// JSON object of envelope fields that did not fit (wrong type, case clash, other source).
    pub rescued: Option<String>,
    /// The payload's fields: name and the byte range of its raw JSON value inside `payload`
    /// (so bronze can type them without parsing the event again).
    pub payload_fields: Vec<(String, std::ops::Range<u32>)>,
}

/// An object key: borrowed from the line when it has no escapes (the common case: no copy).
type Key<'a> = std::borrow::Cow<'a, str>;

struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Key::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key::Owned(v.to_string()))
    }
}

/// The top-level object's fields, sorted by key; of a key given twice the last value wins (the
/// rules of a `BTreeMap<String, &RawValue>`, without allocating a `String` per key).
pub struct Fields<'a>(pub Vec<(Key<'a>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// Parses a JSON object's top level; values stay raw text.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
    /// The raw value of `key` (binary search: the fields are sorted).
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok().map(|i| self.0[i].1)
    }
}

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v: Vec<(Key<'de>, &'de RawValue)> = Vec::with_capacity(map.size_hint().unwrap_or(32));
                while let Some(k) = map.next_key_seed(KeySeed)? {
                    let raw: &'de RawValue = map.next_value()?;
                    v.push((k, raw));
                }
                // Stable: equal keys keep their order, so the last of a run is the last given.
                v.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
                let mut out: Vec<(Key<'de>, &'de RawValue)> = Vec::with_capacity(v.len());
                for (k, raw) in v {
                    match out.last_mut() {
                        Some(last) if last.0.as_ref() == k.as_ref() => *last = (k, raw),
                        _ => out.push((k, raw)),
                    }
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

const ENVELOPE: &[&str] =
    &["event_id", "event_time", "source", "region", "workspace_id", "customer_id", "egress_approved"];

/// Appends `"key":raw` to a JSON object being built; returns the range of `raw` in `out`.
fn push_field(out: &mut String, key: &Key<'_>, raw: &RawValue) -> std::ops::Range<u32> {
    if out.len() > 1 {
        out.push(',');
    }
    match key {
        // Borrowed straight from the line: it had no escapes, and JSON strings hold no raw
        // control characters, so its quoted text is exactly what serde_json would write.
        std::borrow::Cow::Borrowed(k) => {
            out.push('"');
            out.push_str(k);
            out.push('"');
        }
        std::borrow::Cow::Owned(k) => out.push_str(&serde_json::to_string(k).unwrap_or_else(|_| "\"?\"".into())),
    }
    out.push(':');
    let start = out.len() as u32;
    out.push_str(raw.get());
    start..out.len() as u32
}

fn as_string(raw: &RawValue) -> Result<Option<String>, ()> {
    match raw.get() {
        "null" => Ok(None),
        t if t.starts_with('"') => serde_json::from_str::<String>(t).map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

/// Decodes one line (without its newline). `source` is the source the landing path or topic
/// names; an event claiming another source keeps the path's and has its claim rescued.
pub fn decode_event(line: &[u8], source: &str, max_bytes: usize) -> Result<Decoded, Reject> {
    if line.len() > max_bytes {
        return Err(Reject::Oversized { bytes: line.len(), limit: max_bytes });
    }
    let text = std::str::from_utf8(line).map_err(|e| Reject::InvalidUtf8 { valid_up_to: e.valid_up_to() })?;
    // A UTF-8 byte-order mark (a Windows producer's first line or message) is not content.
    let trimmed = text.trim();
    let trimmed = trimmed.strip_prefix('\u{feff}').unwrap_or(trimmed).trim_start();
    if trimmed.is_empty() {
        return Err(Reject::Empty);
    }
    if !trimmed.starts_with('{') {
        // Distinguish valid-but-not-object from garbage for a clearer reason.
        return match serde_json::from_str::<&RawValue>(trimmed) {
            Ok(_) => Err(Reject::NotAnObject),
            Err(e) => Err(Reject::MalformedJson(e.to_string())),
        };
    }
    let Fields(fields) = serde_json::from_str(trimmed).map_err(|e| Reject::MalformedJson(e.to_string()))?;
    // Raw values are not fully checked: a lone UTF-16 surrogate escape (`"\ude00"`) passes
    // them. Such lines are rare, so only lines with `\u` escapes pay for a full parse.
    if trimmed.contains("\\u") {
        serde_json::from_str::<serde_json::Value>(trimmed).map_err(|e| Reject::MalformedJson(e.to_string()))?;
    }
    let mut d = Decoded::default();
    let mut payload = String::with_capacity(trimmed.len() + 2);
    payload.push('{');
    let mut rescued = String::from("{");
    for (key, raw) in &fields {
        match key.as_ref() {
            "event_id" => match as_string(raw) {
                Ok(v) => d.event_id = v,
                Err(()) => {
                    push_field(&mut rescued, key, raw);
                }
            },
            "event_time" => {
                if raw.get() != "null" {
                    match crate::parse_event_time(raw) {
                        Some(t) => d.event_time = Some(t),
                        None => {
                            push_field(&mut rescued, key, raw);
                        }
                    }
                }
            }
            "source" => match as_string(raw) {
                Ok(Some(s)) if s == source => {}
                Ok(None) => {}
                _ => {
                    push_field(&mut rescued, key, raw);
                }
            },
            "region" => match as_string(raw) {
                Ok(v) => d.region = v,
                Err(()) => {
                    push_field(&mut rescued, key, raw);
                }
            },
            "workspace_id" => match as_string(raw) {
                Ok(v) => d.workspace_id = v,
                Err(()) => {
                    push_field(&mut rescued, key, raw);
                }
            },
            "customer_id" => match as_string(raw) {
                Ok(v) => d.customer_id = v,
                Err(()) => {
                    push_field(&mut rescued, key, raw);
                }
            },
            "egress_approved" => match raw.get() {
                "true" => d.egress_approved = Some(true),
                "false" => d.egress_approved = Some(false),
                "null" => {}
                _ => {
                    push_field(&mut rescued, key, raw);
                }
            },
            other => {
                if ENVELOPE.iter().any(|e| e.eq_ignore_ascii_case(other)) {
                    // Case clash with an envelope field: never silently merged.
                    push_field(&mut rescued, key, raw);
                } else {
                    let range = push_field(&mut payload, key, raw);
                    d.payload_fields.push((key.to_string(), range));
                }
            }
        }
    }
    payload.push('}');
    rescued.push('}');
    d.payload = payload;
    d.rescued = if rescued.len() > 2 { Some(rescued) } else { None };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn keys_sorted_last_duplicate_wins_escapes_kept() {
        let d = decode_event(br#"{"b":1,"a":2,"b":3,"k\"q":4,"\u00e9t\u00e9":5,"z":{"y":[1]}}"#, "job", 1024).unwrap();
        assert_eq!(d.payload, r#"{"a":2,"b":3,"k\"q":4,"z":{"y":[1]},"été":5}"#);
        let names: Vec<&str> = d.payload_fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "k\"q", "z", "été"]);
        // The same result as the BTreeMap the decoder used before.
        let m: BTreeMap<String, &RawValue> = serde_json::from_str(&d.payload).unwrap();
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn decodes_envelope_and_keeps_exact_numbers() {
        let line = br#"{"event_id":"e1","event_time":"2026-11-01T00:00:00Z","source":"billing","region":"r1","workspace_id":"w","customer_id":"c","egress_approved":true,"dbu":0.1000000000000000055511151231257827,"sku":"X"}"#;
        let d = decode_event(line, "billing", 1 << 20).unwrap();
        assert_eq!(d.event_id.as_deref(), Some("e1"));
        assert_eq!(d.event_time, Some(1_793_491_200_000_000));
        assert_eq!(d.egress_approved, Some(true));
        assert_eq!(d.payload, r#"{"dbu":0.1000000000000000055511151231257827,"sku":"X"}"#);
        let fields: Vec<(&str, &str)> =
            d.payload_fields.iter().map(|(k, r)| (k.as_str(), &d.payload[r.start as usize..r.end as usize])).collect();
        assert_eq!(fields, vec![("dbu", "0.1000000000000000055511151231257827"), ("sku", "\"X\"")]);
        assert_eq!(d.rescued, None);
    }

    #[test]
    fn epoch_millis_event_time() {
        let d = decode_event(br#"{"event_id":"e","event_time":1761955200123}"#, "job", 1024).unwrap();
        assert_eq!(d.event_time, Some(1_761_955_200_123_000));
    }

    #[test]
    fn wrong_types_and_case_clashes_are_rescued_not_coerced() {
        let d =
            decode_event(br#"{"event_id":42,"Event_Id":"x","event_time":"yesterday","source":"audit"}"#, "job", 1024)
                .unwrap();
        assert_eq!(d.event_id, None);
        assert_eq!(d.event_time, None);
        let r: serde_json::Value = serde_json::from_str(d.rescued.as_deref().unwrap()).unwrap();
        assert_eq!(r["event_id"], 42);
        assert_eq!(r["Event_Id"], "x");
        assert_eq!(r["event_time"], "yesterday");
        assert_eq!(r["source"], "audit");
    }

    #[test]
    fn rejects_with_reasons() {
        assert_eq!(decode_event(b"{\"a\":", "job", 1024).unwrap_err().code(), "malformed_json");
        assert_eq!(decode_event(b"[1,2]", "job", 1024).unwrap_err().code(), "not_an_object");
        assert_eq!(decode_event(b"{\"a\":\"\xff\"}", "job", 1024).unwrap_err().code(), "invalid_utf8");
        assert_eq!(decode_event(&[b'{'; 100], "job", 64).unwrap_err().code(), "oversized");
        assert_eq!(decode_event(b"   ", "job", 64).unwrap_err().code(), "empty");
        let bom = decode_event(b"\xEF\xBB\xBF{\"event_id\":\"x\"}", "job", 64).unwrap();
        assert_eq!(bom.event_id.as_deref(), Some("x"), "a UTF-8 byte-order mark is skipped");
        assert_eq!(decode_event(b"nope", "job", 64).unwrap_err().code(), "malformed_json");
        // Found by the fuzz property: a lone surrogate escape passes raw-value parsing.
        assert_eq!(decode_event(br#"{"a":"\ude00"}"#, "job", 64).unwrap_err().code(), "malformed_json");
        assert!(decode_event(br#"{"a":"\ud83d\ude00"}"#, "job", 64).is_ok());
    }

    /// The same property as the cargo-fuzz target (`make fuzz`), on stable, in the suite:
    /// seeded random bytes and mutations of valid events never panic, and accepted events keep
    /// the decoder's promises.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = crate::rng::Rng::new(7);
        let seeds: [&[u8]; 3] = [
            br#"{"event_id":"e1","event_time":"2026-11-01T00:00:00Z","source":"billing","dbu":0.5,"a":{"b":[1,"x"]}}"#,
            br#"{"event_id":42,"Event_Id":"x","event_time":1761955200123,"egress_approved":"yes","\u00e9":"\ud83d\ude00"}"#,
            br#"[1,2,{"a":null}]"#,
        ];
        const TOKENS: &[u8] = br#"{}[]",:\0e-.u"#;
        for i in 0..60_000u64 {
            let mut buf: Vec<u8> = if i % 3 == 0 {
                (0..rng.below(200)).map(|_| rng.below(256) as u8).collect()
            } else {
                seeds[(i % 3) as usize].to_vec()
            };
            for _ in 0..rng.below(6) {
                if buf.is_empty() {
                    break;
                }
                let at = rng.below(buf.len() as u64) as usize;
                match rng.below(3) {
                    0 => buf[at] = rng.below(256) as u8,
                    1 => {
                        buf.remove(at);
                    }
                    _ => buf.insert(at, TOKENS[rng.below(TOKENS.len() as u64) as usize]),
                }
            }
            if let Ok(d) = decode_event(&buf, "billing", 1 << 16) {
                let parsed = serde_json::from_str::<BTreeMap<String, &RawValue>>(&d.payload);
                assert!(parsed.is_ok(), "{:?} -> payload {:?}: {parsed:?}", String::from_utf8_lossy(&buf), d.payload);
                assert!(serde_json::from_str::<serde::de::IgnoredAny>(&d.payload).is_ok());
                for (_, r) in &d.payload_fields {
                    let raw = &d.payload[r.start as usize..r.end as usize];
                    assert!(serde_json::from_str::<serde::de::IgnoredAny>(raw).is_ok(), "{raw:?} in {:?}", d.payload);
                }
            }
        }
    }

    #[test]
    fn null_event_id_is_kept_for_silver_to_judge() {
        let d = decode_event(br#"{"event_id":null,"event_time":1}"#, "job", 1024).unwrap();
        assert_eq!(d.event_id, None);
        assert!(d.rescued.is_none());
    }
}
