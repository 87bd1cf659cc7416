//! Real processes for the integration tests that need them: free loopback ports, a `redis-server`
//! (Debian's package; scripts/test installs it) killed when dropped, certificates made by
//! tests/support/pki.sh and a Redis Cluster made by tests/support/redis/cluster.sh.
//! Shared by the root package's tests and crates/redis-store's.

#![allow(dead_code)] // Each test file uses a different part.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// tests/support/redis/, found from the package being tested (the root or a crate below it).
pub fn redis_scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("tests/support/redis"))
        .find(|dir| dir.join("cluster.sh").is_file())
        .expect("tests/support/redis/cluster.sh above the package")
}

/// A test PKI in `dir` (tests/support/pki.sh): ca, server (localhost, 127.0.0.1), client,
/// other-ca, other-client; `.crt` and `.key` each.
pub fn make_certificates(dir: &Path) -> PathBuf {
    let status = Command::new(redis_scripts().join("../pki.sh"))
        .arg(dir)
        .status()
        .expect("bash and openssl");
    assert!(status.success(), "pki.sh failed");
    dir.to_owned()
}

/// A redis-server, killed on drop (a crash, for the store).
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Plain TCP on `port`, without persistence; waits until it accepts connections.
    pub fn start(port: u16) -> RedisServer {
        RedisServer::start_with(port, &[])
    }

    /// Plain TCP on `port`, without persistence unless `extra` turns it on (later options win).
    pub fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let port_arg = port.to_string();
        let mut args = vec!["--port", &port_arg];
        args.extend_from_slice(extra);
        RedisServer::spawn(port, &args)
    }

    /// TLS only on `port` with the certificates of `pki` (client certificates checked when
    /// presented, required with `--tls-auth-clients yes` in `extra`).
    pub fn start_tls(port: u16, pki: &Path, extra: &[&str]) -> RedisServer {
        let port_arg = port.to_string();
        let file = |name: &str| pki.join(name).to_string_lossy().into_owned();
        let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
        let mut args = vec![
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "optional",
        ];
        args.extend_from_slice(extra);
        RedisServer::spawn(port, &args)
    }

    fn spawn(port: u16, args: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs Debian's redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, port }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 6-node Redis Cluster (3 masters + 3 replicas) on loopback, stopped on drop.
pub struct RedisCluster {
    pub dir: PathBuf,
    pub ports: Vec<u16>,
}

impl RedisCluster {
    /// `cluster.sh up DIR ARGS` (e.g. `--tls --acl`, `--node-timeout 2000`).
    pub fn up(dir: &Path, args: &[&str]) -> RedisCluster {
        let out = RedisCluster::script(&["up", &dir.to_string_lossy()], args);
        let ports = out
            .split_whitespace()
            .map(|p| p.parse().expect("cluster.sh up prints the ports"))
            .collect();
        RedisCluster {
            dir: dir.to_owned(),
            ports,
        }
    }

    fn script(first: &[&str], rest: &[&str]) -> String {
        let out = Command::new(redis_scripts().join("cluster.sh"))
            .args(first)
            .args(rest)
            .stderr(Stdio::inherit())
            .output()
            .expect("bash");
        assert!(out.status.success(), "cluster.sh {first:?} {rest:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs `cluster.sh CMD DIR ARGS` and returns its output.
    pub fn run(&self, cmd: &str, args: &[&str]) -> String {
        RedisCluster::script(&[cmd, &self.dir.to_string_lossy()], args)
    }

    /// `redis-cli` on node `n` (1-6).
    pub fn cli(&self, n: usize, args: &[&str]) -> String {
        let n = n.to_string();
        let mut all = vec![n.as_str()];
        all.extend_from_slice(args);
        self.run("cli", &all)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new(redis_scripts().join("cluster.sh"))
            .args(["down", &self.dir.to_string_lossy()])
            .status();
    }
}
