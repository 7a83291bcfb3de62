//! TLS and mTLS on the gRPC status/health/reflection server, with certificates made by openssl.

use integration_tests::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl CLI");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate.
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tributary-test-ca",
        ],
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
        .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        signed_cert(dir, who, &format!("/CN=tributary-{who}"), &format!("{who}.ext"));
    }
}

/// `tributary standalone` serving gRPC on `port` with the server certificate of `make_pki` and
/// client certificates of its CA required (mTLS).
fn tls_standalone(p: &Pipeline, pki: &Path, port: u16) -> Command {
    let path = |f: &str| pki.join(f).display().to_string();
    let mut c = p.command(&["standalone", "--grpc-addr", &format!("127.0.0.1:{port}")]);
    c.env("TRIBUTARY__SERVER__TLS__CERT_PATH", path("server.pem"))
        .env("TRIBUTARY__SERVER__TLS__KEY_PATH", path("server.key"))
        .env("TRIBUTARY__SERVER__TLS__CLIENT_CA_PATH", path("ca.pem"));
    c
}

/// A key and a certificate `<name>.key`/`<name>.pem` with `subject`, signed by the CA of
/// `make_pki`, with the extensions of `ext`.
fn signed_cert(dir: &Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject]);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    );
}

/// A client certificate with Common Name `cn`, signed by the CA of `make_pki`.
fn client_cert(dir: &Path, name: &str, cn: &str) {
    signed_cert(dir, name, &format!("/O=Tributary Test/CN={cn}"), "client.ext");
}

