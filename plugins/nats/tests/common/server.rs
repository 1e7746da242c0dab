//! A `nats-server` of a test's own on a free port, with its own store directory, which the
//! test can kill or stop and start again on the same port and store.

use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::time::Duration;

use micro_testkit::{PrivateServer, accepts};

/// A private (JetStream) server; killed, and its store removed, when dropped. Kill, stop,
/// restart and its log are [`PrivateServer`]'s.
#[derive(Debug)]
pub struct PrivateNats {
    /// `nats://127.0.0.1:<port>`.
    pub address: String,
    server: PrivateServer,
}

impl PrivateNats {
    /// Starts `nats-server -js` on a free port and waits until it accepts connections.
    pub fn start() -> PrivateNats {
        Self::launch(true)
    }

    /// Starts `nats-server` without JetStream on a free port.
    pub fn start_without_jetstream() -> PrivateNats {
        Self::launch(false)
    }

    fn launch(jetstream: bool) -> PrivateNats {
        let command = move |port: u16, dir: &std::path::Path| {
            let mut command = Command::new("nats-server");
            command.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
            if jetstream {
                command.arg("-js").arg("-sd").arg(dir.join("store"));
            }
            command
        };
        let server = PrivateServer::start("nats-server", Duration::from_secs(20), command, accepts);
        PrivateNats {
            address: format!("nats://127.0.0.1:{}", server.port),
            server,
        }
    }
}

impl Deref for PrivateNats {
    type Target = PrivateServer;

    fn deref(&self) -> &PrivateServer {
        &self.server
    }
}

impl DerefMut for PrivateNats {
    fn deref_mut(&mut self) -> &mut PrivateServer {
        &mut self.server
    }
}
