//! Supervisor tests against real processes (`sh`, `sleep`).

use std::time::Duration;

use supervisor::{pid_alive, Backoff, Event, Spec, Supervisor};
use tokio::sync::mpsc;

fn sh(script: &str) -> Spec {
    Spec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Spec::default()
    }
}

fn quick() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        stable: Duration::from_secs(60),
        max_restarts: Some(3),
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("channel open")
}

#[tokio::test]
async fn a_crashing_child_is_restarted_then_given_up_on() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sup = Supervisor::start(|| sh("exit 3"), quick(), tx);
    let mut starts = 0;
    loop {
        match next(&mut rx).await {
            Event::Started { adopted, .. } => {
                assert!(!adopted);
                starts += 1;
            }
            Event::Exited { code, .. } => assert_eq!(code, Some(3)),
            Event::Restarting { .. } => {}
            Event::GaveUp { reason } => {
                assert!(reason.contains("3 times"), "{reason}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(starts, 4, "first start plus three restarts");
}

#[tokio::test]
async fn stop_terminates_the_child_and_no_restart_follows() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sup = Supervisor::start(|| sh("exec sleep 60"), quick(), tx);
    let Event::Started { pid, .. } = next(&mut rx).await else {
        panic!("expected Started");
    };
    assert!(pid_alive(pid));
    sup.stop(Duration::from_secs(5)).await;
    assert_eq!(next(&mut rx).await, Event::Stopped);
    assert!(!pid_alive(pid), "child {pid} still alive after stop");
}

#[tokio::test]
async fn stop_kills_a_child_that_ignores_sigterm() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sup = Supervisor::start(
        || sh("trap '' TERM; while true; do sleep 0.1; done"),
        quick(),
        tx,
    );
    let Event::Started { pid, .. } = next(&mut rx).await else {
        panic!("expected Started");
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let began = std::time::Instant::now();
    sup.stop(Duration::from_millis(300)).await;
    assert!(began.elapsed() >= Duration::from_millis(300));
    assert!(!pid_alive(pid));
}

#[tokio::test]
async fn the_secret_arrives_on_stdin_and_not_in_the_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let out_for_spec = out.clone();
    let sup = Supervisor::start(
        move || {
            let mut spec = sh(&format!(
                "cat > {}; exec sleep 60",
                out_for_spec.to_str().unwrap()
            ));
            spec.stdin_secret = Some(b"s3cret-psk".to_vec());
            spec
        },
        quick(),
        tx,
    );
    let Event::Started { pid, .. } = next(&mut rx).await else {
        panic!("expected Started");
    };
    for _ in 0..50 {
        if std::fs::read(&out)
            .map(|b| b == b"s3cret-psk")
            .unwrap_or(false)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read(&out).unwrap(), b"s3cret-psk");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let needle = b"s3cret-psk";
    assert!(!cmdline.windows(needle.len()).any(|w| w == needle));
    assert!(!environ.windows(needle.len()).any(|w| w == needle));
    sup.stop(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn dropping_the_handle_leaves_the_child_running_and_it_can_be_adopted() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sup = Supervisor::start(|| sh("exec sleep 60"), quick(), tx);
    let Event::Started { pid, .. } = next(&mut rx).await else {
        panic!("expected Started");
    };
    drop(sup);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pid_alive(pid), "child died with its supervisor");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let adopter = Supervisor::adopt(pid, || sh("exec sleep 60"), quick(), tx);
    assert_eq!(next(&mut rx).await, Event::Started { pid, adopted: true });
    assert_eq!(adopter.pid(), Some(pid));
    // The adopted process dies: the supervisor notices by its pid and starts
    // a new one. (It is still this test's child, and a zombie until tokio
    // reaps it; `pid_alive` counts a zombie as gone.)
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(next(&mut rx).await, Event::Exited { pid, code: None });
    assert!(matches!(next(&mut rx).await, Event::Restarting { .. }));
    let Event::Started {
        pid: new_pid,
        adopted,
    } = next(&mut rx).await
    else {
        panic!("expected a restart");
    };
    assert!(!adopted);
    assert_ne!(new_pid, pid);
    adopter.stop(Duration::from_secs(2)).await;
    assert!(!pid_alive(new_pid));
}
