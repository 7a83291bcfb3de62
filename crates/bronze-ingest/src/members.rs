//! Several bronze replicas sharing one landing zone (`bronze.landing_slots` > 1).
//!
//! Each source's landing files are split into slots by a stable hash of their path
//! (`catalog::landing_slot`); each slot is its own flow with its own exactly-once position.
//! The replicas find each other through heartbeat objects beside the region's bronze
//! quarantine table (`_tributary/bronze-members/<member>.json`, renewed every
//! `bronze.member_heartbeat_secs`): the live members, sorted by id, own the slots round-robin
//! (slot `s` belongs to member `s mod live`), so scaling the Deployment up or down moves slots
//! without any coordinator, on a local file system or an object store alike.
//!
//! Membership is for sharing work, not for safety: while two replicas disagree about who is
//! live (a heartbeat interval or two after a change), both may run the same slot, and the
//! commit protocol fences them — each batch commits `txn(slot) = seq` only if the table still
//! holds `seq - 1`, so the loser's commit is refused, it reloads the slot from the table and
//! never writes a file twice.

use deltalake::{ObjectStore, Path};
use futures::TryStreamExt;
use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tributary_core::{Error, Result};

const DIR: &str = "_tributary/bronze-members";

#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    member: String,
    at_ms: i64,
    slots: u32,
}

pub struct Members {
    store: Arc<dyn ObjectStore>,
    pub id: String,
    slots: u32,
    every: Duration,
    last_beat: Option<Instant>,
    live: Vec<String>,
    /// Renews the heartbeat on its own OS thread, so neither a batch that takes longer than
    /// three beats nor CPU-bound work occupying every async worker (Parquet encoding of several
    /// flows at once) makes this member look dead and its slots flap to the others.
    beater: Option<Beater>,
}

struct Beater {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: std::thread::JoinHandle<()>,
}

impl Beater {
    /// Stops the thread; it finishes a write in progress first.
    fn stop(&self) {
        let (flag, cv) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        if let Some(b) = self.beater.take() {
            b.stop();
        }
    }
}

/// The member id when `bronze.member_id` is empty: host name (the pod name on Kubernetes) and
/// process id, so two processes on one host are two members.
pub fn default_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "bronze".into());
    let host: String =
        host.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).take(100).collect();
    format!("{host}-{}", std::process::id())
}

impl Members {
    pub fn new(store: Arc<dyn ObjectStore>, id: String, slots: u32, heartbeat_secs: u64) -> Self {
        Self {
            store,
            id,
            slots,
            every: Duration::from_secs(heartbeat_secs.max(1)),
            last_beat: None,
            live: Vec::new(),
            beater: None,
        }
    }

    async fn write_beat(store: &Arc<dyn ObjectStore>, id: &str, slots: u32) -> Result<()> {
        let beat = Beat { member: id.to_string(), at_ms: tributary_core::now_ms(), slots };
        store
            .put(&Self::path(id), serde_json::to_vec(&beat).unwrap_or_default().into())
            .await
            .map(|_| ())
            .map_err(|e| Error::external("writing the bronze member heartbeat").with_source(e))
    }

