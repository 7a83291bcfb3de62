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

use std::collections::{BTreeMap, HashMap};
use tributary_promtext::{Exposition, Family, MetricType, Sample};

#[derive(Debug, Clone)]
struct Entry {
    family: String,
    sample: Sample,
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

/// A dump made ready for the store: each sample labelled with its instance and keyed by its
/// series identity.
pub struct Prepared {
    pub families: Vec<Family>,
    pub samples: Vec<(String, Sample)>,
}

/// The per-sample work of applying a dump, done before taking the store's lock.
pub fn prepare(instance: &str, e: Exposition) -> Prepared {
    let samples = e
        .samples
        .into_iter()
        .map(|mut sample| {
            sample.labels.retain(|(k, _)| k != "instance");
            sample.labels.push(("instance".into(), instance.to_string()));
            (sample.series_key(), sample)
        })
        .collect();
    Prepared { families: e.families, samples }
}

#[derive(Debug, Default)]
pub struct Store {
    /// partition -> series identity -> entry
    partitions: HashMap<i32, HashMap<String, Entry>>,
    /// family name -> metadata (type, help) as last seen
    families: HashMap<String, Family>,
    pub counters: Counters,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one dump of `instance` taken at `dump_ts_ms`, read from `partition`.
    pub fn apply(&mut self, partition: i32, instance: &str, dump_ts_ms: i64, e: &Exposition, now_ms: i64) -> Applied {
        self.apply_prepared(partition, dump_ts_ms, prepare(instance, e.clone()), now_ms)
    }

    /// The part of [`Store::apply`] that needs the store: map updates only (the caller holds the
    /// lock scrapes wait on; the per-sample work is in [`prepare`]).
    pub fn apply_prepared(&mut self, partition: i32, dump_ts_ms: i64, p: Prepared, now_ms: i64) -> Applied {
        use std::collections::hash_map::Entry as Slot;
        let mut out = Applied::default();
        for f in p.families {
            // A dump without HELP keeps the help text an earlier dump gave.
            let help = f.help.clone().or_else(|| self.families.get(&f.name).and_then(|o| o.help.clone()));
            self.families.insert(f.name.clone(), Family { help, ..f });
        }
        let series = self.partitions.entry(partition).or_default();
        series.reserve(p.samples.len().saturating_sub(series.len()));
        for (key, sample) in p.samples {
            let entry = Entry { family: sample.family.clone(), sample, dump_ts_ms, seen_at_ms: now_ms };
            match series.entry(key) {
                Slot::Occupied(o) if o.get().dump_ts_ms > dump_ts_ms => out.older_dropped += 1,
                Slot::Occupied(mut o) => {
                    *o.get_mut() = entry;
                    out.updated += 1;
                }
                Slot::Vacant(v) => {
                    v.insert(entry);
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

    /// Drops series not refreshed since `now_ms - ttl_ms`; returns how many.
    pub fn expire(&mut self, now_ms: i64, ttl_ms: i64) -> u64 {
        let mut n = 0;
        for series in self.partitions.values_mut() {
            let before = series.len();
            series.retain(|_, e| now_ms - e.seen_at_ms <= ttl_ms);
            n += (before - series.len()) as u64;
        }
        self.counters.expired += n;
        n
    }

    pub fn series(&self) -> usize {
        self.partitions.values().map(|m| m.len()).sum()
    }

    /// The latest value of a series (by identity, `instance` label included).
    pub fn get(&self, key: &str) -> Option<(f64, i64)> {
        self.partitions.values().find_map(|m| m.get(key)).map(|e| (e.sample.value, e.dump_ts_ms))
    }

    /// Every series in the Prometheus text format, grouped by family; with `timestamps`, each
    /// sample carries its dump's timestamp.
    pub fn render(&self, timestamps: bool) -> String {
        let mut by_family: BTreeMap<&str, Vec<(&String, &Entry)>> = BTreeMap::new();
        for (k, e) in self.partitions.values().flat_map(|m| m.iter()) {
            by_family.entry(e.family.as_str()).or_default().push((k, e));
        }
        let mut out = String::new();
        for (name, mut entries) in by_family {
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let family = self.families.get(name).cloned().unwrap_or(Family {
                name: name.to_string(),
                kind: MetricType::Unknown,
                help: None,
                unit: None,
            });
            tributary_promtext::render_family_header(&mut out, &family);
            for (_, e) in entries {
                let mut s = e.sample.clone();
                s.timestamp_ms = Some(e.dump_ts_ms);
                tributary_promtext::render_sample(&mut out, &s, timestamps);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_promtext::{Format, parse};

    fn dump(text: &str) -> Exposition {
        let e = parse(text.as_bytes(), Format::OpenMetrics);
        assert!(e.errors.is_empty(), "{:?}", e.errors);
        e
    }

    #[test]
    fn an_older_dump_never_replaces_a_newer_value() {
        let mut s = Store::new();
        let key = "up{instance=\"i1\",job=\"a\"}";
        s.apply(0, "i1", 2000, &dump("# TYPE up gauge\nup{job=\"a\"} 2\n# EOF\n"), 10);
        let late = s.apply(0, "i1", 1000, &dump("# TYPE up gauge\nup{job=\"a\"} 1\n# EOF\n"), 11);
        assert_eq!(late, Applied { updated: 0, older_dropped: 1 });
        assert_eq!(s.get(key), Some((2.0, 2000)));
        // The same dump redelivered (after a rebalance) is applied again, harmlessly.
        s.apply(0, "i1", 2000, &dump("# TYPE up gauge\nup{job=\"a\"} 2\n# EOF\n"), 12);
        s.apply(0, "i1", 3000, &dump("# TYPE up gauge\nup{job=\"a\"} 3\n# EOF\n"), 13);
        assert_eq!(s.get(key), Some((3.0, 3000)));
        assert_eq!(s.counters.older_dropped, 1);
    }

    #[test]
    fn instances_never_collide_and_a_revoke_evicts_its_partition_only() {
        let mut s = Store::new();
        let d = dump("# TYPE rows counter\nrows_total{stage=\"bronze\"} 5\n# EOF\n");
        s.apply(0, "pod-a", 1, &d, 0);
        s.apply(1, "pod-b", 1, &d, 0);
        assert_eq!(s.series(), 2, "the same series name from two instances is two series");
        assert_eq!(s.evict_partition(0), 1);
        assert_eq!(s.series(), 1);
        let text = s.render(false);
        assert!(text.contains("rows_total{stage=\"bronze\",instance=\"pod-b\"} 5.0"), "{text}");
        // The Prometheus text format names the counter family like its sample.
        assert!(text.starts_with("# TYPE rows_total counter\n"), "{text}");
    }

    #[test]
    fn series_not_refreshed_expire_after_the_ttl() {
        let mut s = Store::new();
        s.apply(0, "i", 1, &dump("a 1\nb 2\n# EOF\n"), 1_000);
        s.apply(0, "i", 2, &dump("a 1\n# EOF\n"), 60_000);
        assert_eq!(s.expire(90_000, 60_000), 1, "b was last seen at 1 s");
        assert_eq!(s.series(), 1);
        let text = s.render(true);
        assert!(text.contains("a{instance=\"i\"} 1.0 2\n"), "{text}");
    }
}
