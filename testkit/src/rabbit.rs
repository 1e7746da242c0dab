//! A RabbitMQ node of a test's own, beside the machine's (which other tests use and this one
//! leaves alone): its own node name, ports, data, log, configuration and Erlang cookie, with a
//! TLS listener whose certificate comes from the test's CA.

use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::TestPki;
use crate::server::{accepts, free_port};

/// How long a node may take to boot (about 10 s on an idle machine; much longer while cargo
/// builds on every core).
const BOOT: Duration = Duration::from_secs(120);

/// The real start script on Debian; `/usr/sbin/rabbitmq-server` is a wrapper that switches to
/// the `rabbitmq` user, who could not read the test's directories.
const DEBIAN_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A RabbitMQ node on free ports, listening on `127.0.0.1` for AMQP and for AMQP over TLS
/// (`listeners.ssl`, `verify_peer`, `fail_if_no_peer_cert`: clients must present a certificate
/// signed by the test's CA), with no plugins (no management). Killed, and its directory
/// removed, when dropped (also when a test panics); a test process that dies without dropping
/// it closes the node's standard input, on which the node halts by itself.
///
/// Needs RabbitMQ installed (`rabbitmq-server`; `MICRO_RABBITMQ_SERVER` names the start script
/// if it is elsewhere). The account is `guest`/`guest`, which RabbitMQ accepts from localhost.
pub struct PrivateRabbit {
    /// `amqps://guest:guest@127.0.0.1:<port>/%2f`: the TLS listener.
    pub amqps: String,
    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`: the plaintext listener.
    pub amqp: String,
    /// The Erlang node name (`micro-test-<pid>-<random>@localhost`).
    pub node: String,
    dir: PathBuf,
    process: Child,
    /// Held open: the node halts when it closes.
    _input: ChildStdin,
}

impl std::fmt::Debug for PrivateRabbit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateRabbit")
            .field("node", &self.node)
            .field("amqps", &self.amqps)
            .field("amqp", &self.amqp)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PrivateRabbit {
    /// Starts a node whose TLS listener presents a certificate issued by `pki` and requires
    /// client certificates signed by `pki`'s CA, and waits until it answers AMQP on both
    /// listeners. RabbitMQ reads the files when it starts.
    pub fn start_tls(pki: &TestPki) -> PrivateRabbit {
        let dir = std::env::temp_dir().join(format!(
            "micro-test-rabbitmq-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create the node's directories");
        }
        let server = pki.issue("rabbitmq-server", "rabbitmq");
        let (amqp, amqps, dist) = (free_port(), free_port(), free_port());
        let config = dir.join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 listeners.ssl.default = 127.0.0.1:{amqps}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n",
                pki.ca().display(),
                server.cert.display(),
                server.key.display(),
            ),
        )
        .expect("write rabbitmq.conf");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        // An empty environment file: the machine's (/etc/rabbitmq/rabbitmq-env.conf) names the
        // machine's node.
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("write rabbitmq-env.conf");
        let node = format!(
            "micro-test-{}-{:08x}@localhost",
            std::process::id(),
            fastrand::u32(..)
        );
        let log_path = dir.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("create the node's log");
        let script = std::env::var_os("MICRO_RABBITMQ_SERVER")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from(DEBIAN_SCRIPT)).filter(|p| p.exists()))
            .unwrap_or_else(|| PathBuf::from("rabbitmq-server"));
        let mut process = Command::new(&script)
            .current_dir(&dir)
            // Its own Erlang cookie, in its own home.
            .env("HOME", &dir)
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", amqp.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_LOGS", "-")
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            // The Erlang VM is started directly (no signal-forwarding shell), with its shell
            // reading the pipe below: when it closes, the node halts.
            .env("RABBITMQ_ALLOW_INPUT", "1")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("the node's log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start RabbitMQ ({}; install rabbitmq-server, or set MICRO_RABBITMQ_SERVER): {e}",
                    script.display()
                )
            });
        let input = process.stdin.take().expect("the node's standard input");
        let mut rabbit = PrivateRabbit {
            amqps: format!("amqps://guest:guest@127.0.0.1:{amqps}/%2f"),
            amqp: format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
            node,
            dir,
            process,
            _input: input,
        };
        rabbit.wait_until_ready(amqp, amqps);
        rabbit
    }

    fn wait_until_ready(&mut self, amqp: u16, amqps: u16) {
        let until = Instant::now() + BOOT;
        // The TLS listener starts right after the plaintext one, at the end of the boot.
        while !(speaks_amqp(amqp) && accepts(amqps)) {
            if let Ok(Some(status)) = self.process.try_wait() {
                panic!(
                    "the private RabbitMQ {} exited while booting ({status}); log:\n{}",
                    self.node,
                    self.log()
                );
            }
            assert!(
                Instant::now() < until,
                "the private RabbitMQ {} does not answer on 127.0.0.1:{amqp} and :{amqps} within {BOOT:?}; log:\n{}",
                self.node,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    /// Its own directory (data, logs, configuration).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

/// Whether something on `127.0.0.1:<port>` answers the AMQP 0-9-1 protocol header with a
/// method frame (`connection.start`): RabbitMQ has booted, not just bound the port.
fn speaks_amqp(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut frame_type = [0u8; 1];
    stream.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
        && stream.read_exact(&mut frame_type).is_ok()
        && frame_type[0] == 1
}
