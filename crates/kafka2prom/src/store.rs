//! The latest sample of every series of the partitions this member owns.
//!
//! A series is identified by the dump's emitting instance plus its name and sorted labels; the
//! log-exporter keys every message by instance, so all dumps of an instance (and so every value
//! of its series) land in one partition, in order. Rules, each counted:
//! - **never an older value after a newer one**: per series the timestamp of the dump that set it
//!   is kept; a sample from an older dump is dropped (`older_dropped`), an equal one (the same dump
//!   redelivered after a rebalance) replaces it;
//! - **revoke**: `evict_partition` forgets every series of a partition at once, before the
//!   rebalance completes, so two members never expose the same series and a new owner never
//!   regresses one;
//! - **TTL**: a series not refreshed for `ttl_ms` (wall clock) is dropped (`expired`), so the
//!   series of an instance that went away do not stay frozen on `/metrics`.
//!
//! Exposed samples carry an `instance` label (the emitter's) and, only if configured, the dump's
//! timestamp (see the README on Prometheus' `honor_timestamps`).

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use std::hash::BuildHasher;
use std::sync::OnceLock;
use tributary_promtext::{Exposition, Family, Format, LineError, MetricType};

/// One series: its identity rendered as it is exposed (`name{label="value",...}` with labels
/// sorted by name, `instance` among them), the interned id of its family, the latest value and
/// when it was set. About 48 bytes plus the key.
#[derive(Debug)]
struct Entry {
    key: Box<str>,
    family: u32,
    value: f64,
    dump_ts_ms: i64,
    seen_at_ms: i64,
}

/// What one dump did to the store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub updated: u64,
    pub older_dropped: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub updated: u64,
    pub older_dropped: u64,
    pub evicted: u64,
    pub expired: u64,
}

/// The process-wide seeded hasher: series keys come from producers we do not control, so the
/// hash is keyed (no crafted collisions), and one seed lets [`prepare`] hash outside the lock.
fn hasher() -> &'static DefaultHashBuilder {
    static H: OnceLock<DefaultHashBuilder> = OnceLock::new();
    H.get_or_init(DefaultHashBuilder::default)
}

struct PreparedSample {
    /// End of its key in `Prepared::keys` (it starts where the previous one ends).
    key_end: u32,
    hash: u64,
    /// Index into `Prepared::families`.
    family: u32,
    value: f64,
}

/// A dump made ready for the store outside its lock: every series key rendered once into one
/// buffer and hashed, families resolved per dump (not per sample).
pub struct Prepared {
    /// Declared families, then `Unknown` ones for samples without a declaration (flagged true:
    /// they never override what another dump declared).
    families: Vec<(Family, bool)>,
    keys: String,
    samples: Vec<PreparedSample>,
    pub errors: Vec<LineError>,
}

