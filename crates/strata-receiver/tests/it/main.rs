//! The receiver binary on its own: its secrets on stdin, its socket, its
//! port, and what it does with bad input.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

mod media;
mod netns;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(socket: &Path, port: u16, stdin: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata-receiver"))
        .args([
            "--stream-id",
            "str_test",
            "--bind",
            "127.0.0.1",
            "--stats-interval-ms",
            "100",
        ])
        .arg("--socket")
        .arg(socket)
        .args(["--port", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child
}

fn secrets() -> String {
    serde_json::json!({
        "psk": "ab".repeat(32),
        "destinations": [{"platform": "srt", "url": "srt://127.0.0.1:9000", "stream_key": "k"}]
    })
    .to_string()
}

#[test]
fn bad_secrets_on_stdin_stop_it_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (stdin, expect) in [
        ("", "secrets document"),
        ("not json", "secrets document"),
        (r#"{"psk": "zz", "destinations": []}"#, "not hex"),
        (r#"{"psk": "abcd", "destinations": []}"#, "expected 32"),
    ] {
        let child = spawn(&dir.path().join("r.sock"), free_udp_port(), stdin);
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{stdin:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{stdin:?}: {err}");
        assert!(
            !dir.path().join("r.sock").exists(),
            "no socket without a key"
        );
    }
}

async fn connect(path: &Path) -> UnixStream {
    for _ in 0..100 {
        if let Ok(c) = UnixStream::connect(path).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("socket {} never appeared", path.display());
}

type Lines = tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>;

async fn next(lines: &mut Lines) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the socket is open");
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn reports_ready_and_stats_takes_stop_and_refuses_nonsense() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("r.sock");
    let port = free_udp_port();
    let child = Proc(spawn(&socket, port, &secrets()));
    let pid = child.0.id();

    let conn = connect(&socket).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is the owner's only");
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    let ready = next(&mut lines).await;
    assert_eq!(ready["event"], "ready");
    assert_eq!(ready["pid"], pid);
    assert_eq!(ready["port"], port);

    // What RIST delivers with the stream's key shows in the stats.
    let mut sender = rist::Sender::new(
        &rist::Config {
            profile: rist::Profile::Main,
            links: vec![rist::Link {
                name: String::new(),
                address: format!("127.0.0.1:{port}"),
                weight: 5,
            }],
            passphrase: Some("ab".repeat(32)),
            buffer_ms: 200,
            stats_interval_ms: 0,
            cname: "test".into(),
        },
        |_| {},
    )
    .unwrap();
    // Datagrams written before the RIST handshake completes may be held
    // back, so send until some arrive, then check they were counted whole.
    loop {
        sender.write(&[0x47; 1316]).unwrap();
        let e = next(&mut lines).await;
        if e["event"] == "stats" && e["bytes_in"].as_u64().unwrap() > 0 {
            let packets = e["packets_in"].as_u64().unwrap();
            assert_eq!(e["bytes_in"].as_u64().unwrap(), packets * 1316, "{e}");
            break;
        }
    }
    drop(sender);

    // The secrets are not in its arguments or environment.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let psk = "ab".repeat(32);
    assert!(!String::from_utf8_lossy(&cmdline).contains(&psk));
    assert!(!String::from_utf8_lossy(&environ).contains(&psk));

    // Nonsense gets an error event and changes nothing.
    write.write_all(b"{\"cmd\":\"explode\"}\n").await.unwrap();
    loop {
        let e = next(&mut lines).await;
        if e["event"] == "error" {
            assert!(e["message"].as_str().unwrap().contains("unknown command"));
            break;
        }
    }
    // A second controller (a restarted control plane) is greeted too.
    let second = connect(&socket).await;
    let mut second_lines = BufReader::new(second).lines();
    let hello = tokio::time::timeout(Duration::from_secs(5), second_lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(hello.contains("\"ready\""), "{hello}");

    write.write_all(b"{\"cmd\":\"stop\"}\n").await.unwrap();
    loop {
        let e = next(&mut lines).await;
        if e["event"] == "stopped" {
            assert!(e["reason"].as_str().unwrap().contains("control plane"));
            break;
        }
    }
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    assert!(!socket.exists(), "the socket is removed on exit");
}
