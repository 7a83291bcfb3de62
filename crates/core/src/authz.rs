//! Authorisation of gRPC calls by the caller's mTLS client certificate.
//!
//! The role of a caller is looked up by the Common Name of its client certificate's subject in
//! `server.roles` (role -> CNs); roles are ordered viewer < operator < admin. [`AuthzLayer`] is a
//! tower layer over the whole gRPC router: an `Admin` method needs its role (pause/resume:
//! operator; checkpoint/vacuum: admin), every other method viewer — but only once roles are
//! configured (without `server.roles` the read-only services stay open as before and every admin
//! call is refused). The caller, when known, is put in the request's extensions ([`Caller`]) for
//! the audit record. The certificate itself was verified by the TLS handshake against
//! `server.tls.client_ca_path`; here only its subject is read, with a small DER reader that
//! refuses anything malformed.

use crate::metrics::Metrics;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "viewer" => Self::Viewer,
            "operator" => Self::Operator,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// Who called: the certificate's CN (empty without a client certificate) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub cn: String,
    pub role: Option<Role>,
}

/// The role a gRPC method needs.
pub fn required_role(path: &str) -> Role {
    match path {
        "/tributary.v1.Admin/PauseFlow"
        | "/tributary.v1.Admin/ResumeFlow"
        | "/tributary.v1.Admin/TriggerRun"
        | "/tributary.v1.Admin/ForgetStatus" => Role::Operator,
        p if p.starts_with("/tributary.v1.Admin/") => Role::Admin,
        _ => Role::Viewer,
    }
}

/// CN -> role, from `server.roles` (role -> CNs); a CN listed under several roles gets the highest.
pub fn role_table(roles: &BTreeMap<String, Vec<String>>) -> crate::Result<BTreeMap<String, Role>> {
    let mut out = BTreeMap::new();
    for (role, cns) in roles {
        let r = Role::parse(role).ok_or_else(|| {
            crate::Error::user(format!("server.roles: unknown role {role:?} (viewer, operator, admin)"))
        })?;
        for cn in cns {
            let e = out.entry(cn.clone()).or_insert(r);
            *e = (*e).max(r);
        }
    }
    Ok(out)
}

pub use crate::der::subject_cn;

#[derive(Clone)]
pub struct AuthzLayer {
    roles: Arc<BTreeMap<String, Role>>,
}

