//! The object stores behind every table, landing zone and position file: local paths (the
//! embedded default) and S3 (`s3://bucket/prefix`) through `object_store`'s own S3 client.
//!
//! Delta commits on S3 use the default log store: a commit is `PUT _delta_log/N.json` with
//! `If-None-Match: *`, so of two writers racing for version N exactly one wins and the other
//! sees a conflict and retries on top of it. That is all concurrent writers need from a store
//! (AWS S3 since 2024-08, MinIO, Cloudflare R2, Ceph RGW, moto); a store that ignores the header
//! would let two commits overwrite each other, so [`check_conditional_put`] refuses to start on
//! one. No DynamoDB lock table is needed.
//!
//! [`configure`] is called once per process with the config's `[storage.s3]` section before any
//! table is opened; it registers the `s3://` (and `s3a://`) handlers with deltalake.

use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig as DeltaStorageConfig,
    default_logstore, logstore_factories, object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError, ObjectStore, Path};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStoreExt as _, PutMode, PutOptions, RetryConfig};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tributary_core::config::S3Config;
use tributary_core::{Error, Result};
use url::Url;

static SETTINGS: RwLock<Option<Settings>> = RwLock::new(None);

/// `[storage.s3]` with the credentials of its file already read (kept out of `Debug`).
#[derive(Clone, Default)]
struct Settings {
    s3: S3Config,
    keys: Option<Keys>,
}

#[derive(Clone)]
struct Keys {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

/// Installs the `[storage.s3]` settings and registers the S3 handlers with deltalake. Idempotent;
/// a later call replaces the settings (tests running several configs in one process).
pub fn configure(s3: &S3Config) -> Result<()> {
    let keys = if s3.credentials_file.is_empty() { None } else { Some(read_credentials(s3)?) };
    *SETTINGS.write().unwrap_or_else(|e| e.into_inner()) = Some(Settings { s3: s3.clone(), keys });
    register();
    Ok(())
}

/// Registers the S3 handlers (with the settings of [`configure`], or the environment's alone).
pub fn register() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        for scheme in ["s3://", "s3a://"] {
            let url = Url::parse(scheme).expect("static scheme");
            object_store_factories().insert(url.clone(), Arc::new(S3Factory));
            logstore_factories().insert(url, Arc::new(ConditionalPutLogStore));
        }
    });
}

fn settings() -> Settings {
    SETTINGS.read().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
}

/// Whether `uri` names an object store (not a local path or `file://`).
pub fn is_remote(uri: &str) -> bool {
    uri.split_once("://").is_some_and(|(scheme, _)| scheme != "file")
}

/// Reads `aws_access_key_id` / `aws_secret_access_key` / `aws_session_token` of `profile` from an
/// AWS shared-credentials (INI) file. Errors name the file and key, never a value.
fn read_credentials(s3: &S3Config) -> Result<Keys> {
    let path = &s3.credentials_file;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::user(format!("storage.s3.credentials_file {path}: cannot read it")).with_source(e))?;
    let profile = if s3.profile.is_empty() { "default" } else { s3.profile.as_str() };
    let (mut section, mut found) = (String::new(), std::collections::HashMap::new());
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().trim_start_matches("profile ").to_string();
            continue;
        }
        if section == profile
            && let Some((k, v)) = line.split_once('=')
        {
            found.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let take = |k: &str| found.get(k).filter(|v| !v.is_empty()).cloned();
    match (take("aws_access_key_id"), take("aws_secret_access_key")) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Ok(Keys { access_key_id, secret_access_key, session_token: take("aws_session_token") })
        }
        _ => Err(Error::user(format!(
            "storage.s3.credentials_file {path}: profile [{profile}] needs aws_access_key_id and aws_secret_access_key"
        ))),
    }
}

