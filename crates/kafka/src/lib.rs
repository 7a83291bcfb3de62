//! Kafka plumbing shared by the services: client configuration (TLS/SASL, secrets from the
//! environment only), commit notices (publisher and wake-up listener) and W3C trace context in
//! message headers.

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tributary_core::config::KafkaConfig;
use tributary_core::notices::{CommitNotice, NoticeSink, table_key};
use tributary_core::{Error, Result, Shutdown};

/// librdkafka settings common to producers and consumers. The SASL password is read from the
/// environment variable named by `sasl_password_env`; it never appears in config files or logs.
pub fn client_config(k: &KafkaConfig) -> Result<ClientConfig> {
    if k.brokers.is_empty() {
        return Err(Error::user("kafka.brokers is empty: set it in the config or TRIBUTARY__KAFKA__BROKERS"));
    }
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    c.set("security.protocol", &k.security_protocol);
    if k.security_protocol.starts_with("sasl") {
        c.set("sasl.mechanism", &k.sasl_mechanism);
        c.set("sasl.username", &k.sasl_username);
        let pw = std::env::var(&k.sasl_password_env).map_err(|_| {
            Error::user(format!(
                "kafka SASL is on but the environment variable {} (kafka.sasl_password_env) is not set",
                k.sasl_password_env
            ))
        })?;
        c.set("sasl.password", pw);
    }
    for (key, v) in [
        ("ssl.ca.location", &k.ssl_ca_location),
        ("ssl.certificate.location", &k.ssl_certificate_location),
        ("ssl.key.location", &k.ssl_key_location),
    ] {
        if !v.is_empty() {
            c.set(key, v);
        }
    }
    for (key, v) in &k.properties {
        c.set(key, v);
    }
    Ok(c)
}

/// Publishes commit notices to the commits topic (best effort: a lost notice only delays the
/// downstream stage until its next poll).
pub struct KafkaNotices {
    producer: FutureProducer,
    topic: String,
}

impl KafkaNotices {
    pub fn new(k: &KafkaConfig) -> Result<Self> {
        let producer: FutureProducer = client_config(k)?
            .set("message.timeout.ms", "10000")
            .set("linger.ms", "0")
            .create()
            .map_err(|e| Error::external("creating the commit-notice producer").with_source(e))?;
        Ok(Self { producer, topic: k.commits_topic.clone() })
    }

    /// Installs this publisher as the process-wide notice sink.
    pub fn install(k: &KafkaConfig) -> Result<()> {
        let me = Self::new(k)?;
        tributary_core::notices::install(Box::new(me));
        Ok(())
    }
}

impl NoticeSink for KafkaNotices {
    fn publish(&self, notice: CommitNotice) {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let payload = serde_json::to_vec(&notice).unwrap_or_default();
            let key = table_key(&notice.table);
            let rec = FutureRecord::to(&topic).key(&key).payload(&payload);
            if let Err((e, _)) = producer.send(rec, Duration::from_secs(5)).await {
                tracing::warn!(error = %e, table = %notice.name, "commit notice not delivered; downstream falls back to polling");
            }
        });
    }
}

