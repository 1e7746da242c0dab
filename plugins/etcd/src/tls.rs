//! TLS to etcd: `https://` endpoints, verified against the CA of `--client-tls-ca` (the
//! system's roots when none is given), presenting `--client-tls-cert`/`--client-tls-key` when
//! set (etcd's `--client-cert-auth`). Never skips verification, never falls back to plaintext.

use etcd_client::{Certificate, Identity, TlsOptions};
use micro_core::tls::{ClientTlsFiles, Peer};
use micro_core::{Error, Result};

use crate::NAME;

const HTTPS: &str = "https://";

/// etcd as TLS errors name it, and where it is told the CAs of the client certificates it takes.
const ETCD: Peer<'static> = Peer {
    name: "etcd",
    client_ca_setting: "--trusted-ca-file",
};

/// The client side of TLS to etcd: the CA certificates etcd's certificate must be signed by
/// (PEM; the system's roots when `None`) and the certificate and key this client presents
/// (PEM, for an etcd started with `--client-cert-auth`). Used only for `https://` endpoints;
/// the files are read when connecting.
///
/// ```
/// let tls = micro_etcd::EtcdTls::new()
///     .with_ca("/etc/micro/etcd-ca.pem")
///     .with_identity("/etc/micro/client.pem", "/etc/micro/client.key");
/// assert!(tls.ca.is_some() && tls.cert.is_some() && tls.key.is_some());
/// ```
pub type EtcdTls = ClientTlsFiles;

/// The TLS options of etcd-client (tonic over rustls, ALPN `h2`), after checking the files load
/// (an error names the option and the file).
pub(crate) fn tonic(tls: &EtcdTls) -> Result<TlsOptions> {
    let pem = tls.pem()?;
    let mut options = match pem.ca {
        Some(ca) => TlsOptions::new().ca_certificate(Certificate::from_pem(ca)),
        None => TlsOptions::new().with_native_roots(),
    };
    if let Some((cert, key)) = pem.identity {
        options = options.identity(Identity::from_pem(cert, key));
    }
    Ok(options)
}

/// Why a connection over TLS failed, in words that say which option fixes it; `None` when
/// `error` is not a TLS problem.
pub(crate) fn explain(tls: &EtcdTls, error: &(dyn std::error::Error + 'static)) -> Option<String> {
    // etcd-client's error does not give its gRPC status as its source.
    let error: &(dyn std::error::Error + 'static) = match error.downcast_ref() {
        Some(etcd_client::Error::GRpcStatus(status)) => status,
        _ => error,
    };
    tls.client().ok()?.explain(ETCD, error)
}

/// Why the TLS connections to `endpoints` fail, found by connecting to each once more (see
/// [`ClientTls::diagnose`](micro_core::tls::ClientTls::diagnose)): the gRPC client may see a
/// closed connection rather than etcd's alert. `None` when no endpoint shows a TLS problem.
pub(crate) async fn diagnose(tls: &EtcdTls, endpoints: &[String]) -> Option<String> {
    let client = tls.client().ok()?;
    for endpoint in endpoints {
        let address = endpoint
            .get(HTTPS.len()..)
            .unwrap_or(endpoint)
            .trim_end_matches('/');
        if let Some(why) = client.diagnose(address, ETCD).await {
            return Some(format!("{endpoint}: {why}"));
        }
    }
    None
}

/// Whether `endpoints` are to be dialed over TLS: all `https://` (true), or none (false; bare
/// `host:port` is plaintext). A mix is an error naming the endpoints of each kind.
pub(crate) fn secure(component: &'static str, endpoints: &[String]) -> Result<bool> {
    let (secure, plain): (Vec<&String>, Vec<&String>) =
        endpoints.iter().partition(|e| e.starts_with(HTTPS));
    match (secure.is_empty(), plain.is_empty()) {
        (_, true) => Ok(true),
        (true, _) => Ok(false),
        (false, false) => Err(Error::Option(format!(
            "{NAME} {component}: the endpoints mix TLS ({}) and plaintext ({}): give every endpoint as https:// or none",
            join(&secure),
            join(&plain)
        ))),
    }
}

fn join(endpoints: &[&String]) -> String {
    endpoints
        .iter()
        .map(|e| e.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(endpoints: &[&str]) -> Vec<String> {
        endpoints.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn tls_is_all_or_nothing() {
        assert!(secure("store", &list(&["https://a:1", "https://b:2"])).unwrap());
        assert!(!secure("store", &list(&["a:1", "http://b:2"])).unwrap());
        let err = secure("store", &list(&["https://a:1", "b:2", "http://c:3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("etcd store")
                && err.contains("TLS (https://a:1)")
                && err.contains("plaintext (b:2, http://c:3)"),
            "{err}"
        );
    }
}