/// An S3 client for the bucket of `url` (rooted at the bucket), from the environment
/// (`AWS_*`) overlaid with `[storage.s3]`.
fn s3_store(url: &Url) -> Result<AmazonS3> {
    let Settings { s3, keys } = settings();
    let mut b = AmazonS3Builder::from_env()
        .with_url(url.as_str())
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(RetryConfig {
            max_retries: 10,
            retry_timeout: Duration::from_secs(s3.retry_timeout_secs.max(1)),
            ..Default::default()
        })
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(120))
                .with_allow_http(s3.allow_http),
        )
        .with_allow_http(s3.allow_http)
        .with_virtual_hosted_style_request(s3.virtual_hosted_style);
    if !s3.endpoint.is_empty() {
        b = b.with_endpoint(&s3.endpoint);
    }
    if !s3.region.is_empty() {
        b = b.with_region(&s3.region);
    }
    if let Some(k) = keys {
        b = b.with_access_key_id(k.access_key_id).with_secret_access_key(k.secret_access_key);
        if let Some(t) = k.session_token {
            b = b.with_token(t);
        }
    }
    // object_store's errors carry no credentials; the URL is ours.
    b.build().map_err(|e| Error::user(format!("S3 store for {}", redact(url))).with_source(e))
}

/// The URL without user info or query (never log a presigned or userinfo secret).
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.set_query(None);
    u.to_string()
}

/// A store rooted at `uri`: `s3://bucket/prefix` (keys relative to `prefix`), `file://` or a local
/// path (created when missing).
pub fn root_store(uri: &str) -> Result<Arc<dyn ObjectStore>> {
    if is_remote(uri) {
        let url = Url::parse(uri).map_err(|e| Error::user(format!("invalid store URI {uri:?}")).with_source(e))?;
        if !matches!(url.scheme(), "s3" | "s3a") {
            return Err(Error::user(format!(
                "{uri}: scheme {}:// is not supported (local paths, file://, s3://)",
                url.scheme()
            )));
        }
        let store = s3_store(&url)?;
        let prefix = url.path().trim_matches('/');
        return Ok(if prefix.is_empty() { Arc::new(store) } else { Arc::new(PrefixStore::new(store, prefix)) });
    }
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    std::fs::create_dir_all(path)?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(path)
        .map_err(|e| Error::user(format!("store {uri}")).with_source(e))?;
    Ok(Arc::new(store))
}

/// Every Delta table under `root` (local path, `file://` or `s3://`): the relative paths of the
/// folders holding a `_delta_log`, sorted. Walks folder by folder (one delimited listing each)
/// and never descends into a table, so the cost is the number of folders above the tables, not
/// the number of data files.
pub async fn list_tables(root: &str) -> Result<Vec<String>> {
    let store = root_store(root)?;
    let mut out = Vec::new();
    let mut stack: Vec<Option<Path>> = vec![None];
    while let Some(dir) = stack.pop() {
        let listing = store.list_with_delimiter(dir.as_ref()).await.map_err(|e| {
            Error::external(format!("{root}: listing {}", dir.as_ref().map_or("", |p| p.as_ref()))).with_source(e)
        })?;
        let is_table = listing.common_prefixes.iter().any(|p| p.filename() == Some("_delta_log"));
        if is_table {
            if let Some(d) = dir {
                out.push(d.to_string());
            }
            continue; // a table's own folders are partitions, not tables
        }
        stack.extend(listing.common_prefixes.into_iter().map(Some));
    }
    out.sort();
    Ok(out)
}

/// `root` joined with a relative table path, for a local path or a URI.
pub fn join(root: &str, rel: &str) -> String {
    format!("{}/{}", root.trim_end_matches('/'), rel.trim_start_matches('/'))
}

/// Whether the table at `uri` (on an object store) has a Delta log: one listing request.
pub async fn has_log(uri: &str) -> Result<bool> {
    use futures::StreamExt as _;
    let store = root_store(uri)?;
    match store.list(Some(&Path::from("_delta_log"))).next().await {
        None => Ok(false),
        Some(Ok(_)) => Ok(true),
        Some(Err(e)) => Err(Error::external(format!("{uri}: listing _delta_log")).with_source(e)),
    }
}