/// Listens to the commits topic and wakes whoever registered interest in a table. The listener
/// assigns itself every partition of the topic at its end (no group join, so it hears notices
/// within moments of starting).
pub fn spawn_listener(
    k: &KafkaConfig,
    interest: HashMap<String, Vec<Arc<Notify>>>,
    shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>> {
    let consumer: StreamConsumer = client_config(k)?
        .set("group.id", format!("{}-notices-{}", k.group_id, uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .create()
        .map_err(|e| Error::external("creating the commit-notice consumer").with_source(e))?;
    let interest: HashMap<String, Vec<Arc<Notify>>> = interest.into_iter().map(|(t, n)| (table_key(&t), n)).collect();
    let k = k.clone();
    Ok(tokio::spawn(async move {
        // Assign all partitions at the end; retry until the broker answers.
        loop {
            if shutdown.is_triggered() {
                return;
            }
            if let Err(e) = ensure_topics(&k, &[(k.commits_topic.clone(), 1)]).await {
                tracing::warn!(error = %e, "commit-notice topic not ready; retrying");
            }
            let assigned = tokio::task::block_in_place(|| -> std::result::Result<usize, String> {
                let md = consumer
                    .fetch_metadata(Some(&k.commits_topic), Duration::from_secs(5))
                    .map_err(|e| e.to_string())?;
                let mut tpl = rdkafka::TopicPartitionList::new();
                for t in md.topics() {
                    for p in t.partitions() {
                        tpl.add_partition_offset(t.name(), p.id(), rdkafka::Offset::End).map_err(|e| e.to_string())?;
                    }
                }
                let n = tpl.count();
                consumer.assign(&tpl).map_err(|e| e.to_string())?;
                Ok(n)
            });
            match assigned {
                Ok(n) if n > 0 => {
                    tracing::info!(topic = %k.commits_topic, partitions = n, "listening for commit notices");
                    break;
                }
                Ok(_) => {
                    tracing::warn!(topic = %k.commits_topic, "commit-notice topic has no partitions yet")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot assign the commit-notice topic; retrying")
                }
            }
            if shutdown.sleep(Duration::from_secs(1)).await {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                m = consumer.recv() => match m {
                    Ok(msg) => {
                        let Some(p) = msg.payload() else { continue };
                        match serde_json::from_slice::<CommitNotice>(p) {
                            Ok(n) => {
                                if let Some(ws) = interest.get(&table_key(&n.table)) {
                                    for w in ws {
                                        w.notify_one();
                                    }
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "ignoring a malformed commit notice"),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "commit-notice listener error; stages keep polling");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }))
}

/// W3C trace context carried in Kafka headers (`traceparent`, `tracestate`).
pub mod trace {
    use super::*;
    use opentelemetry::propagation::{Extractor, Injector};
    use rdkafka::message::{BorrowedHeaders, Header, OwnedHeaders};

    struct HeaderMap(HashMap<String, String>);
    impl Extractor for HeaderMap {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(|s| s.as_str())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|s| s.as_str()).collect()
        }
    }
    impl Injector for HeaderMap {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_string(), value);
        }
    }

    /// The `traceparent` header of a message, if any.
    pub fn traceparent(headers: Option<&BorrowedHeaders>) -> Option<String> {
        let h = headers?;
        for i in 0..h.count() {
            let hd = h.get(i);
            if hd.key.eq_ignore_ascii_case("traceparent") {
                return hd.value.and_then(|v| std::str::from_utf8(v).ok()).map(str::to_string);
            }
        }
        None
    }

    /// OpenTelemetry context from a traceparent value.
    pub fn context_from(traceparent: &str) -> opentelemetry::Context {
        let m = HeaderMap(HashMap::from([("traceparent".to_string(), traceparent.to_string())]));
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&m))
    }

    /// Headers carrying the current span's trace context.
    pub fn inject_current() -> OwnedHeaders {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let cx = tracing::Span::current().context();
        let mut m = HeaderMap(HashMap::new());
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut m));
        let mut h = OwnedHeaders::new();
        for (k, v) in &m.0 {
            h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        h
    }
}

/// A consumer-group member's settings, shared by every consumer of the workspace: the client
/// settings above, `group`, static membership when `instance_id` is set, manual offsets (the
/// caller commits only what is durable or exposed), start from the earliest offset, a bounded
/// prefetch queue (64 MiB), and a 10 s session unless `kafka.properties` sets one.
pub fn group_consumer_config(k: &KafkaConfig, group: &str, instance_id: &str) -> Result<ClientConfig> {
    let mut c = client_config(k)?;
    if !k.properties.contains_key("session.timeout.ms") {
        c.set("session.timeout.ms", "10000");
    }
    if !instance_id.is_empty() {
        c.set("group.instance.id", instance_id);
    }
    if k.statistics_interval_ms > 0 && !k.properties.contains_key("statistics.interval.ms") {
        // Feeds `tributary_kafka_consumer_lag` (see `record_lag`).
        c.set("statistics.interval.ms", k.statistics_interval_ms.to_string());
    }
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "65536");
    Ok(c)
}

/// A partition's high watermark as of this consumer's last fetch response for it, without a
/// round trip to the broker (`rd_kafka_get_watermark_offsets`); `None` while unknown (no fetch
/// response yet). It only grows, so an offset below it is certainly behind.
pub fn cached_high_watermark<C: rdkafka::consumer::ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the native handle lives as long as `consumer`; `topic` is a NUL-terminated string
    // alive for the call and the out-pointers point at locals. The call only reads librdkafka's
    // cached partition state.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// Records a group consumer's lag per assigned partition from librdkafka statistics (a
/// consumer context's `stats` callback calls this).
pub fn record_lag(group: &str, stats: &rdkafka::Statistics) {
    for (topic, t) in &stats.topics {
        for (p, part) in &t.partitions {
            // -1 is librdkafka's internal partition; a lag of -1 is unknown (not fetching).
            if *p >= 0 && part.consumer_lag >= 0 {
                tributary_core::metrics::consumer_lag(group, topic, *p, part.consumer_lag);
            }
        }
    }
}

/// Creates the topics that do not exist yet (partition count for new ones only).
pub async fn ensure_topics(k: &KafkaConfig, topics: &[(String, i32)]) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        client_config(k)?.create().map_err(|e| Error::external("creating the Kafka admin client").with_source(e))?;
    let new: Vec<NewTopic> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    let res = admin
        .create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))))
        .await
        .map_err(|e| Error::external("creating topics").with_source(e))?;
    for r in res {
        match r {
            Ok(t) => tracing::info!(topic = %t, "created topic"),
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %t, "topic exists")
            }
            Err((t, code)) => return Err(Error::external(format!("creating topic {t}: {code:?}"))),
        }
    }
    Ok(())
}

