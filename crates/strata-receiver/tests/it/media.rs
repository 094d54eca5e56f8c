//! The media path with real parts: the agent's `send` and a receiver in two
//! network namespaces joined by two rate-limited links, nginx-rtmp (or an
//! ffmpeg SRT listener) as the destination, ffprobe on what it recorded.
//! Low resolution and bitrate (320x240, 500 kb/s): nothing here depends on
//! picture size, and the suite stays short on two cores.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::netns::{Net, Proc, Rtmp};

const RIST_PORT: u16 = 7000;
const RTMP_PORT: u16 = 1935;
const FPS: f64 = 25.0;

fn bins() -> (PathBuf, PathBuf) {
    static BUILT: OnceLock<()> = OnceLock::new();
    let receiver = PathBuf::from(env!("CARGO_BIN_EXE_strata-receiver"));
    let agent = receiver.parent().unwrap().join("strata-agent");
    BUILT.get_or_init(|| {
        // Cargo builds only this package's binaries for its tests.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "strata-agent"])
            .status()
            .expect("running cargo build -p strata-agent");
        assert!(status.success(), "cargo build -p strata-agent failed");
    });
    (agent, receiver)
}

/// JSON lines collected by a reader thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<Value>>>);

impl Lines {
    fn collect(self, read: impl std::io::Read + Send + 'static) -> Lines {
        let lines = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(read).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str(&line) {
                    lines.0.lock().unwrap().push(v);
                }
            }
        });
        self
    }
    fn all(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }
    fn last_where(&self, f: impl Fn(&Value) -> bool) -> Option<Value> {
        self.all().into_iter().rev().find(|v| f(v))
    }
}

struct Receiver {
    proc: Proc,
    events: Lines,
    control: UnixStream,
    log: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- receiver log:\n{}", tail(&self.log));
        }
    }
}