/// Proves the store behind `uri` refuses a second `PUT ... If-None-Match: *` of one key, which
/// the Delta commit protocol relies on with several writers; refuses to go on otherwise. One
/// probe object under `_tributary/probes/`, removed afterwards.
/// Run once per bucket and process (every table opened on a bucket passes through it).
pub async fn check_conditional_put(uri: &str) -> Result<()> {
    if !is_remote(uri) {
        return Ok(());
    }
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let url = Url::parse(uri).map_err(|e| Error::user(format!("invalid store URI {uri:?}")).with_source(e))?;
    let bucket = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if CHECKED.lock().unwrap_or_else(|e| e.into_inner()).contains(&bucket) {
        return Ok(());
    }
    let store = root_store(&bucket)?;
    let key = Path::from(format!("_tributary/probes/conditional-put-{}", uuid::Uuid::new_v4()));
    let create = || PutOptions { mode: PutMode::Create, ..Default::default() };
    store
        .put_opts(&key, bytes::Bytes::from_static(b"1").into(), create())
        .await
        .map_err(|e| Error::external(format!("{uri}: cannot write to the store")).with_source(e))?;
    let second = store.put_opts(&key, bytes::Bytes::from_static(b"2").into(), create()).await;
    let _ = store.delete(&key).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => {
            CHECKED.lock().unwrap_or_else(|e| e.into_inner()).push(bucket);
            Ok(())
        }
        Ok(_) => Err(Error::user(format!(
            "{uri}: the store accepted a second PUT with If-None-Match: * on one key; concurrent Delta \
             commits would overwrite each other there (use a store with conditional writes: AWS S3, \
             MinIO, R2, Ceph RGW)"
        ))),
        Err(e) => Err(Error::external(format!("{uri}: conditional put probe")).with_source(e)),
    }
}

struct S3Factory;

impl ObjectStoreFactory for S3Factory {
    fn parse_url_opts(&self, url: &Url, _config: &DeltaStorageConfig) -> DeltaResult<(ObjectStoreRef, Path)> {
        let store = s3_store(url).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        let path = Path::parse(url.path()).map_err(|e| DeltaTableError::Generic(e.to_string()))?;
        Ok((Arc::new(store), path))
    }
}

/// deltalake's default log store: commits by conditional put (see the module docs).
struct ConditionalPutLogStore;

impl LogStoreFactory for ConditionalPutLogStore {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &DeltaStorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed_store, root_store, location, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_profiles_and_errors_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s3cr3t-default\n\n\
             [profile ci]\naws_access_key_id=AKIACI\naws_secret_access_key=s3cr3t-ci\naws_session_token = tok\n\
             [broken]\naws_access_key_id = AKIAONLY\n",
        )
        .unwrap();
        let mut s3 = S3Config { credentials_file: f.display().to_string(), ..Default::default() };
        let k = read_credentials(&s3).unwrap();
        assert_eq!((k.access_key_id.as_str(), k.secret_access_key.as_str()), ("AKIADEFAULT", "s3cr3t-default"));
        assert!(k.session_token.is_none());
        assert_eq!(format!("{k:?}"), "Keys(<redacted>)");
        s3.profile = "ci".into();
        let k = read_credentials(&s3).unwrap();
        assert_eq!((k.access_key_id.as_str(), k.session_token.as_deref()), ("AKIACI", Some("tok")));
        s3.profile = "broken".into();
        let e = read_credentials(&s3).unwrap_err().to_string();
        assert!(e.contains("aws_secret_access_key") && !e.contains("AKIAONLY"), "{e}");
        s3.credentials_file = dir.path().join("missing").display().to_string();
        assert!(read_credentials(&s3).is_err());
    }

    #[test]
    fn remote_uris_and_redaction() {
        assert!(is_remote("s3://bucket/x") && !is_remote("file:///tmp/x") && !is_remote("/tmp/x"));
        let u = Url::parse("s3://user:pw@bucket/p?X-Amz-Signature=abc").unwrap();
        assert_eq!(redact(&u), "s3://bucket/p");
        assert!(root_store("gs://bucket/x").is_err());
    }
}