impl AuthzLayer {
    pub fn new(roles: BTreeMap<String, Role>) -> Self {
        Self { roles: Arc::new(roles) }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authz { inner, roles: self.roles.clone() }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    roles: Arc<BTreeMap<String, Role>>,
}

impl<S, B> Service<http::Request<B>> for Authz<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let need = required_role(&path);
        let cn = req
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|certs| certs.first().and_then(|c| subject_cn(c.as_ref())));
        let role = cn.as_ref().and_then(|cn| self.roles.get(cn).copied());
        let allowed = match need {
            // Read-only services stay open until roles are configured.
            Role::Viewer if self.roles.is_empty() => true,
            _ => role.is_some_and(|r| r >= need),
        };
        if !allowed {
            let who = cn.clone().unwrap_or_else(|| "<no client certificate>".into());
            tracing::warn!(path = %path, caller = %who, role = ?role.map(Role::as_str), need = need.as_str(), "gRPC call refused");
            Metrics::global()
                .grpc_requests
                .get_or_create(&crate::metrics::GrpcLabels { path: path.clone(), code: "denied".into() })
                .inc();
            let status = if cn.is_none() {
                tonic::Status::unauthenticated(format!("{path} needs a client certificate with role {}", need.as_str()))
            } else if self.roles.is_empty() {
                tonic::Status::permission_denied(format!("{path}: no server.roles configured: admin calls are refused"))
            } else {
                tonic::Status::permission_denied(format!(
                    "{path} needs role {}; {who} has {}",
                    need.as_str(),
                    role.map(Role::as_str).unwrap_or("none")
                ))
            };
            // The refusal is audited by the Admin service's hook when it is an admin call.
            if path.starts_with("/tributary.v1.Admin/") {
                crate::server::audit_refusal(&path, &who, role, &status);
            }
            return Box::pin(async move { Ok(status.into_http()) });
        }
        req.extensions_mut().insert(Caller { cn: cn.unwrap_or_default(), role });
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec ... -subj "/O=Tributary Test/OU=ops/CN=ada.admin"`, DER.
    const CERT_B64: &str = "MIIByzCCAXGgAwIBAgIUZL2BqM6WAaYZt0bi2XuvqJUvsWswCgYIKoZIzj0EAwIwOzEXMBUGA1UECgwOVHJpYnV0YXJ5IFRlc3QxDDAKBgNVBAsMA29wczESMBAGA1UEAwwJYWRhLmFkbWluMB4XDTI2MTEyMzE5NDgyN1oXDTM2MTEyMDE5NDgyN1owOzEXMBUGA1UECgwOVHJpYnV0YXJ5IFRlc3QxDDAKBgNVBAsMA29wczESMBAGA1UEAwwJYWRhLmFkbWluMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAENiLQvLnWHb6l/jsA8N96enBmentBpaWSDXVxUNx8qLqXbphD9sGUZZi2I1UcMnsrlWAkycNCFUgA9Hu5ObOxCKNTMFEwHQYDVR0OBBYEFK0qJB3J0u4tZXerRzAwA9LD8GRaMB8GA1UdIwQYMBaAFK0qJB3J0u4tZXerRzAwA9LD8GRaMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgTv/WKtU3hzZZlbnTNPZ142swIAuF/jSYYqGJ0AUh+pUCIQDT/90EeKRbx2DohmQBNkd9M2oKbMo4Celo4bOyylJhdA==";

    fn b64(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let s: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
        let mut out = Vec::new();
        for chunk in s.chunks(4) {
            let mut n = 0u32;
            for (i, c) in chunk.iter().enumerate() {
                n |= (val(*c) as u32) << (18 - 6 * i);
            }
            out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
        }
        out
    }

    #[test]
    fn the_subject_cn_of_a_real_certificate_not_the_issuers() {
        let der = b64(CERT_B64);
        assert_eq!(subject_cn(&der).as_deref(), Some("ada.admin"));
    }

    #[test]
    fn malformed_der_is_refused_never_a_panic() {
        let der = b64(CERT_B64);
        for cut in 0..der.len() {
            // Truncations either still parse (trailing signature cut) or give None.
            let _ = subject_cn(&der[..cut]);
        }
        for i in 0..der.len() {
            let mut d = der.clone();
            d[i] ^= 0xff;
            let _ = subject_cn(&d);
        }
        assert_eq!(subject_cn(&[]), None);
        assert_eq!(subject_cn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_cn(&[0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9]), None);
    }

    #[test]
    fn roles_are_ordered_and_a_method_needs_its_role() {
        let t = role_table(&BTreeMap::from([
            ("viewer".to_string(), vec!["vera".to_string(), "otto".to_string()]),
            ("operator".to_string(), vec!["otto".to_string()]),
            ("admin".to_string(), vec!["ada".to_string()]),
        ]))
        .unwrap();
        assert_eq!(t["otto"], Role::Operator, "the highest role wins");
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!(required_role("/tributary.v1.Admin/PauseFlow"), Role::Operator);
        assert_eq!(required_role("/tributary.v1.Admin/Vacuum"), Role::Admin);
        assert_eq!(required_role("/tributary.v1.Admin/Forget"), Role::Admin);
        assert_eq!(required_role("/tributary.v1.Admin/ForgetStatus"), Role::Operator);
        assert_eq!(required_role("/tributary.v1.PipelineStatus/GetStatus"), Role::Viewer);
        assert!(role_table(&BTreeMap::from([("root".to_string(), vec![])])).is_err());
    }
}