impl Receiver {
    fn start(net: &Net, dir: &Path, psk: &str, destinations: Value, extra: &[&str]) -> Receiver {
        let (_, bin) = bins();
        let socket = dir.join("receiver.sock");
        let log = std::fs::File::create(dir.join("receiver.log")).unwrap();
        let mut child = net
            .command(&net.rx, &bin)
            .args(["--stream-id", "str_media", "--bind", "0.0.0.0"])
            .args(["--port", &RIST_PORT.to_string(), "--latency-ms", "1000"])
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let secrets = json!({"psk": psk, "destinations": destinations}).to_string();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(secrets.as_bytes())
            .unwrap();
        let proc = Proc(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let control = loop {
            if let Ok(c) = UnixStream::connect(&socket) {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver's socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let events = Lines::default().collect(control.try_clone().unwrap());
        Receiver {
            proc,
            events,
            control,
            log: dir.join("receiver.log"),
        }
    }

    fn last_stats(&self) -> Value {
        self.events
            .last_where(|e| e["event"] == "stats")
            .expect("the receiver reports stats")
    }

    fn stop(&mut self) {
        let _ = self.control.write_all(b"{\"cmd\":\"stop\"}\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Agent {
    proc: Proc,
    stats: Lines,
    log: PathBuf,
}

/// The last lines of a log, for a failing test's output.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent log:\n{}", tail(&self.log));
        }
    }
}

fn start_agent(net: &Net, dir: &Path, psk: &str) -> Agent {
    let (bin, _) = bins();
    let links: Vec<String> = net
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| format!("link{i}={}@5", l.rx_ip))
        .collect();
    let mut cmd = net.command(&net.tx, &bin);
    cmd.arg("send")
        .args(["--stream-id", "str_media"])
        .args(["--receiver", &format!("{}:{RIST_PORT}", net.links[0].rx_ip)])
        .args(["--video-size", "320x240", "--fps", "25"])
        .args([
            "--bitrate-kbps",
            "500",
            "--min-kbps",
            "300",
            "--max-kbps",
            "600",
        ])
        .args(["--buffer-ms", "1000"]);
    for l in &links {
        cmd.args(["--link", l]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(psk.as_bytes())
        .unwrap();
    let stats = Lines::default().collect(child.stdout.take().unwrap());
    Agent {
        proc: Proc(child),
        stats,
        log: dir.join("agent.log"),
    }
}

fn rtmp_destination(name: &str) -> Value {
    json!([{"platform": "custom_rtmp", "url": format!("rtmp://127.0.0.1:{RTMP_PORT}/live"), "stream_key": name}])
}

/// Presentation times (s) of the video packets in a recording.
fn video_times(path: &Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    let mut times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// The longest gap between consecutive frames.
fn longest_gap(times: &[f64]) -> f64 {
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// One frame interval plus 20 ms of jitter.
const MAX_GAP: f64 = 1.0 / FPS + 0.020;

fn assert_smooth(times: &[f64], at_least_secs: f64) {
    let span = times.last().unwrap_or(&0.0) - times.first().unwrap_or(&0.0);
    assert!(
        span >= at_least_secs && times.len() as f64 >= at_least_secs * FPS * 0.95,
        "{} frames over {span:.1} s",
        times.len()
    );
    let gap = longest_gap(times);
    assert!(
        gap <= MAX_GAP,
        "a gap of {:.0} ms between frames",
        gap * 1000.0
    );
}

/// One media test at a time: each encodes video and runs a receiver, and
/// on two shared cores several at once starve the encoders, which shows
/// as frame gaps that have nothing to do with the network.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn psk(byte: &str) -> String {
    byte.repeat(32)
}

#[test]
fn steady_run_delivers_every_frame_to_rtmp() {
    let _serial = one_at_a_time();
    let net = Net::new(3000);
    let dir = tempfile::tempdir().unwrap();
    let rtmp = Rtmp::start(&net, dir.path(), RTMP_PORT);
    let mut receiver = Receiver::start(
        &net,
        dir.path(),
        &psk("a1"),
        rtmp_destination("steady"),
        &[],
    );
    let agent = start_agent(&net, dir.path(), &psk("a1"));
    std::thread::sleep(Duration::from_secs(12));

    let stats = receiver.last_stats();
    assert_eq!(stats["rist"]["lost"], 0, "{stats}");
    assert_eq!(stats["rist"]["links_alive"], 2, "{stats}");
    assert_eq!(stats["egress"][0]["state"], "live", "{stats}");
    let sent = agent.stats.last_where(|_| true).expect("agent stats");
    let links = sent["links"].as_array().unwrap();
    assert_eq!(links.len(), 2, "{sent}");
    for l in links {
        assert_eq!(l["state"], "up", "{sent}");
        assert!(
            l["bitrate_kbps"].as_f64().unwrap() > 50.0,
            "both links carry: {sent}"
        );
    }
    drop(agent);
    receiver.stop();
    assert_smooth(&video_times(&rtmp.rec.join("steady.flv")), 8.0);
}

#[test]
fn a_link_blacked_out_for_ten_seconds_costs_no_frame_and_rejoins() {
    let _serial = one_at_a_time();
    let net = Net::new(3000);
    let dir = tempfile::tempdir().unwrap();
    let rtmp = Rtmp::start(&net, dir.path(), RTMP_PORT);
    let mut receiver = Receiver::start(
        &net,
        dir.path(),
        &psk("b2"),
        rtmp_destination("blackout"),
        &[],
    );
    let agent = start_agent(&net, dir.path(), &psk("b2"));
    std::thread::sleep(Duration::from_secs(4));
    net.blackout(0, true);
    std::thread::sleep(Duration::from_secs(5));
    let during = agent.stats.last_where(|_| true).unwrap();
    assert_eq!(during["links"][0]["state"], "down", "{during}");
    std::thread::sleep(Duration::from_secs(5));
    net.blackout(0, false);
    let back = Instant::now();
    let rejoined = loop {
        std::thread::sleep(Duration::from_millis(500));
        let s = agent.stats.last_where(|_| true).unwrap();
        if s["links"][0]["state"] == "up" && s["links"][0]["bitrate_kbps"].as_f64().unwrap() > 50.0
        {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "link0 never rejoined: {s}"
        );
    };
    std::thread::sleep(Duration::from_secs(2));
    let stats = receiver.last_stats();
    assert_eq!(stats["rist"]["lost"], 0, "{stats}");
    eprintln!("link rejoined {rejoined:?} after the blackout ended");
    drop(agent);
    receiver.stop();
    assert_smooth(&video_times(&rtmp.rec.join("blackout.flv")), 12.0);
}

#[test]
fn random_loss_of_two_and_half_a_percent_leaves_none() {
    let _serial = one_at_a_time();
    let net = Net::new(3000);
    net.loss(0, 20);
    net.loss(1, 5);
    let dir = tempfile::tempdir().unwrap();
    let rtmp = Rtmp::start(&net, dir.path(), RTMP_PORT);
    let mut receiver = Receiver::start(&net, dir.path(), &psk("c3"), rtmp_destination("loss"), &[]);
    let agent = start_agent(&net, dir.path(), &psk("c3"));
    std::thread::sleep(Duration::from_secs(14));
    let stats = receiver.last_stats();
    assert_eq!(stats["rist"]["lost"], 0, "residual loss: {stats}");
    assert!(
        stats["rist"]["recovered"].as_u64().unwrap() > 0,
        "loss was not applied: {stats}"
    );
    drop(agent);
    receiver.stop();
    assert_smooth(&video_times(&rtmp.rec.join("loss.flv")), 10.0);
}

#[test]
fn a_wrong_key_decodes_nothing_reports_it_and_crashes_nothing() {
    let _serial = one_at_a_time();
    let net = Net::new(3000);
    let dir = tempfile::tempdir().unwrap();
    let rtmp = Rtmp::start(&net, dir.path(), RTMP_PORT);
    let mut receiver = Receiver::start(
        &net,
        dir.path(),
        &psk("d4"),
        rtmp_destination("wrongkey"),
        &[],
    );
    let mut agent = start_agent(&net, dir.path(), &psk("e5"));
    std::thread::sleep(Duration::from_secs(6));
    let error = receiver
        .events
        .last_where(|e| e["event"] == "error")
        .expect("an error event");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("wrong key"), "{message}");
    assert_eq!(receiver.last_stats()["bytes_in"], 0);
    assert!(
        receiver.proc.0.try_wait().unwrap().is_none(),
        "the receiver died"
    );
    assert!(agent.proc.0.try_wait().unwrap().is_none(), "the agent died");
    drop(agent);
    receiver.stop();
    assert!(video_times(&rtmp.rec.join("wrongkey.flv")).is_empty());
}

#[test]
fn an_srt_listener_receives_decodable_video() {
    let _serial = one_at_a_time();
    let net = Net::new(3000);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("srt.ts");
    let passphrase = "srt-passphrase-0123";
    let listener = net
        .command(&net.rx, Path::new("ffmpeg"))
        .args(["-y", "-v", "error", "-i"])
        .arg(format!(
            "srt://127.0.0.1:9000?mode=listener&passphrase={passphrase}&pbkeylen=32"
        ))
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listener = Proc(listener);
    std::thread::sleep(Duration::from_millis(500));
    let mut receiver = Receiver::start(
        &net,
        dir.path(),
        &psk("f6"),
        json!([{"platform": "srt", "url": "srt://127.0.0.1:9000", "stream_key": passphrase}]),
        &[],
    );
    let agent = start_agent(&net, dir.path(), &psk("f6"));
    std::thread::sleep(Duration::from_secs(8));
    drop(agent);
    receiver.stop();
    drop(listener);
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=codec_name,width,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&probe.stdout).unwrap_or(Value::Null);
    let stream = &v["streams"][0];
    assert_eq!(stream["codec_name"], "h264", "{v}");
    assert_eq!(stream["width"], 320, "{v}");
    let frames: u64 = stream["nb_read_frames"]
        .as_str()
        .unwrap_or("0")
        .parse()
        .unwrap();
    assert!(frames > 100, "{frames} frames decoded");
}

#[test]
fn a_wedged_rtmp_output_is_rebuilt_without_dropping_the_input() {
    let _serial = one_at_a_time();
    let net = Net::new(3000);
    let dir = tempfile::tempdir().unwrap();
    let first = tempfile::tempdir().unwrap();
    let rtmp = Rtmp::start(&net, first.path(), RTMP_PORT);
    let mut receiver = Receiver::start(
        &net,
        dir.path(),
        &psk("a7"),
        rtmp_destination("wedge"),
        &["--egress-stall-secs", "2"],
    );
    let agent = start_agent(&net, dir.path(), &psk("a7"));
    std::thread::sleep(Duration::from_secs(4));
    // The server goes away and comes back (a restarted ingest).
    drop(rtmp);
    let bytes_before = receiver.last_stats()["bytes_in"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let second = tempfile::tempdir().unwrap();
    let rtmp = Rtmp::start(&net, second.path(), RTMP_PORT);
    std::thread::sleep(Duration::from_secs(8));
    let stats = receiver.last_stats();
    assert!(
        stats["egress"][0]["restarts"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert_eq!(stats["egress"][0]["state"], "live", "{stats}");
    assert!(
        stats["bytes_in"].as_u64().unwrap() > bytes_before + 100_000,
        "{stats}"
    );
    assert_eq!(stats["rist"]["lost"], 0, "{stats}");
    drop(agent);
    receiver.stop();
    let times = video_times(&rtmp.rec.join("wedge.flv"));
    assert!(
        times.len() as f64 > 4.0 * FPS,
        "{} frames after the rebuild",
        times.len()
    );
}
