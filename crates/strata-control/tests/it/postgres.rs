//! A throwaway PostgreSQL cluster from the machine's own server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A running cluster; stopped and deleted on drop.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

fn find_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql; \
             install them with: apt-get install -y postgresql (or run scripts/setup-test-deps)"
        )
    })
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = find_bin();
        let dir = tempfile::Builder::new()
            .prefix("strata-pg")
            .tempdir()
            .unwrap();
        // initdb refuses to run as root: the cluster belongs to `postgres`.
        let as_root = nix_is_root();
        if as_root {
            run(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(dir.path()),
                "chown the cluster directory",
            );
        }
        let data = dir.path().join("data");
        let port = free_port();
        let wrap = |program: &Path| -> Command {
            if as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        run(
            wrap(&bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
                .arg(&data),
            "initdb",
        );
        run(
            wrap(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    dir.path().display()
                ))
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "start"]),
            "pg_ctl start",
        );
        let pg = Postgres { bin, dir, port };
        // `-w` waits for readiness; make sure TCP answers too.
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

fn nix_is_root() -> bool {
    // SAFETY-free check: the effective uid from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = if nix_is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
