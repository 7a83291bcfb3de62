//! Cooperative shutdown shared by every task of a process.

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
    exit_when_idle: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self { tx: std::sync::Arc::new(tx), rx, exit_when_idle: Default::default() }
    }
    /// `--trigger available-now`: the service stops once all its stages are idle.
    pub fn exit_when_idle(&self) {
        self.exit_when_idle.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn wants_exit_when_idle(&self) -> bool {
        self.exit_when_idle.load(std::sync::atomic::Ordering::SeqCst)
    }
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
    /// Resolves once shutdown has been triggered.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
    /// Sleeps for `d` or until shutdown, whichever comes first. Returns true on shutdown.
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => self.is_triggered(),
            _ = self.wait() => true,
        }
    }
    /// Triggers shutdown on SIGINT or SIGTERM.
    pub fn install_signal_handlers(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install SIGTERM handler");
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            tracing::info!("shutdown signal received");
            this.trigger();
        });
    }
}