/// Issue #13: the Admin API. Roles come from the mTLS client certificate's CN (`server.roles`);
/// a viewer may read status but not pause, an operator may pause and resume but not VACUUM, an
/// admin may checkpoint and VACUUM; a certificate without a role reads nothing. A paused flow
/// ingests nothing until resumed. Every call, the refused ones included, lands in the audit
/// Delta table with who, what, arguments and outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_are_authorised_by_the_certificates_role_and_audited() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    for (name, cn) in [("vera", "vera.viewer"), ("otto", "otto.operator"), ("ada", "ada.admin"), ("mallory", "mallory")]
    {
        client_cert(pki.path(), name, cn);
    }
    let p = Pipeline::new(&["r1"]);
    p.generate(&GenSpec { events_per_source: 100, files_per_source: 2, seed: 4 }).unwrap();
    let port = free_port();
    let path = |f: &str| pki.path().join(f).display().to_string();
    let mut child = tls_standalone(&p, pki.path(), port)
        .env(
            "TRIBUTARY__SERVER__ROLES",
            r#"{viewer = ["vera.viewer"], operator = ["otto.operator"], admin = ["ada.admin"]}"#,
        )
        .env("TRIBUTARY__SERVER__POLL_INTERVAL_MS", "200")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let tls = |who: &str| {
        vec![
            "--addr".to_string(),
            format!("https://localhost:{port}"),
            "--ca-cert".into(),
            path("ca.pem"),
            "--client-cert".into(),
            path(&format!("{who}.pem")),
            "--client-key".into(),
            path(&format!("{who}.key")),
        ]
    };
    let run = |who: &str, args: &[&str]| {
        let mut c = Command::new(bin());
        c.arg(args[0]).args(tls(who)).args(&args[1..]);
        let out = c.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let bronze_billing_rows = || -> Option<i64> {
        let (code, out) = run("ada", &["status", "--stats", "--json"]);
        if code != Some(0) {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v["stages"]
            .as_array()?
            .iter()
            .flat_map(|s| s["tables"].as_array().cloned().unwrap_or_default())
            .find_map(|t| (t["name"] == "bronze/billing").then(|| t["row_count"].as_i64()).flatten())
    };
    // Until the generated traffic is in bronze.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let before = loop {
        if let Some(n) = bronze_billing_rows().filter(|n| *n > 0) {
            std::thread::sleep(std::time::Duration::from_secs(2));
            if bronze_billing_rows() == Some(n) {
                break n;
            }
        }
        assert!(std::time::Instant::now() < deadline, "bronze/billing never filled");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    // A viewer reads status; a certificate without a role does not.
    assert_eq!(run("vera", &["status", "--json"]).0, Some(0));
    let (code, out) = run("mallory", &["status", "--json"]);
    assert_ne!(code, Some(0), "a certificate without a role read the status: {out}");
    assert!(out.contains("needs role viewer"), "{out}");
    // The viewer cannot pause; the operator can.
    let (code, out) = run("vera", &["admin", "pause", "--stage", "bronze", "--region", "r1"]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("needs role operator"), "{out}");
    let (code, out) = run("otto", &["admin", "pause", "--stage", "bronze", "--region", "r1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("paused bronze/r1"), "{out}");
    // While paused, a new landing file is not ingested.
    let landing = p.data.join("regions/r1/landing/billing");
    let lines: String = (0..25)
        .map(|i| format!("{{\"event_id\":\"admin-{i}\",\"event_time\":\"2025-11-01T01:00:00Z\",\"region\":\"r1\",\"workspace_id\":\"w1\",\"customer_id\":\"c1\",\"sku\":\"STD\",\"dbu\":1}}\n"))
        .collect();
    std::fs::write(landing.join(".late.json.tmp"), lines).unwrap();
    std::fs::rename(landing.join(".late.json.tmp"), landing.join("zz-admin.json")).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(bronze_billing_rows(), Some(before), "a paused flow ingested");
    // The operator resumes; the file arrives.
    let (code, out) = run("otto", &["admin", "resume", "--stage", "bronze", "--region", "r1"]);
    assert_eq!(code, Some(0), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while bronze_billing_rows() != Some(before + 25) {
        assert!(std::time::Instant::now() < deadline, "the resumed flow did not ingest: {:?}", bronze_billing_rows());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // The operator starts a pass now (every bronze loop of r1 is woken); an unknown region is refused.
    let (code, out) = run("otto", &["admin", "trigger", "--stage", "bronze", "--region", "r1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("triggered bronze/r1"), "{out}");
    let (code, out) = run("otto", &["admin", "trigger", "--stage", "silver", "--region", "r9"]);
    assert_eq!(code, Some(1), "{out}");
    // VACUUM needs admin; so does a checkpoint.
    let table = "regions/r1/silver/billing";
    let (code, out) = run("otto", &["admin", "vacuum", "--table", table, "--dry-run"]);
    assert_eq!(code, Some(4), "{out}");
    let (code, out) = run("ada", &["admin", "checkpoint", "--table", table]);
    assert_eq!(code, Some(0), "{out}");
    let log = p.data.join(table).join("_delta_log");
    assert!(
        std::fs::read_dir(&log).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".checkpoint.parquet")),
        "no checkpoint file in {}",
        log.display()
    );
    // OPTIMIZE bronze/billing while the pipeline runs: fewer files, the same rows.
    let bronze = "regions/r1/bronze/billing";
    let (code, out) = run("ada", &["admin", "compact", "--table", bronze]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("compacted regions/r1/bronze/billing"), "{out}");
    // The late file landed in a partition bronze had already written: at least one to compact.
    assert!(!out.contains(": 0 partitions"), "{out}");
    eprintln!("{}", out.trim());
    assert_eq!(bronze_billing_rows(), Some(before + 25), "compaction changed the rows");
    let (code, out) = run("ada", &["admin", "vacuum", "--table", table, "--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("(dry run)"), "{out}");
    // Arguments are checked: a short retention, a path leaving data_root.
    let (code, out) = run("ada", &["admin", "vacuum", "--table", table, "--retention-hours", "1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("retention_hours 1 < 168"), "{out}");
    let (code, out) = run("ada", &["admin", "checkpoint", "--table", "../../etc"]);
    assert_eq!(code, Some(1), "{out}");

    // Retention removes what is committed: first let every layer take the late file (silver,
    // gold and the federator each wait `server.min_batch_interval_ms` before they look again),
    // else a layer still carrying it writes its rows back after the retention ran. Settled =
    // no table version or input position moved for 4 s.
    let versions = || {
        let (code, out) = run("ada", &["status", "--stats", "--json"]);
        assert_eq!(code, Some(0), "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut seen: Vec<String> = Vec::new();
        for st in v["stages"].as_array().cloned().unwrap_or_default() {
            for t in st["tables"].as_array().cloned().unwrap_or_default() {
                seen.push(format!("{}={}", t["name"], t["version"]));
            }
            for p in st["positions"].as_array().cloned().unwrap_or_default() {
                seen.push(format!("{}@{}={}", p["app_id"], p["output_table"], p["version"]));
            }
        }
        seen.sort();
        seen
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = versions();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(4));
        let now = versions();
        if now == last {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the pipeline never settled: {now:?}");
        last = now;
    }
    // Retention now, with 1 month: the generated traffic (event dates of 2025-11) is older, so
    // every event_date partition goes — from bronze too — while the audit stays.
    let (code, out) = run("ada", &["admin", "retention", "--months", "1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("regions/r1/bronze/billing:"), "{out}");
    // Read from the table itself (an idle stage's status shows the snapshot it last loaded).
    for t in ["regions/r1/bronze/billing", "regions/r1/silver/billing", "regions/r1/gold/billing_usage_hourly"] {
        let left: usize = read(&p.data.join(t).display().to_string()).await.unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!(left, 0, "{t} keeps {left} rows older than the retention");
    }

    // DR switches are admin calls: an operator may not fail a region over.
    let (code, out) = run("otto", &["admin", "failover", "--region", "r1"]);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("needs role admin"), "{out}");
    let (code, out) = run("ada", &["admin", "failover", "--region", "r1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("central now served by secondary"), "{out}");
    let (code, out) = run("ada", &["admin", "failover", "--region", "r1"]);
    assert!(code == Some(0) && out.contains("already serves"), "{out}");
    let (code, out) = run("ada", &["admin", "failback", "--region", "r1"]);
    assert!(code == Some(0) && out.contains("central now served by primary"), "{out}");

    // The audit table: every admin call with who, what and the outcome (refusals are written
    // asynchronously by the authorisation layer: wait for them).
    let want = [
        ("vera.viewer", "PauseFlow", "denied"),
        ("otto.operator", "PauseFlow", "ok"),
        ("otto.operator", "ResumeFlow", "ok"),
        ("otto.operator", "TriggerRun", "ok"),
        ("otto.operator", "TriggerRun", "error"),
        ("otto.operator", "Vacuum", "denied"),
        ("ada.admin", "Checkpoint", "ok"),
        ("ada.admin", "Compact", "ok"),
        ("ada.admin", "EnforceRetention", "ok"),
        ("ada.admin", "Vacuum", "ok"),
        ("ada.admin", "Vacuum", "error"),
        ("ada.admin", "Checkpoint", "error"),
        ("otto.operator", "Failover", "denied"),
        ("ada.admin", "Failover", "ok"),
        ("ada.admin", "Failover", "ok"),
        ("ada.admin", "Failback", "ok"),
    ];
    let audit = p.data.join("_tributary/audit").display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let rows = loop {
        let mut rows: Vec<(String, String, String, String, String)> = Vec::new();
        if let Ok(batches) = read(&audit).await {
            for b in &batches {
                let col = |n: &str| {
                    b.column_by_name(n)
                        .unwrap()
                        .as_any()
                        .downcast_ref::<deltalake::arrow::array::StringArray>()
                        .unwrap()
                        .clone()
                };
                let (c, r, m, o, a) = (col("caller"), col("role"), col("method"), col("outcome"), col("arguments"));
                for i in 0..b.num_rows() {
                    rows.push((
                        c.value(i).into(),
                        r.value(i).into(),
                        m.value(i).into(),
                        o.value(i).into(),
                        a.value(i).into(),
                    ));
                }
            }
        }
        if rows.len() >= want.len() {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "audit rows: {rows:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (who, method, outcome) in want {
        let n = want.iter().filter(|w| **w == (who, method, outcome)).count();
        let got = rows.iter().filter(|r| r.0 == who && r.2 == method && r.3 == outcome).count();
        assert_eq!(got, n, "audit of {who} {method} {outcome}: {rows:?}");
    }
    let pause = rows.iter().find(|r| r.2 == "PauseFlow" && r.3 == "ok").unwrap();
    assert_eq!(pause.1, "operator");
    assert_eq!(pause.4, r#"{"region":"r1","stage":"bronze"}"#);

    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(wait_with_deadline(&mut child, 30).unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_status_requires_a_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = Pipeline::new(&["r1"]);
    p.generate(&GenSpec { events_per_source: 50, files_per_source: 1, seed: 1 }).unwrap();
    let port = free_port();
    let path = |f: &str| pki.path().join(f).display().to_string();
    let mut child = tls_standalone(&p, pki.path(), port)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = |extra: &[String]| {
        let mut c = Command::new(bin());
        c.args(["status", "--addr", &format!("https://localhost:{port}"), "--json"]).args(extra);
        c.output().unwrap()
    };
    let with_cert = vec![
        "--ca-cert".to_string(),
        path("ca.pem"),
        "--client-cert".into(),
        path("client.pem"),
        "--client-key".into(),
        path("client.key"),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = status(&with_cert);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["service"], "standalone");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mTLS status never succeeded: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // TLS without a client certificate: refused.
    let out = status(&["--ca-cert".to_string(), path("ca.pem")]);
    assert!(!out.status.success(), "a client without a certificate was served");
    // Plaintext against the TLS port: refused.
    let out = Command::new(bin()).args(["status", "--addr", &format!("http://127.0.0.1:{port}")]).output().unwrap();
    assert!(!out.status.success(), "plaintext was served on the TLS port");
    // A certificate from another CA: refused.
    let other = tempfile::tempdir().unwrap();
    make_pki(other.path());
    let opath = |f: &str| other.path().join(f).display().to_string();
    let out = status(&[
        "--ca-cert".to_string(),
        path("ca.pem"),
        "--client-cert".into(),
        opath("client.pem"),
        "--client-key".into(),
        opath("client.key"),
    ]);
    assert!(!out.status.success(), "a client certificate from an unknown CA was accepted");

    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let st = wait_with_deadline(&mut child, 30).unwrap();
    assert!(st.success());
    // No key material in the logs.
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!err.contains("PRIVATE KEY"), "key material logged");
}

/// (region, sku, window_start, record_type, customer) -> (dbu at scale 9, events).
type BillingRows = BTreeMap<(String, String, i64, String, String), (i128, i64)>;

/// Billing rows of a gold (or central) billing table.
async fn billing_rows(loc: &str) -> BillingRows {
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::{Decimal128Type, Int64Type, TimestampMicrosecondType};
    let mut out = BTreeMap::new();
    for b in read(loc).await.unwrap() {
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (region, sku, rt, cust) = (s("region"), s("sku"), s("record_type"), s("customer_id"));
        let ws = b.column_by_name("window_start").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
        let dbu = b.column_by_name("dbu").unwrap().as_primitive::<Decimal128Type>().clone();
        let n = b.column_by_name("event_count").unwrap().as_primitive::<Int64Type>().clone();
        for i in 0..b.num_rows() {
            let e = out
                .entry((
                    region.value(i).into(),
                    sku.value(i).into(),
                    ws.value(i),
                    rt.value(i).into(),
                    cust.value(i).into(),
                ))
                .or_insert((0i128, 0i64));
            e.0 += dbu.value(i);
            e.1 += n.value(i);
        }
    }
    out
}

/// Per (region, sku, window, record_type): the totals an invoice is built from.
fn invoice_totals(rows: &BillingRows) -> BTreeMap<(String, String, i64, String), (i128, i64)> {
    let mut out = BTreeMap::new();
    for ((r, s, w, t, _), (d, n)) in rows {
        let e = out.entry((r.clone(), s.clone(), *w, t.clone())).or_insert((0i128, 0i64));
        e.0 += d;
        e.1 += n;
    }
    out
}

/// (rows, rows of `customer`) of a row table.
async fn customer_rows(loc: &str, customer: &str) -> (usize, usize) {
    use deltalake::arrow::array::{Array, AsArray};
    let (mut all, mut theirs) = (0, 0);
    for b in read(loc).await.unwrap() {
        all += b.num_rows();
        let c = b.column_by_name("customer_id").unwrap().as_string::<i32>().clone();
        theirs += (0..b.num_rows()).filter(|i| c.is_valid(*i) && c.value(*i) == customer).count();
    }
    (all, theirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_a_customer_erases_every_layer_keeps_invoices_and_proves_it() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    for (name, cn) in [("otto", "otto.operator"), ("ada", "ada.admin")] {
        client_cert(pki.path(), name, cn);
    }
    let p = Pipeline::new(&["r1", "r2"]);
    p.generate(&GenSpec { events_per_source: 400, files_per_source: 2, seed: 9 }).unwrap();
    p.run_to_completion(&[]).unwrap();
    let cust = "cust-007";
    let cfg = p.config();
    let loc = |rel: &str| p.data.join(rel).display().to_string();
    let mut row_tables: Vec<String> = vec!["central/events".into()];
    for r in ["r1", "r2"] {
        for s in &cfg.bronze.sources {
            row_tables.push(format!("regions/{r}/bronze/{s}"));
            row_tables.push(format!("regions/{r}/silver/{s}"));
        }
    }
    let mut before = BTreeMap::new();
    for t in &row_tables {
        before.insert(t.clone(), customer_rows(&loc(t), cust).await);
    }
    assert!(before["regions/r1/silver/billing"].1 > 0, "the customer has billing rows: {before:?}");
    let billing_tables =
        ["regions/r1/gold/billing_usage_hourly", "regions/r2/gold/billing_usage_daily", "central/billing_usage_hourly"];
    let mut billing_before = BTreeMap::new();
    for t in billing_tables {
        billing_before.insert(t, billing_rows(&loc(t)).await);
    }

    // The pipeline keeps running (continuous, mTLS, roles) while the customer is forgotten.
    let port = free_port();
    let path = |f: &str| pki.path().join(f).display().to_string();
    let metrics_port = free_port();
    let mut child = tls_standalone(&p, pki.path(), port)
        .env("TRIBUTARY__SERVER__ADMIN_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("TRIBUTARY__SERVER__ROLES", r#"{operator = ["otto.operator"], admin = ["ada.admin"]}"#)
        .env("TRIBUTARY__SERVER__POLL_INTERVAL_MS", "200")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run = |who: &str, args: &[&str]| {
        let mut c = Command::new(bin());
        c.arg(args[0])
            .args(["--addr", &format!("https://localhost:{port}"), "--ca-cert", &path("ca.pem")])
            .args(["--client-cert", &path(&format!("{who}.pem")), "--client-key", &path(&format!("{who}.key"))])
            .args(&args[1..]);
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while run("otto", &["status", "--json"]).0 != Some(0) {
        assert!(std::time::Instant::now() < deadline, "the service did not come up");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    // An operator may not forget; an admin may. The id comes on stdin (not in the process list).
    let (code, _, err) = run("otto", &["admin", "forget", "--customer-id", cust]);
    assert_eq!(code, Some(4), "{err}");
    let mut c = Command::new(bin());
    c.args(["admin", "--addr", &format!("https://localhost:{port}"), "--ca-cert", &path("ca.pem")])
        .args(["--client-cert", &path("ada.pem"), "--client-key", &path("ada.key"), "forget", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut ch = c.spawn().unwrap();
    {
        use std::io::Write;
        ch.stdin.take().unwrap().write_all(format!("{cust}\n").as_bytes()).unwrap();
    }
    let out = ch.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "forget failed: {stdout}\n{stderr}");
    let o: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!(
        "forget: {} rows deleted, {} tables, {} files deleted, proof over {} Parquet + {} log files in {:.1}s",
        o["tables"].as_array().unwrap().iter().map(|t| t["rows_deleted"].as_u64().unwrap()).sum::<u64>(),
        o["tables"].as_array().unwrap().len(),
        o["files_deleted"],
        o["proof"]["parquet_files"],
        o["proof"]["log_files"],
        o["seconds"].as_f64().unwrap()
    );
    assert_eq!(o["proof"]["hits"], serde_json::json!([]), "{o}");
    assert!(o["proof"]["parquet_files"].as_u64().unwrap() > 20, "{o}");
    assert!(o["files_deleted"].as_u64().unwrap() > 0, "{o}");
    let request_id = o["request_id"].as_str().unwrap().to_string();
    let tag = format!("forgotten:{request_id}");
    let per_table: BTreeMap<String, serde_json::Value> =
        o["tables"].as_array().unwrap().iter().map(|t| (t["table"].as_str().unwrap().to_string(), t.clone())).collect();
    // Exactly the customer's rows went from every row table, nothing else.
    for t in &row_tables {
        let (all, theirs) = before[t];
        let deleted = per_table.get(t).map(|x| x["rows_deleted"].as_u64().unwrap()).unwrap_or(0) as usize;
        assert_eq!(deleted, theirs, "{t}: rows deleted");
        assert_eq!(customer_rows(&loc(t), cust).await, (all - theirs, 0), "{t} after the erasure");
    }
    // Invoices stay reproducible: the same totals per (region, sku, window, record type); the
    // customer's rows are now the tag's, with the customer's own totals.
    for t in billing_tables {
        let (b, a) = (&billing_before[t], billing_rows(&loc(t)).await);
        assert_eq!(invoice_totals(b), invoice_totals(&a), "{t}: invoice totals changed");
        let theirs: BTreeMap<_, _> = b
            .iter()
            .filter(|(k, _)| k.4 == cust)
            .map(|(k, v)| ((k.0.clone(), k.1.clone(), k.2, k.3.clone()), *v))
            .collect();
        let tagged: BTreeMap<_, _> = a
            .iter()
            .filter(|(k, _)| k.4 == tag)
            .map(|(k, v)| ((k.0.clone(), k.1.clone(), k.2, k.3.clone()), *v))
            .collect();
        assert!(!theirs.is_empty(), "{t}: the customer had no billing rows");
        assert_eq!(theirs, tagged, "{t}: the customer's totals kept under the tag");
        assert!(!a.keys().any(|k| k.4 == cust), "{t}");
    }

    // Independent proof: every Parquet file under data_root read by pyarrow, every table by the
    // Python deltalake reader (the live snapshots stay readable after the files were deleted).
    let python = std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/scan_for_token.py");
    let scan = Command::new(&python).arg(&script).arg(&p.data).arg(cust).output().unwrap();
    assert!(scan.status.success(), "{}", String::from_utf8_lossy(&scan.stderr));
    let scan: serde_json::Value = serde_json::from_slice(&scan.stdout).unwrap();
    assert_eq!(scan["hits"], serde_json::json!([]), "Parquet files still holding the customer");
    assert!(scan["parquet_files"].as_u64().unwrap() > 20);
    for t in &row_tables {
        let (all, theirs) = before[t];
        assert_eq!(scan["tables"][t].as_u64(), Some((all - theirs) as u64), "{t} read by Python");
    }
    // Nor does the Delta log hold the id (no text statistics; commit metadata names the request).
    let mut logs = Vec::new();
    let mut stack = vec![p.data.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.path().parent().is_some_and(|d| d.ends_with("_delta_log")) {
                logs.push(e.path());
            }
        }
    }
    assert!(logs.len() > 20);
    for l in &logs {
        let s = std::fs::read(l).unwrap();
        assert!(
            !s.windows(cust.len() + 1).any(|w| w == format!("{cust}\"").as_bytes()),
            "{} names the customer",
            l.display()
        );
    }

    // The request and its 7-day deadline; the audit names the customer by hash only.
    let (code, status, err) = run("otto", &["admin", "forget-status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let list: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    let req = &list.as_array().unwrap()[0];
    assert_eq!(req["request_id"], request_id.as_str());
    assert_eq!(req["status"], "completed");
    assert_eq!(req["overdue"], false);
    assert_eq!(req["deadline_us"].as_i64().unwrap() - req["requested_at_us"].as_i64().unwrap(), 7 * 86_400_000_000);
    assert!(req["completed_at_us"].as_i64().is_some());
    // The deadline gauge the overdue alert reads: the request is neither open nor overdue.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, page) = http_get(metrics_port, "/metrics").unwrap();
        if page.contains("tributary_erasure_requests{state=\"open\"} 0")
            && page.contains("tributary_erasure_requests{state=\"overdue\"} 0")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no erasure gauge: {}",
            page.lines().filter(|l| l.contains("erasure")).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // Repeating the request finds nothing left and stays completed.
    let (code, again, err) =
        run("ada", &["admin", "forget", "--customer-id", cust, "--request-id", &request_id, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let again: serde_json::Value = serde_json::from_str(again.trim()).unwrap();
    assert_eq!(again["tables"], serde_json::json!([]), "{again}");
    // A request id belongs to one customer.
    let (code, _, err) = run("ada", &["admin", "forget", "--customer-id", "cust-008", "--request-id", &request_id]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("another customer"), "{err}");
    let hash = tributary_delta::forget::customer_hash(cust);
    let audit = read(&loc("_tributary/audit")).await.unwrap();
    let mut forgets = Vec::new();
    for b in &audit {
        use deltalake::arrow::array::AsArray;
        let (m, a, o) = (
            b.column_by_name("method").unwrap().as_string::<i32>(),
            b.column_by_name("arguments").unwrap().as_string::<i32>(),
            b.column_by_name("outcome").unwrap().as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            if m.value(i) == "Forget" && o.value(i) == "ok" {
                assert!(a.value(i).contains(&hash), "{}", a.value(i));
                forgets.push(a.value(i).to_string());
            }
        }
    }
    assert_eq!(forgets.len(), 2, "{forgets:?}");

    // A backfill through the admin RPC, its progress streamed: admin only, landing zones under
    // data_root only.
    let archive = p.data.join("archive/billing");
    std::fs::create_dir_all(&archive).unwrap();
    let lines: String = (0..20)
        .map(|i| format!("{{\"event_id\":\"bf-{i}\",\"event_time\":\"2025-11-01T02:00:00Z\",\"region\":\"r1\",\"workspace_id\":\"w1\",\"customer_id\":\"c1\",\"sku\":\"STD\",\"dbu\":1}}\n"))
        .collect();
    std::fs::write(archive.join("late.ndjson"), lines).unwrap();
    let bf = |who: &str, landing: &str| {
        run(
            who,
            &[
                "admin",
                "backfill",
                "--region",
                "r1",
                "--source",
                "billing",
                "--from",
                "2000-01-01T00:00:00Z",
                "--to",
                "2100-01-01T00:00:00Z",
                "--landing",
                landing,
                "--json",
            ],
        )
    };
    assert_eq!(bf("otto", "archive").0, Some(4));
    let (code, _, err) = bf("ada", "../../etc");
    assert_eq!(code, Some(1), "{err}");
    let (code, out, err) = bf("ada", "archive");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("] 1/1 files"), "the progress bar: {err}");
    let prog: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((prog["files_done"].as_u64(), prog["rows"].as_u64()), (Some(1), Some(20)), "{prog}");
    // The pipeline ran on throughout.
    assert_eq!(run("otto", &["status", "--json"]).0, Some(0));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(wait_with_deadline(&mut child, 30).unwrap().success());
}