/// Parses one dump body of `instance` and renders each series' key (the emitter's `instance`
/// label replaces any the dump carries). The per-sample work, done before taking the lock.
pub fn prepare(instance: &str, body: &[u8], format: Format) -> Prepared {
    let mut instance_escaped = String::with_capacity(instance.len());
    tributary_promtext::escape_label_value(&mut instance_escaped, instance);
    let mut keys = String::with_capacity(body.len() + body.len() / 4);
    let mut samples = Vec::new();
    // Samples without a declared family: family name -> index among the undeclared.
    let mut undeclared: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut undeclared_list: Vec<String> = Vec::new();
    let mut sorted: Vec<(&str, &str)> = Vec::new();
    let e: Exposition = tributary_promtext::parse_each(body, format, |s, _families| {
        sorted.clear();
        sorted.extend(s.labels.iter().filter(|(k, _)| *k != "instance").copied());
        sorted.push(("instance", instance_escaped.as_str()));
        if !sorted.is_sorted_by(|a, b| a.0 <= b.0) {
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        let start = keys.len();
        keys.push_str(s.name);
        for (i, (k, v)) in sorted.iter().enumerate() {
            keys.push(if i == 0 { '{' } else { ',' });
            keys.push_str(k);
            keys.push_str("=\"");
            keys.push_str(v); // as written: escapes checked by the parser, canonical already
            keys.push('"');
        }
        keys.push('}');
        let family = match s.family {
            Some(i) => i as u32,
            None => {
                let n = undeclared.len() as u32;
                let id = *undeclared.entry(s.name.to_string()).or_insert_with(|| {
                    undeclared_list.push(s.name.to_string());
                    n
                });
                UNDECLARED | id
            }
        };
        let hash = hasher().hash_one(&keys[start..]);
        samples.push(PreparedSample { key_end: keys.len() as u32, hash, family, value: s.value });
    });
    let declared = e.families.len() as u32;
    let mut families: Vec<(Family, bool)> = e.families.into_iter().map(|f| (f, false)).collect();
    families.extend(
        undeclared_list
            .into_iter()
            .map(|name| (Family { name, kind: MetricType::Unknown, help: None, unit: None }, true)),
    );
    for s in &mut samples {
        if s.family & UNDECLARED != 0 {
            s.family = declared + (s.family & !UNDECLARED);
        }
    }
    Prepared { families, keys, samples, errors: e.errors }
}

/// Marks a sample's family index as one among the undeclared (resolved after the parse, once
/// the number of declared families is known).
const UNDECLARED: u32 = 1 << 31;

#[derive(Default)]
pub struct Store {
    /// partition -> its series (hashed by key with [`hasher`])
    partitions: HashMap<i32, HashTable<Entry>>,
    /// family name -> interned id; id -> metadata (type, help) as last seen
    family_ids: HashMap<String, u32>,
    families: HashMap<u32, Family>,
    next_family: u32,
    pub counters: Counters,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one dump of `instance` taken at `dump_ts_ms`, read from `partition`.
    #[cfg(test)]
    pub fn apply(&mut self, partition: i32, instance: &str, dump_ts_ms: i64, body: &str, now_ms: i64) -> Applied {
        let p = prepare(instance, body.as_bytes(), Format::OpenMetrics);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        self.apply_prepared(partition, dump_ts_ms, p, now_ms)
    }

    fn intern_family(&mut self, f: Family, undeclared: bool) -> u32 {
        if let Some(&id) = self.family_ids.get(&f.name) {
            let old = self.families.get_mut(&id).expect("interned");
            if !undeclared {
                // A dump without HELP keeps the help text an earlier dump gave.
                let help = f.help.or_else(|| old.help.take());
                *old = Family { help, ..f };
            }
            return id;
        }
        let id = self.next_family;
        self.next_family = self.next_family.wrapping_add(1);
        self.family_ids.insert(f.name.clone(), id);
        self.families.insert(id, f);
        id
    }

    /// The part of applying a dump that needs the store: map updates only (the caller holds the
    /// lock scrapes wait on; the per-sample work is in [`prepare`]).
    pub fn apply_prepared(&mut self, partition: i32, dump_ts_ms: i64, p: Prepared, now_ms: i64) -> Applied {
        use hashbrown::hash_table::Entry as Slot;
        let mut out = Applied::default();
        let ids: Vec<u32> = p.families.into_iter().map(|(f, undeclared)| self.intern_family(f, undeclared)).collect();
        let series = self.partitions.entry(partition).or_default();
        series.reserve(p.samples.len().saturating_sub(series.len()), |e| hasher().hash_one(&*e.key));
        let mut start = 0usize;
        for s in p.samples {
            let key = &p.keys[start..s.key_end as usize];
            start = s.key_end as usize;
            let family = ids[s.family as usize];
            match series.entry(s.hash, |e| &*e.key == key, |e| hasher().hash_one(&*e.key)) {
                Slot::Occupied(o) if o.get().dump_ts_ms > dump_ts_ms => out.older_dropped += 1,
                Slot::Occupied(mut o) => {
                    let e = o.get_mut();
                    (e.family, e.value, e.dump_ts_ms, e.seen_at_ms) = (family, s.value, dump_ts_ms, now_ms);
                    out.updated += 1;
                }
                Slot::Vacant(v) => {
                    v.insert(Entry { key: key.into(), family, value: s.value, dump_ts_ms, seen_at_ms: now_ms });
                    out.updated += 1;
                }
            }
        }
        self.counters.updated += out.updated;
        self.counters.older_dropped += out.older_dropped;
        out
    }

    /// Forgets every series of `partition` (revoked); returns how many.
    pub fn evict_partition(&mut self, partition: i32) -> u64 {
        let n = self.partitions.remove(&partition).map(|m| m.len() as u64).unwrap_or(0);
        self.counters.evicted += n;
        n
    }

    /// Drops series not refreshed since `now_ms - ttl_ms`, and families no series uses any
    /// more; returns how many series.
    pub fn expire(&mut self, now_ms: i64, ttl_ms: i64) -> u64 {
        let mut n = 0;
        let mut used = std::collections::HashSet::new();
        for series in self.partitions.values_mut() {
            let before = series.len();
            series.retain(|e| now_ms - e.seen_at_ms <= ttl_ms);
            n += (before - series.len()) as u64;
            used.extend(series.iter().map(|e| e.family));
        }
        self.families.retain(|id, _| used.contains(id));
        self.family_ids.retain(|_, id| used.contains(id));
        self.counters.expired += n;
        n
    }

    pub fn series(&self) -> usize {
        self.partitions.values().map(|m| m.len()).sum()
    }

    /// The latest value of a series (by its exposed identity, labels sorted, `instance`
    /// included) and the timestamp of the dump that set it.
    pub fn get(&self, key: &str) -> Option<(f64, i64)> {
        let h = hasher().hash_one(key);
        self.partitions.values().find_map(|m| m.find(h, |e| &*e.key == key)).map(|e| (e.value, e.dump_ts_ms))
    }

    /// Every series in the Prometheus text format, grouped by family (families by name, series
    /// by key); with `timestamps`, each sample carries its dump's timestamp.
    pub fn render(&self, timestamps: bool) -> String {
        let mut all: Vec<(&str, &Entry)> = Vec::with_capacity(self.series());
        let mut bytes = 0;
        for e in self.partitions.values().flat_map(|m| m.iter()) {
            let name = self.families.get(&e.family).map(|f| f.name.as_str()).unwrap_or("");
            bytes += e.key.len() + 24;
            all.push((name, e));
        }
        all.sort_unstable_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.key.cmp(&b.1.key)));
        let mut out = String::with_capacity(bytes + self.families.len() * 64);
        let mut current: Option<u32> = None;
        for (_, e) in all {
            if current != Some(e.family) {
                current = Some(e.family);
                if let Some(f) = self.families.get(&e.family) {
                    tributary_promtext::render_family_header(&mut out, f);
                }
            }
            out.push_str(&e.key);
            out.push(' ');
            tributary_promtext::push_value(&mut out, e.value);
            if timestamps {
                use std::fmt::Write as _;
                let _ = write!(out, " {}", e.dump_ts_ms);
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_dump_never_replaces_a_newer_value() {
        let mut s = Store::new();
        let key = "up{instance=\"i1\",job=\"a\"}";
        s.apply(0, "i1", 2000, "# TYPE up gauge\nup{job=\"a\"} 2\n# EOF\n", 10);
        let late = s.apply(0, "i1", 1000, "# TYPE up gauge\nup{job=\"a\"} 1\n# EOF\n", 11);
        assert_eq!(late, Applied { updated: 0, older_dropped: 1 });
        assert_eq!(s.get(key), Some((2.0, 2000)));
        // The same dump redelivered (after a rebalance) is applied again, harmlessly.
        s.apply(0, "i1", 2000, "# TYPE up gauge\nup{job=\"a\"} 2\n# EOF\n", 12);
        s.apply(0, "i1", 3000, "# TYPE up gauge\nup{job=\"a\"} 3\n# EOF\n", 13);
        assert_eq!(s.get(key), Some((3.0, 3000)));
        assert_eq!(s.counters.older_dropped, 1);
    }

    #[test]
    fn instances_never_collide_and_a_revoke_evicts_its_partition_only() {
        let mut s = Store::new();
        let d = "# TYPE rows counter\nrows_total{stage=\"bronze\"} 5\n# EOF\n";
        s.apply(0, "pod-a", 1, d, 0);
        s.apply(1, "pod-b", 1, d, 0);
        assert_eq!(s.series(), 2, "the same series name from two instances is two series");
        assert_eq!(s.evict_partition(0), 1);
        assert_eq!(s.series(), 1);
        let text = s.render(false);
        assert!(text.contains("rows_total{instance=\"pod-b\",stage=\"bronze\"} 5.0"), "{text}");
        // The Prometheus text format names the counter family like its sample.
        assert!(text.starts_with("# TYPE rows_total counter\n"), "{text}");
    }

    #[test]
    fn series_not_refreshed_expire_after_the_ttl_and_so_do_their_families() {
        let mut s = Store::new();
        s.apply(0, "i", 1, "a 1\n# TYPE b gauge\nb 2\n# EOF\n", 1_000);
        s.apply(0, "i", 2, "a 1\n# EOF\n", 60_000);
        assert_eq!(s.expire(90_000, 60_000), 1, "b was last seen at 1 s");
        assert_eq!(s.series(), 1);
        let text = s.render(true);
        assert_eq!(text, "# TYPE a untyped\na{instance=\"i\"} 1.0 2\n");
        assert!(!s.family_ids.contains_key("b"), "a family without series is forgotten");
    }

    #[test]
    fn keys_are_canonical_whatever_the_label_order_escapes_or_instance_label_of_the_input() {
        let mut s = Store::new();
        // A dump's own `instance` label is replaced by the emitter's; label order does not
        // make another series; escaped values are kept as written (already canonical).
        s.apply(0, "pod\"1", 1, "x{b=\"2\",instance=\"spoofed\",a=\"q\\\"\\\\\\n\"} 1\n# EOF\n", 0);
        s.apply(0, "pod\"1", 2, "x{a=\"q\\\"\\\\\\n\",b=\"2\"} 7\n# EOF\n", 0);
        assert_eq!(s.series(), 1);
        assert_eq!(s.get("x{a=\"q\\\"\\\\\\n\",b=\"2\",instance=\"pod\\\"1\"}"), Some((7.0, 2)));
        let text = s.render(false);
        let back = tributary_promtext::parse(text.as_bytes(), Format::Prometheus);
        assert!(back.errors.is_empty(), "{:?}\n{text}", back.errors);
        let labels = &back.samples[0].labels;
        assert!(labels.contains(&("a".into(), "q\"\\\n".into())), "{labels:?}");
        assert!(labels.contains(&("instance".into(), "pod\"1".into())), "{labels:?}");
        assert!(!text.contains("spoofed"), "{text}");
    }

    #[test]
    fn a_histogram_renders_as_one_family_and_help_survives_a_dump_without_it() {
        let mut s = Store::new();
        let with_help = "# HELP lat Latency.\n# TYPE lat histogram\nlat_bucket{le=\"1\"} 1\nlat_bucket{le=\"+Inf\"} 2\nlat_sum 3\nlat_count 2\nzzz 1\n# EOF\n";
        s.apply(0, "i", 1, with_help, 0);
        s.apply(0, "i", 2, "# TYPE lat histogram\nlat_count 5\n# EOF\n", 0);
        let text = s.render(false);
        assert_eq!(text.matches("# TYPE lat histogram").count(), 1, "{text}");
        assert!(text.starts_with("# HELP lat Latency.\n# TYPE lat histogram\n"), "{text}");
        assert!(text.contains("lat_count{instance=\"i\"} 5.0\n"), "{text}");
        assert!(text.contains("lat_bucket{instance=\"i\",le=\"+Inf\"} 2.0\n"), "{text}");
        let back = tributary_promtext::parse(text.as_bytes(), Format::Prometheus);
        assert!(back.errors.is_empty(), "{:?}", back.errors);
        assert_eq!(back.samples.len(), 5);
        assert!(back.samples[..4].iter().all(|x| x.family == "lat"), "{text}");
    }
}