/// Produces every line of the landing files of `source` (sorted, gzip handled) to `topic`,
/// keyed by event_id (unkeyed when the line is not an event), idempotently. Returns messages sent.
pub async fn produce_files(k: &KafkaConfig, dir: &std::path::Path, source: &str, topic: &str) -> Result<u64> {
    use std::io::Read;
    let mut config = client_config(k)?;
    if !k.properties.contains_key("enable.idempotence") {
        // A broker without idempotent-producer support (tansu's memory storage) is fed with
        // `kafka.properties."enable.idempotence" = "false"` (benchmarks only).
        config.set("enable.idempotence", "true");
    }
    let producer: FutureProducer = config
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "60000")
        .create()
        .map_err(|e| Error::external("creating the producer").with_source(e))?;
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.')))
        .collect();
    files.sort();
    let mut sent = 0u64;
    for f in files {
        let raw = std::fs::read(&f)?;
        let body = if f.extension().and_then(|e| e.to_str()) == Some("gz") {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out)?;
            out
        } else {
            raw
        };
        let mut pending = Vec::new();
        // As bronze reads files: a UTF-8 byte-order mark skipped, CRLF tolerated, blank lines not sent.
        let body = body.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(&body);
        for (_, line) in tributary_events::lines::lines(body) {
            let key = tributary_events::decode_event(line, source, usize::MAX).ok().and_then(|d| d.event_id);
            let producer = producer.clone();
            let topic_name = topic.to_string();
            let line = line.to_vec();
            let headers = trace::inject_current();
            pending.push(async move {
                let mut rec = FutureRecord::to(&topic_name).payload(&line).headers(headers);
                if let Some(k) = key.as_deref() {
                    rec = rec.key(k);
                }
                producer.send(rec, Duration::from_secs(60)).await.map(|_| ()).map_err(|(e, _)| e)
            });
            if pending.len() >= 5000 {
                for r in futures::future::join_all(pending.drain(..)).await {
                    r.map_err(|e| Error::external(format!("producing to {topic}")).with_source(e))?;
                    sent += 1;
                }
            }
        }
        for r in futures::future::join_all(pending.drain(..)).await {
            r.map_err(|e| Error::external(format!("producing to {topic}")).with_source(e))?;
            sent += 1;
        }
    }
    Ok(sent)
}

/// The broker's own ceiling for the benchmark: a plain consumer in a fresh group that reads
/// `topics` from the beginning and only counts messages (and payload bytes) until every
/// partition reached the high watermark it had at the start, or `timeout` passes. Returns
/// (messages, bytes, seconds from the first message to the last).
pub async fn count_to_end(
    k: &KafkaConfig,
    topics: &[String],
    group: &str,
    timeout: Duration,
) -> Result<(u64, u64, f64)> {
    let consumer: StreamConsumer = client_config(k)?
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| Error::external("creating the counting consumer").with_source(e))?;
    let names: Vec<&str> = topics.iter().map(|s| s.as_str()).collect();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| Error::external("reading topic metadata").with_source(e))?;
    for t in md.topics().iter().filter(|t| names.contains(&t.name())) {
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
                .map_err(|e| Error::external("reading watermarks").with_source(e))?;
            if high > 0 {
                ends.insert((t.name().to_string(), p.id()), high);
            }
        }
    }
    consumer.subscribe(&names).map_err(|e| Error::external("subscribing").with_source(e))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut first: Option<std::time::Instant> = None;
    let mut last = std::time::Instant::now();
    while !ends.is_empty() {
        let m = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => return Err(Error::external("receiving").with_source(e)),
            Ok(Ok(m)) => m,
        };
        first.get_or_insert_with(std::time::Instant::now);
        last = std::time::Instant::now();
        n += 1;
        bytes += m.payload().map(|p| p.len() as u64).unwrap_or(0);
        let key = (m.topic().to_string(), m.partition());
        if ends.get(&key).is_some_and(|end| m.offset() + 1 >= *end) {
            ends.remove(&key);
        }
    }
    let secs = first.map(|f| last.duration_since(f).as_secs_f64()).unwrap_or(0.0);
    Ok((n, bytes, secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn traceparent_header_becomes_the_parent_context() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let cx = trace::context_from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        // Garbage is ignored, not a panic.
        assert!(!trace::context_from("not a traceparent").span().span_context().is_valid());
    }

    #[test]
    fn sasl_password_comes_from_the_environment_only() {
        let mut k = KafkaConfig { brokers: "127.0.0.1:1".into(), ..Default::default() };
        k.security_protocol = "sasl_ssl".into();
        k.sasl_mechanism = "SCRAM-SHA-512".into();
        k.sasl_username = "svc".into();
        k.sasl_password_env = "TRIBUTARY_TEST_KAFKA_PW_UNSET".into();
        let err = client_config(&k).unwrap_err().to_string();
        assert!(err.contains("TRIBUTARY_TEST_KAFKA_PW_UNSET"), "{err}");
        k.ssl_ca_location = "/etc/ssl/ca.pem".into();
        k.sasl_password_env = "PATH".into(); // any variable that is set
        let c = client_config(&k).unwrap();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/ssl/ca.pem"));
        assert!(c.get("sasl.password").is_some());
    }
}
