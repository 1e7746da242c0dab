//! TLS to RabbitMQ: `amqps://` addresses, verified against the CA of `--client-tls-ca` (the
//! system's roots when none is given), presenting `--client-tls-cert`/`--client-tls-key` when
//! set (RabbitMQ's `ssl_options.verify = verify_peer`). Never skips verification, never falls
//! back to plaintext.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use micro_core::tls::{ClientTlsFiles, Peer};
use micro_core::{Error, Result};

/// RabbitMQ as TLS errors name it, and where it is told the CAs of the client certificates it
/// takes.
const RABBITMQ: Peer<'static> = Peer {
    name: "RabbitMQ",
    client_ca_setting: "ssl_options.cacertfile",
};

/// The client side of TLS to RabbitMQ: the CA certificates RabbitMQ's certificate must be
/// signed by (PEM; the system's roots when `None`) and the certificate and key this client
/// presents (PEM, for a listener with `ssl_options.verify = verify_peer`). Used only for
/// `amqps://` addresses; the files are read on every (re)connection, so rotated files are
/// picked up without a restart.
///
/// ```
/// let tls = micro_rabbitmq::RabbitTls::new()
///     .with_ca("/etc/micro/rabbitmq-ca.pem")
///     .with_identity("/etc/micro/client.pem", "/etc/micro/client.key");
/// assert!(tls.ca.is_some() && tls.cert.is_some() && tls.key.is_some());
/// ```
pub type RabbitTls = ClientTlsFiles;

/// lapin's TLS configuration, after checking the files load (an error names the option and the
/// file): the CA alone is trusted when given, else the system's roots.
pub(crate) fn lapin(tls: &RabbitTls) -> Result<OwnedTLSConfig> {
    let pem = tls.pem()?;
    let cert_chain = match (pem.ca, &tls.ca) {
        (Some(ca), Some(path)) => String::from_utf8(ca).map_err(|e| {
            Error::Option(format!(
                "option `client-tls-ca`: `{}` is not PEM text: {e}",
                path.display()
            ))
        })?,
        _ => system_roots()?,
    };
    Ok(OwnedTLSConfig {
        identity: pem
            .identity
            .map(|(cert, key)| OwnedIdentity::PKCS8 { pem: cert, key }),
        cert_chain: Some(cert_chain),
    })
}

/// Why a connection over TLS failed, in words that say which option fixes it; `None` when
/// `error` is not a TLS problem.
pub(crate) fn explain(
    tls: &RabbitTls,
    error: &(dyn std::error::Error + 'static),
) -> Option<String> {
    tls.client().ok()?.explain(RABBITMQ, error)
}

/// Why the TLS connection to `address` (an `amqps://` URL) fails, found by connecting once more
/// (see [`ClientTls::diagnose`](micro_core::tls::ClientTls::diagnose)): the AMQP client may see
/// a closed connection rather than the server's alert. `None` when it shows no TLS problem.
pub(crate) async fn diagnose(tls: &RabbitTls, address: &str) -> Option<String> {
    let uri: lapin::uri::AMQPUri = address.trim().parse().ok()?;
    let host = &uri.authority.host;
    let target = if host.contains(':') {
        format!("[{host}]:{}", uri.authority.port)
    } else {
        format!("{host}:{}", uri.authority.port)
    };
    tls.client().ok()?.diagnose(&target, RABBITMQ).await
}

/// Whether `address` is an `amqps://` URL.
pub(crate) fn is_amqps(address: &str) -> bool {
    address
        .trim_start()
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("amqps://"))
}

/// The system's root certificates as PEM text (what lapin takes).
fn system_roots() -> Result<String> {
    let mut pem = String::new();
    for cert in micro_core::tls::system_certificates()? {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = BASE64.encode(cert.as_ref());
        let mut rest = encoded.as_str();
        while !rest.is_empty() {
            let (line, tail) = rest.split_at(rest.len().min(64));
            pem.push_str(line);
            pem.push('\n');
            rest = tail;
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqps_is_told_by_its_scheme() {
        assert!(is_amqps("amqps://h:5671/%2f"));
        assert!(is_amqps(" AMQPS://h"));
        assert!(!is_amqps("amqp://h:5672/%2f"));
        assert!(!is_amqps("amqp"));
    }
}
