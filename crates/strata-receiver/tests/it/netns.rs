//! Two "hosts" joined by two links, made of network namespaces and veth
//! pairs, with a rate limit per link (`tc tbf`; this kernel has no netem),
//! random loss and blackouts by nftables at each side's input, and the
//! processes a test starts inside them. Everything is removed on drop, on
//! failure too: killing the processes and deleting the namespaces takes
//! their veths, qdiscs and nftables tables with them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

const INSTALL: &str = "run scripts/setup-test-deps as root (apt-get install -y iproute2 nftables nginx libnginx-mod-rtmp ffmpeg)";

/// Fails loudly, naming the install command, when a tool is missing or we
/// are not root (namespaces need it).
pub fn require_tools() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        for tool in ["ip", "tc", "nft", "nginx", "ffprobe", "ffmpeg"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(found, "{tool} is missing: {INSTALL}");
        }
        let uid = run(Command::new("id").arg("-u"));
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the media tests build network namespaces and must run as root"
        );
    });
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} ({INSTALL})"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sh(line: &str) {
    run(Command::new("sh").args(["-c", line]));
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Link {
    pub tx_if: String,
    pub rx_if: String,
    pub tx_ip: String,
    pub rx_ip: String,
}

/// The sender's namespace (`tx`) and the receiver's (`rx`), two links.
pub struct Net {
    pub tx: String,
    pub rx: String,
    pub links: Vec<Link>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Net {
    /// Two links each limited to `rate_kbit` in both directions.
    pub fn new(rate_kbit: u32) -> Net {
        require_tools();
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            tx: format!("strata-tx-{id}"),
            rx: format!("strata-rx-{id}"),
            links: (0..2)
                .map(|i| Link {
                    tx_if: format!("st{i}{id}"),
                    rx_if: format!("sr{i}{id}"),
                    tx_ip: format!("10.71.{}.1", i + 1),
                    rx_ip: format!("10.71.{}.2", i + 1),
                })
                .collect(),
        };
        // From here on, drop cleans up whatever part was made.
        sh(&format!(
            "ip netns add {} && ip netns add {}",
            net.tx, net.rx
        ));
        for ns in [&net.tx, &net.rx] {
            sh(&format!("ip -n {ns} link set lo up"));
        }
        for l in &net.links {
            sh(&format!(
                "ip link add {tx_if} netns {tx} type veth peer name {rx_if} netns {rx}",
                tx_if = l.tx_if,
                rx_if = l.rx_if,
                tx = net.tx,
                rx = net.rx
            ));
            for (ns, dev, ip) in [(&net.tx, &l.tx_if, &l.tx_ip), (&net.rx, &l.rx_if, &l.rx_ip)] {
                sh(&format!(
                    "ip -n {ns} addr add {ip}/24 dev {dev} && ip -n {ns} link set {dev} up"
                ));
                // tbf drops what does not fit in its queue, like a real
                // link that is full; 50 ms of queue.
                sh(&format!(
                    "tc -n {ns} qdisc add dev {dev} root tbf rate {rate_kbit}kbit burst 16kb latency 50ms"
                ));
            }
        }
        // Loss and blackouts: a chain per link at each side's input.
        for (ns, side) in [(&net.tx, 0), (&net.rx, 1)] {
            let mut rules = String::from(
                "table inet strata {\n chain input {\n type filter hook input priority 0;\n",
            );
            for (i, l) in net.links.iter().enumerate() {
                let dev = if side == 0 { &l.tx_if } else { &l.rx_if };
                rules.push_str(&format!("iifname \"{dev}\" jump link{i}\n"));
            }
            rules.push_str("}\n");
            for i in 0..net.links.len() {
                rules.push_str(&format!("chain link{i} {{\n}}\n"));
            }
            rules.push_str("}\n");
            let path = std::env::temp_dir().join(format!("strata-nft-{}-{side}.nft", net.tx));
            std::fs::write(&path, &rules).unwrap();
            sh(&format!("ip netns exec {ns} nft -f {}", path.display()));
            let _ = std::fs::remove_file(path);
        }
        net
    }

    /// Random loss of `per_mille`/1000 of the packets arriving at the
    /// receiver over link `i`.
    pub fn loss(&self, i: usize, per_mille: u32) {
        sh(&format!(
            "ip netns exec {} nft add rule inet strata link{i} numgen random mod 1000 '<' {per_mille} drop",
            self.rx
        ));
    }

    /// Link `i` drops everything, both ways (`on`), or carries again.
    pub fn blackout(&self, i: usize, on: bool) {
        for ns in [&self.tx, &self.rx] {
            if on {
                sh(&format!(
                    "ip netns exec {ns} nft add rule inet strata link{i} drop"
                ));
            } else {
                sh(&format!(
                    "ip netns exec {ns} nft flush chain inet strata link{i}"
                ));
            }
        }
    }

    /// A command to run inside a namespace.
    pub fn command(&self, ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Anything still running inside would keep a namespace alive.
        for ns in [&self.tx, &self.rx] {
            let _ = Command::new("sh")
                .args(["-c", &format!("ip netns pids {ns} | xargs -r kill -9")])
                .status();
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// nginx with the RTMP module inside a namespace, recording every stream
/// published to `rtmp://127.0.0.1:PORT/live/NAME` to `DIR/rec/NAME.flv`.
pub struct Rtmp {
    pub rec: PathBuf,
    _proc: Proc,
}

impl Rtmp {
    pub fn start(net: &Net, dir: &Path, port: u16) -> Rtmp {
        let rec = dir.join("rec");
        std::fs::create_dir_all(&rec).unwrap();
        // nginx's worker runs as nobody and writes the recordings.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module modules/ngx_rtmp_module.so;\n\
                 daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 pid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;\n\
                   application live {{ live on; record all; record_path {rec}; record_unique off; }} }} }}\n",
                dir = dir.display(),
                rec = rec.display(),
            ),
        )
        .unwrap();
        let child = net
            .command(&net.rx, Path::new("nginx"))
            .args(["-p", "/usr/share/nginx", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("nginx: {e} ({INSTALL})"));
        Rtmp {
            rec,
            _proc: Proc(child),
        }
    }
}
