//! A real OCI registry on loopback: `crane registry serve` from
//! go-containerregistry (built once by scripts/install-crane.sh), with
//! images pushed by crane itself.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::agents::Watched;
use super::http1::blocking_get_status;
use super::paths::{free_ports, provide, TempDir};
use super::wait::wait;

/// Path of the pinned crane binary (built once, then cached).
pub fn crane_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| provide("install-crane.sh", &[])).clone()
}

/// `crane registry serve` on a free loopback port, stopped on drop.
pub struct CraneRegistry {
    pub port: u16,
    pub dir: TempDir,
    _proc: Watched,
}

impl CraneRegistry {
    pub fn start() -> Self {
        let dir = TempDir::new("registry");
        let port = free_ports(1)[0];
        let args = vec![
            "registry".to_string(),
            "serve".to_string(),
            format!("--address=127.0.0.1:{port}"),
        ];
        let proc = Watched::spawn(&crane_bin(), &args, &dir.path().join("crane.log"), &[]);
        let reg = CraneRegistry {
            port,
            dir,
            _proc: proc,
        };
        let v2 = format!("{}/v2/", reg.addr());
        wait("the crane registry to answer", Duration::from_secs(20))
            .every(Duration::from_millis(50))
            .until(|| matches!(blocking_get_status(&v2), Ok((200, _))));
        reg
    }

    /// `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Run crane with these arguments; panics with its output on failure.
    /// crane talks plain http to loopback registries by itself.
    pub fn crane(&self, args: &[&str]) -> String {
        let out = Command::new(crane_bin())
            .args(args)
            .output()
            .expect("run crane");
        assert!(
            out.status.success(),
            "crane {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `127.0.0.1:<port>/<repository>:<tag>`.
    pub fn reference(&self, repository: &str, tag: &str) -> String {
        format!("127.0.0.1:{}/{repository}:{tag}", self.port)
    }

    /// Push a one-layer image (an empty layer) as `repository:tag`; return
    /// its digest.
    pub fn push_empty(&self, repository: &str, tag: &str) -> String {
        let layer = self.dir.path().join("empty.tar");
        // Two zero blocks: an empty tar archive.
        std::fs::write(&layer, [0u8; 1024]).expect("write empty.tar");
        let r = self.reference(repository, tag);
        self.crane(&["append", "-f", layer.to_str().unwrap(), "-t", &r]);
        self.digest(repository, tag)
    }

    /// Give `repository:tag` a new image (a label changes its config, so
    /// its digest), as a re-push of a mutable tag does; return the digest.
    pub fn repush(&self, repository: &str, tag: &str, label: &str) -> String {
        let r = self.reference(repository, tag);
        self.crane(&["mutate", &r, "--label", &format!("build={label}"), "-t", &r]);
        self.digest(repository, tag)
    }

    /// The digest crane sees for `repository:tag`.
    pub fn digest(&self, repository: &str, tag: &str) -> String {
        self.crane(&["digest", &self.reference(repository, tag)])
    }
}
