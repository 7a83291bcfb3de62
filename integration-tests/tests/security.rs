//! TLS and mTLS on the gRPC status/health/reflection server, with certificates made by openssl.

use integration_tests::*;
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
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN=tributary-{who}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_status_requires_a_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = Pipeline::new(&["r1"]);
    p.generate(&GenSpec { events_per_source: 50, files_per_source: 1, seed: 1 }).unwrap();
    let port = free_port();
    let path = |f: &str| pki.path().join(f).display().to_string();
    let mut child = p
        .command(&["standalone", "--grpc-addr", &format!("127.0.0.1:{port}")])
        .env("TRIBUTARY__SERVER__TLS__CERT_PATH", path("server.pem"))
        .env("TRIBUTARY__SERVER__TLS__KEY_PATH", path("server.key"))
        .env("TRIBUTARY__SERVER__TLS__CLIENT_CA_PATH", path("ca.pem"))
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
