//! `kill -9` during a deploy: the queue resumes and the state reconciles.

use std::time::{Duration, Instant};

use crate::support::rivetr::{AppRepo, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_cut_by_kill_9_resumes_after_a_restart_and_orphans_go() {
    let mut server = Server::start();
    let api = server.client();
    // The app takes 3 s before it answers, so the deploy is surely in its
    // health check when the server is killed.
    let repo = AppRepo::new("r1");
    repo.write(
        "Dockerfile",
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n\
         CMD [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep 3; exec /bin/busybox httpd -f -p 8080 -h /www\"]\n",
    );
    repo.commit_version("r1");
    assert_eq!(api.create_app("slow", &repo.url(), &[]).await.0, 201);
    let d = api.deploy("slow").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = api.deployment(d).await["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if status == "starting" {
            break;
        }
        assert!(
            Instant::now() < deadline && status != "failed",
            "never reached starting: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the container be created, then kill the server mid-check.
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.kill9();
    let before = server.containers_of("slow");
    assert!(
        !before.is_empty(),
        "the interrupted deploy had started a container"
    );

    let token = server.token.clone();
    let state = server.state.clone();
    let network = server.network.clone();
    let mut again = Server::start_in(&state, &network, Some(token));
    let api = again.client();
    let done = api.wait(d).await;
    assert_eq!(done["status"], "running", "{done}\n{}", again.logs());
    assert_eq!(
        again.get(&again.host_of("slow"), "/version").await.unwrap(),
        (200, "r1\n".into())
    );
    assert_eq!(
        again.containers_of("slow"),
        vec![format!("rivetr-slow-d{d}-r0")]
    );

    // A container Rivetr owns that no deployment claims is removed, and a
    // missing replica is recreated, at the next start.
    again.kill9();
    let instance = std::process::Command::new("podman")
        .args([
            "inspect",
            "--format",
            "{{index .Config.Labels \"rivetr.instance\"}}",
            &format!("rivetr-slow-d{d}-r0"),
        ])
        .output()
        .unwrap();
    let instance = String::from_utf8_lossy(&instance.stdout).trim().to_owned();
    assert!(!instance.is_empty());
    let out = std::process::Command::new("podman")
        .args(["rm", "-f", "-t", "0", &format!("rivetr-slow-d{d}-r0")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new("podman")
        .args([
            "run",
            "-d",
            "--name",
            "rivetr-slow-d999-r0",
            "--label",
            "rivetr.managed=true",
            "--label",
            "rivetr.app=slow",
            &format!("rivetr/slow:d{d}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut third = Server::start_in(&state, &network, Some(again.token.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = third.get(&third.host_of("slow"), "/version").await {
            assert_eq!(body, "r1\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the app did not come back: {}",
            third.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        third.containers_of("slow"),
        vec![format!("rivetr-slow-d{d}-r0")]
    );
    third.cleanup(&["slow"]);
    drop(again);
}
