//! Where things are: the repository, the fixtures, the pinned agent
//! binaries the install scripts provide, scratch directories and free
//! loopback ports. Every other harness file builds on these.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Read a fixture from tests/fixtures.
pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures").join(path))
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// Run `scripts/<script> <args>` and return the path on the last line of
/// its output (`NAME=path`): the pinned binary it built or found.
pub fn provide(script: &str, args: &[&str]) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{script} {} failed",
        args.join(" ")
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().expect("a BIN= line");
    PathBuf::from(line.split_once('=').expect("NAME=path").1.trim())
}

/// A scratch directory removed on drop (tempfile's, named for the test).
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tagbridge-test-{tag}-"))
            .tempdir()
            .expect("mkdir temp");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
    pub fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, data).expect("write temp file");
        p
    }
}

/// Reserve `n` distinct free loopback ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<StdListener> = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0").expect("bind :0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}