    /// Starts renewing the heartbeat every interval in the background (independent of how
    /// long a pass of the stage takes); `beat` still reads who is live.
    pub fn start_beating(&mut self) {
        if self.beater.is_some() {
            return;
        }
        let (store, id, slots, every) = (self.store.clone(), self.id.clone(), self.slots, self.every);
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("bronze-heartbeat".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "bronze member heartbeat thread has no runtime; beats come from the passes only");
                    return;
                }
            };
            let (lock, cv) = &*flag;
            let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                stopped = cv.wait_timeout(stopped, every).unwrap_or_else(|e| e.into_inner()).0;
                if *stopped {
                    return;
                }
                // Written with the lock held, so `stop` + join means no beat is written after.
                if let Err(e) = rt.block_on(Self::write_beat(&store, &id, slots)) {
                    tracing::warn!(error = %e, "bronze member heartbeat failed (retrying)");
                }
            }
        });
        match thread {
            Ok(thread) => self.beater = Some(Beater { stop, thread }),
            Err(e) => {
                tracing::error!(error = %e, "could not start the bronze member heartbeat thread; beats come from the passes only")
            }
        }
    }

    fn path(id: &str) -> Path {
        Path::from(format!("{DIR}/{id}.json"))
    }

    /// Renews this member's heartbeat when due and re-reads who is live. True when the set of
    /// live members (hence the slots this member owns) changed.
    pub async fn beat(&mut self) -> Result<bool> {
        if self.last_beat.is_some_and(|t| t.elapsed() < self.every) {
            return Ok(false);
        }
        let now = tributary_core::now_ms();
        Self::write_beat(&self.store, &self.id, self.slots).await?;
        self.last_beat = Some(Instant::now());
        let listed: Vec<deltalake::ObjectMeta> = self
            .store
            .list(Some(&Path::from(DIR)))
            .try_collect()
            .await
            .map_err(|e| Error::external("listing bronze member heartbeats").with_source(e))?;
        let dead_after = 3 * self.every.as_millis() as i64;
        let mut live = vec![self.id.clone()];
        for m in listed {
            if m.location == Self::path(&self.id) {
                continue;
            }
            let bytes = match self.store.get(&m.location).await {
                Ok(r) => match r.bytes().await {
                    Ok(b) => b,
                    Err(_) => continue,
                },
                // Removed by another member meanwhile.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(Error::external("reading a bronze member heartbeat").with_source(e)),
            };
            let Ok(b) = serde_json::from_slice::<Beat>(&bytes) else {
                tracing::warn!(path = %m.location, "ignoring an unreadable bronze member heartbeat");
                continue;
            };
            if b.slots != self.slots {
                // A replica with another layout would split the files differently: both would
                // ingest under different positions. Refused loudly rather than shared.
                return Err(Error::user(format!(
                    "bronze member {} runs with landing_slots = {} but this one has {}: every replica of a region must use the same bronze.landing_slots",
                    b.member, b.slots, self.slots
                )));
            }
            if now - b.at_ms <= dead_after {
                live.push(b.member);
            } else if now - b.at_ms > 20 * self.every.as_millis() as i64 {
                // Long dead (a pod that was deleted): its heartbeat is removed by whoever sees it.
                let _ = self.store.delete(&m.location).await;
            }
        }
        live.sort();
        live.dedup();
        let changed = live != self.live;
        if changed {
            tracing::info!(member = %self.id, live = ?live, owned = ?self.owned_of(&live), "bronze members changed");
            tributary_core::metrics::bronze_members(live.len() as u64, self.owned_of(&live).len() as u64);
        }
        self.live = live;
        Ok(changed)
    }

    fn owned_of(&self, live: &[String]) -> Vec<u32> {
        let Some(rank) = live.iter().position(|m| *m == self.id) else { return Vec::new() };
        (0..self.slots).filter(|s| *s as usize % live.len() == rank).collect()
    }

    /// When membership should be read again: a pass of the stage starts no new flow after this,
    /// so a replica does not keep running slots that moved to another for a whole long pass.
    pub fn next_check(&self) -> Instant {
        self.last_beat.map_or_else(Instant::now, |t| t + self.every)
    }

    /// The slots this member owns now.
    pub fn owned(&self) -> Vec<u32> {
        self.owned_of(&self.live)
    }

    /// Stops the heartbeat and removes it (a clean shutdown hands its slots over at once).
    pub async fn leave(&mut self) {
        if let Some(b) = self.beater.take() {
            b.stop();
            let _ = tokio::task::spawn_blocking(move || b.thread.join()).await;
        }
        let _ = self.store.delete(&Self::path(&self.id)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
        let d = tempfile::tempdir().unwrap();
        let s = object_store::local::LocalFileSystem::new_with_prefix(d.path()).unwrap();
        (d, Arc::new(s))
    }

    #[tokio::test]
    async fn live_members_split_the_slots_and_a_dead_one_loses_them() {
        let (_d, s) = store();
        let mut a = Members::new(s.clone(), "a".into(), 8, 1);
        let mut b = Members::new(s.clone(), "b".into(), 8, 1);
        assert!(a.beat().await.unwrap());
        assert_eq!(a.owned(), (0..8).collect::<Vec<_>>(), "alone, a owns every slot");
        assert!(b.beat().await.unwrap());
        assert_eq!(b.owned(), vec![1, 3, 5, 7]);
        a.last_beat = None;
        assert!(a.beat().await.unwrap(), "a sees b");
        assert_eq!(a.owned(), vec![0, 2, 4, 6]);
        // b stops beating: after 3 intervals a owns everything again.
        let stale = Beat { member: "b".into(), at_ms: tributary_core::now_ms() - 3_500, slots: 8 };
        s.put(&Members::path("b"), serde_json::to_vec(&stale).unwrap().into()).await.unwrap();
        a.last_beat = None;
        assert!(a.beat().await.unwrap());
        assert_eq!(a.owned(), (0..8).collect::<Vec<_>>());
        // A clean leave is seen at once.
        b.last_beat = None;
        b.beat().await.unwrap();
        a.last_beat = None;
        a.beat().await.unwrap();
        assert_eq!(a.owned().len(), 4);
        b.leave().await;
        a.last_beat = None;
        a.beat().await.unwrap();
        assert_eq!(a.owned().len(), 8);
    }

    #[tokio::test]
    async fn the_background_heartbeat_keeps_a_busy_member_live() {
        let (_d, s) = store();
        let mut a = Members::new(s.clone(), "a".into(), 4, 1);
        let mut b = Members::new(s.clone(), "b".into(), 4, 1);
        a.beat().await.unwrap();
        a.start_beating();
        // a is "busy" (never calls beat again) for more than 3 intervals, and its async runtime
        // is blocked the whole time (this test's only worker thread sleeps, as when CPU-bound
        // work holds every worker): the heartbeat has its own thread.
        std::thread::sleep(Duration::from_millis(3_600));
        b.beat().await.unwrap();
        assert_eq!(b.owned(), vec![1, 3], "a looked dead while busy");
        a.leave().await;
        b.last_beat = None;
        b.beat().await.unwrap();
        assert_eq!(b.owned(), vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_member_with_another_slot_count_is_refused() {
        let (_d, s) = store();
        let mut a = Members::new(s.clone(), "a".into(), 8, 1);
        let mut b = Members::new(s.clone(), "b".into(), 4, 1);
        a.beat().await.unwrap();
        let e = b.beat().await.unwrap_err().to_string();
        assert!(e.contains("landing_slots = 8"), "{e}");
    }
}
