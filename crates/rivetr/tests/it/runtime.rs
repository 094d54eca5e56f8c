//! The container runtime against real Podman, once through its Docker
//! Engine API socket and once through its CLI: every test below runs
//! against both (see `both_runtimes!`), so the two implementations are held
//! to the same behaviour.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rivetr::runtime::{
    connect_with, docker::DockerApi, podman::PodmanCli, BuildSpec, ContainerRuntime, LogLine,
    LogStream, RestartPolicy, RunSpec, RuntimeError, MANAGED_LABEL,
};
use tokio::sync::mpsc;

use crate::support::podman::{
    http_get, http_status, network_labels, podman_binary, podman_socket, unique, write_context,
    write_web_context, Janitor,
};

/// Label every object of one test carries, so listing by it finds exactly
/// that test's objects.
const TEST_LABEL: &str = "rivetr.test";
/// A second label on test containers, for filters on two labels.
const KIND_LABEL: &str = "rivetr.test.kind";
/// A label every test image gets through `BuildSpec::labels`.
const BUILT_LABEL: &str = "rivetr.test.built";

fn docker_api() -> Arc<dyn ContainerRuntime> {
    Arc::new(DockerApi::connect(&podman_socket()).expect("Podman's API socket"))
}

fn podman_cli() -> Arc<dyn ContainerRuntime> {
    Arc::new(PodmanCli::new(podman_binary()))
}

/// Declares each test once per runtime: `docker_api::NAME` and
/// `podman_cli::NAME`.
macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod docker_api {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                // The guard only orders whole tests, each on its own runtime.
                #[allow(clippy::await_holding_lock)]
                async fn $name() {
                    let _serial = crate::support::podman::one_at_a_time();
                    super::$name(super::docker_api()).await
                }
            )*
        }
        mod podman_cli {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                // The guard only orders whole tests, each on its own runtime.
                #[allow(clippy::await_holding_lock)]
                async fn $name() {
                    let _serial = crate::support::podman::one_at_a_time();
                    super::$name(super::podman_cli()).await
                }
            )*
        }
    };
}

both_runtimes!(
    ping_names_the_engine,
    build_streams_output_and_applies_args_and_labels,
    build_failures_carry_the_engines_reason,
    ensure_network_is_idempotent_and_labelled,
    run_serves_on_the_private_network,
    build_context_leaves_out_ignored_files,
    logs_tail_and_follow,
    absent_objects_are_not_errors,
);

/// Builds the web image from a fresh context; returns (tag, image id, lines
/// logged). `version` must be unique to the test: two tests building the
/// same steps share Podman's layer cache, and one's cleanup then pulls
/// images from under the other's build.
async fn build_web(
    rt: &dyn ContainerRuntime,
    janitor: &mut Janitor,
    test_id: &str,
    version: &str,
) -> (String, String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    write_web_context(dir.path(), version);
    let tag = format!("rivetr-test/{test_id}:1");
    janitor.image(&tag);
    let mut spec = BuildSpec::new(dir.path(), &tag);
    spec.build_args.insert("VERSION".into(), version.into());
    // Not MANAGED_LABEL either: containers carry their image's labels.
    spec.labels.insert(BUILT_LABEL.into(), "yes".into());
    spec.labels.insert(TEST_LABEL.into(), test_id.into());
    let started = std::time::Instant::now();
    // Podman's layer cache lookup fails when another test removes an image
    // at that moment ("layer not known"); the engine retries such a build
    // too (see the engine's `build`).
    let mut attempt = 0;
    let (id, mut rx) = loop {
        let (tx, rx) = mpsc::unbounded_channel();
        match rt.build(&spec, tx).await {
            Ok(id) => break (id, rx),
            Err(RuntimeError::Build { message })
                if message.contains("not known") && attempt < 2 =>
            {
                attempt += 1;
            }
            Err(e) => panic!("build: {e}"),
        }
    };
    eprintln!("{}: build of {tag} took {:?}", rt.kind(), started.elapsed());
    let mut lines = Vec::new();
    while let Ok(line) = rx.try_recv() {
        lines.push(line);
    }
    (tag, id, lines)
}

fn web_spec(test_id: &str, image: &str, network: &str) -> RunSpec {
    RunSpec {
        name: test_id.to_owned(),
        image: image.to_owned(),
        env: vec![(
            "GREETING".into(),
            format!("hello {test_id} with spaces=and equals"),
        )],
        // Not MANAGED_LABEL: Rivetr's engine removes every managed
        // container no deployment claims when it starts, and its tests run
        // beside these.
        labels: BTreeMap::from([
            (KIND_LABEL.to_owned(), "web".to_owned()),
            (TEST_LABEL.to_owned(), test_id.to_owned()),
        ]),
        network: network.to_owned(),
        memory_bytes: Some(64 * 1024 * 1024),
        nano_cpus: Some(500_000_000),
        restart: RestartPolicy::UnlessStopped,
    }
}

async fn ping_names_the_engine(rt: Arc<dyn ContainerRuntime>) {
    let version = rt.ping().await.unwrap();
    assert!(version.contains("Podman"), "{version}");
    assert!(version.chars().any(|c| c.is_ascii_digit()), "{version}");
}

async fn build_streams_output_and_applies_args_and_labels(rt: Arc<dyn ContainerRuntime>) {
    let mut janitor = Janitor::new();
    let test_id = unique("build");
    let version = format!("v-{test_id}");
    let (tag, id, lines) = build_web(rt.as_ref(), &mut janitor, &test_id, &version).await;

    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("COPY busybox /bin/busybox")),
        "no step line among {lines:?}"
    );
    assert!(rt.image_exists(&tag).await.unwrap());

    let images = rt.list_images(&[(TEST_LABEL, &test_id)]).await.unwrap();
    assert_eq!(images.len(), 1, "{images:?}");
    let image = &images[0];
    assert_eq!(image.id, id);
    assert_eq!(image.tags, vec![tag.clone()]);
    assert_eq!(
        image.labels.get(BUILT_LABEL).map(String::as_str),
        Some("yes")
    );
    // The build argument reached the Dockerfile's `LABEL version=$VERSION`.
    assert_eq!(
        image.labels.get("version").map(String::as_str),
        Some(version.as_str())
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - image.created).abs() < 600,
        "created {}",
        image.created
    );

    // Listing by a label no image has finds nothing.
    let none = rt
        .list_images(&[(TEST_LABEL, "no-such-test")])
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");

    remove_image_patiently(rt.as_ref(), &tag).await;
    assert!(!rt.image_exists(&tag).await.unwrap());
    assert!(rt
        .list_images(&[(TEST_LABEL, &test_id)])
        .await
        .unwrap()
        .is_empty());
    rt.remove_image(&tag).await.unwrap();
}

/// Removes an image, waiting while the engine says it is in use. Podman's
/// layer cache lets a concurrent build (another test's, or another
/// checkout's on the same machine) start a build container on top of any
/// image whose steps match, and a build container holds its image until the
/// build ends.
async fn remove_image_patiently(rt: &dyn ContainerRuntime, tag: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match rt.remove_image(tag).await {
            Ok(()) => return,
            Err(e) if e.to_string().contains("in use") && std::time::Instant::now() < deadline => {
                eprintln!("{}: {tag} in use, waiting: {e}", rt.kind());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("removing {tag}: {e}"),
        }
    }
}

async fn expect_build_error(
    rt: &dyn ContainerRuntime,
    dockerfile: Option<&str>,
    janitor: &mut Janitor,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("rivetr-test/{}:1", unique("fail"));
    janitor.image(&tag);
    let mut spec = BuildSpec::new(dir.path(), &tag);
    match dockerfile {
        Some(text) => write_context(dir.path(), text),
        None => spec.dockerfile = "Missing.Dockerfile".into(),
    }
    let (tx, _rx) = mpsc::unbounded_channel();
    match rt.build(&spec, tx).await {
        Err(RuntimeError::Build { message }) => {
            eprintln!("{}: build error: {message}", rt.kind());
            assert!(!message.trim().is_empty());
            assert!(!rt.image_exists(&tag).await.unwrap());
            message
        }
        other => panic!("expected a build error, got {other:?}"),
    }
}

async fn build_failures_carry_the_engines_reason(rt: Arc<dyn ContainerRuntime>) {
    let mut janitor = Janitor::new();

    let missing = expect_build_error(rt.as_ref(), None, &mut janitor).await;
    assert!(
        missing.contains("Missing.Dockerfile") || missing.to_lowercase().contains("no such file"),
        "missing Dockerfile: {missing}"
    );

    // Scratch has no shell: the exec form runs busybox directly.
    let failing = expect_build_error(
        rt.as_ref(),
        Some("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n"),
        &mut janitor,
    )
    .await;
    assert!(failing.contains("exit status 1"), "failing RUN: {failing}");

    let syntax = expect_build_error(
        rt.as_ref(),
        Some("FROM scratch\nFROBNICATE now\n"),
        &mut janitor,
    )
    .await;
    assert!(
        syntax.to_lowercase().contains("frobnicate"),
        "bad syntax: {syntax}"
    );
}

async fn ensure_network_is_idempotent_and_labelled(rt: Arc<dyn ContainerRuntime>) {
    let mut janitor = Janitor::new();
    let name = unique("rivetr-net");
    janitor.network(&name);
    rt.ensure_network(&name).await.unwrap();
    rt.ensure_network(&name).await.unwrap();
    assert_eq!(
        network_labels(&name).get(MANAGED_LABEL).map(String::as_str),
        Some("true")
    );
    // Two at once, as two deployments of one app might.
    let other = unique("rivetr-net");
    janitor.network(&other);
    let (a, b) = tokio::join!(rt.ensure_network(&other), rt.ensure_network(&other));
    a.unwrap();
    b.unwrap();
}

/// True when some process on this machine has `needle` in its argv.
fn in_any_argv(needle: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
}

async fn run_serves_on_the_private_network(rt: Arc<dyn ContainerRuntime>) {
    let mut janitor = Janitor::new();
    let test_id = unique("run");
    let version = format!("version-{test_id}");
    let (tag, _, _) = build_web(rt.as_ref(), &mut janitor, &test_id, &version).await;
    let network = unique("rivetr-net");
    janitor.network(&network);
    rt.ensure_network(&network).await.unwrap();

    let spec = web_spec(&test_id, &tag, &network);
    janitor.container(&spec.name);
    let secret = spec.env[0].1.clone();
    let started = std::time::Instant::now();
    let info = rt.run(&spec).await.unwrap();
    let ran = started.elapsed();
    assert!(
        !in_any_argv(&secret),
        "an environment value showed in a process's argv"
    );

    assert!(info.running);
    assert_eq!(info.name, spec.name);
    assert_eq!(info.image, tag);
    assert_eq!(info.labels.get(TEST_LABEL), Some(&test_id));
    assert_eq!(info.labels.get(KIND_LABEL).map(String::as_str), Some("web"));
    // The image's own labels show through.
    assert!(info.labels.contains_key("version"), "{:?}", info.labels);
    assert_eq!(info.memory_bytes, Some(64 * 1024 * 1024));
    let ip = info.ip.expect("an address on the network");
    assert_eq!(info.networks.get(&network), Some(&Some(ip)));

    // Reached from the host at its address on the private network, no
    // published port.
    let addr = SocketAddr::new(ip, 8080);
    let body = http_get(addr, "/version", Duration::from_secs(15))
        .await
        .unwrap();
    eprintln!(
        "{}: run took {ran:?}, first HTTP 200 after {:?}",
        rt.kind(),
        started.elapsed()
    );
    assert_eq!(body, version);
    let env = http_get(addr, "/env", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(env.trim_end(), secret);

    let inspected = rt
        .inspect(&spec.name)
        .await
        .unwrap()
        .expect("inspect by name");
    assert_eq!(inspected.id, info.id);
    assert_eq!(inspected.ip, Some(ip));
    assert_eq!(inspected.memory_bytes, info.memory_bytes);
    let by_id = rt.inspect(&info.id).await.unwrap().expect("inspect by id");
    assert_eq!(by_id.name, spec.name);

    let listed = rt.list(&[(TEST_LABEL, &test_id)]).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, info.id);
    assert_eq!(listed[0].ip, Some(ip));
    let managed = rt
        .list(&[(KIND_LABEL, "web"), (TEST_LABEL, &test_id)])
        .await
        .unwrap();
    assert_eq!(managed.len(), 1, "labels combine with AND: {managed:?}");
    assert!(rt
        .list(&[(TEST_LABEL, &test_id), ("other", "x")])
        .await
        .unwrap()
        .is_empty());

    // A second run under the same name is refused while the first exists.
    assert!(rt.run(&spec).await.is_err());

    rt.stop_and_remove(&spec.name, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(rt.inspect(&spec.name).await.unwrap(), None);
    assert!(rt.list(&[(TEST_LABEL, &test_id)]).await.unwrap().is_empty());
    rt.stop_and_remove(&spec.name, Duration::from_secs(2))
        .await
        .unwrap();

    // Stopped containers are listed too.
    let stopped = RunSpec {
        name: unique("stopped"),
        restart: RestartPolicy::No,
        ..spec.clone()
    };
    janitor.container(&stopped.name);
    let info = rt.run(&stopped).await.unwrap();
    let stop = std::process::Command::new(podman_binary())
        .args(["stop", "--time", "5", &info.id])
        .output()
        .unwrap();
    assert!(stop.status.success());
    let listed = rt.list(&[(TEST_LABEL, &test_id)]).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(!listed[0].running);
    rt.stop_and_remove(&info.id, Duration::from_secs(1))
        .await
        .unwrap();
}

async fn build_context_leaves_out_ignored_files(rt: Arc<dyn ContainerRuntime>) {
    let mut janitor = Janitor::new();
    let test_id = unique("ctx");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_context(
        root,
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         COPY . /www\n\
         CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    );
    for (path, body) in [
        (
            ".dockerignore",
            "# secrets stay home\nsecret.txt\nlogs\n!logs/keep.log\n",
        ),
        ("version", test_id.as_str()),
        ("secret.txt", "s3cret"),
        ("logs/a.log", "a"),
        ("logs/keep.log", "kept"),
        (".git/HEAD", "ref: refs/heads/main"),
        (
            "sub/secret.txt",
            "anchored at the root, so this one is sent",
        ),
    ] {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), body).unwrap();
    }
    let tag = format!("rivetr-test/{test_id}:1");
    janitor.image(&tag);
    let mut build = BuildSpec::new(root, &tag);
    build.labels.insert(TEST_LABEL.into(), test_id.clone());
    let (tx, _rx) = mpsc::unbounded_channel();
    rt.build(&build, tx).await.unwrap();

    let network = unique("rivetr-net");
    janitor.network(&network);
    rt.ensure_network(&network).await.unwrap();
    let spec = RunSpec {
        env: Vec::new(),
        ..web_spec(&test_id, &tag, &network)
    };
    janitor.container(&spec.name);
    let info = rt.run(&spec).await.unwrap();
    let addr = SocketAddr::new(info.ip.unwrap(), 8080);
    assert_eq!(
        http_get(addr, "/version", Duration::from_secs(15))
            .await
            .unwrap(),
        test_id
    );
    for (path, status) in [
        ("/secret.txt", 404),
        ("/logs/a.log", 404),
        ("/logs/keep.log", 200),
        ("/.git/HEAD", 404),
        ("/sub/secret.txt", 200),
        ("/Dockerfile", 200),
    ] {
        assert_eq!(http_status(addr, path).await.unwrap(), status, "{path}");
    }
    rt.stop_and_remove(&info.id, Duration::from_secs(1))
        .await
        .unwrap();
}

fn tick_number(line: &LogLine) -> Option<u32> {
    line.text.strip_prefix("tick ")?.parse().ok()
}

async fn logs_tail_and_follow(rt: Arc<dyn ContainerRuntime>) {
    let mut janitor = Janitor::new();
    let test_id = unique("logs");
    let (tag, _, _) = build_web(rt.as_ref(), &mut janitor, &test_id, &test_id).await;
    let network = unique("rivetr-net");
    janitor.network(&network);
    rt.ensure_network(&network).await.unwrap();
    let spec = web_spec(&test_id, &tag, &network);
    janitor.container(&spec.name);
    rt.run(&spec).await.unwrap();

    // Wait for a few ticks, reading the whole log each time.
    let mut all = Vec::new();
    for _ in 0..100 {
        let stream = rt.logs(&spec.name, false, None).await.unwrap();
        all = stream.map(|l| l.unwrap()).collect::<Vec<_>>().await;
        if all.iter().filter_map(tick_number).any(|n| n >= 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        all.contains(&LogLine {
            stream: LogStream::Stdout,
            text: "started".into()
        }),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|l| l.stream == LogStream::Stdout && l.text == "tick 1"),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|l| l.stream == LogStream::Stderr && l.text == "warn 1"),
        "{all:?}"
    );
    let seen = all.iter().filter_map(tick_number).max().unwrap();

    let tail: Vec<_> = rt
        .logs(&spec.name, false, Some(2))
        .await
        .unwrap()
        .map(|l| l.unwrap())
        .collect()
        .await;
    assert!(!tail.is_empty() && tail.len() <= 2, "tail 2: {tail:?}");
    assert!(
        !tail.iter().any(|l| l.text == "started"),
        "tail 2: {tail:?}"
    );

    // Following gets lines written after the call.
    let mut follow = rt.logs(&spec.name, true, Some(0)).await.unwrap();
    let newer = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = follow.next().await {
            let line = line.unwrap();
            if tick_number(&line).is_some_and(|n| n > seen) {
                return line;
            }
        }
        panic!("the followed log ended");
    })
    .await
    .expect("a new line within 20 s");
    assert_eq!(newer.stream, LogStream::Stdout);
    drop(follow);

    // A followed log ends when the container goes.
    let mut follow = rt.logs(&spec.name, true, Some(0)).await.unwrap();
    rt.stop_and_remove(&spec.name, Duration::from_secs(2))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while follow.next().await.is_some() {}
    })
    .await
    .expect("the followed log ends with its container");

    match rt.logs(&spec.name, false, None).await {
        Err(RuntimeError::NotFound { .. }) => {}
        Err(e) => panic!("expected NotFound, got {e}"),
        Ok(_) => panic!("expected NotFound, got a stream"),
    }
}

async fn absent_objects_are_not_errors(rt: Arc<dyn ContainerRuntime>) {
    let name = unique("absent");
    let started = std::time::Instant::now();
    for _ in 0..10 {
        assert_eq!(rt.inspect(&name).await.unwrap(), None);
    }
    eprintln!(
        "{}: inspect of an absent container took {:?} on average",
        rt.kind(),
        started.elapsed() / 10
    );
    rt.stop_and_remove(&name, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!rt
        .image_exists(&format!("rivetr-test/{name}:1"))
        .await
        .unwrap());
    rt.remove_image(&format!("rivetr-test/{name}:1"))
        .await
        .unwrap();
    assert!(rt.list(&[(TEST_LABEL, &name)]).await.unwrap().is_empty());
}

#[tokio::test]
// The guard only orders whole tests, each on its own runtime.
#[allow(clippy::await_holding_lock)]
async fn connect_prefers_a_socket_then_the_cli_then_says_where_it_looked() {
    let _serial = crate::support::podman::one_at_a_time();
    let socket = podman_socket();
    let missing = "unix:///nonexistent/rivetr/docker.sock".to_owned();

    let rt = connect_with(&[missing.clone(), socket.clone()], Some(podman_binary()))
        .await
        .unwrap();
    assert_eq!(rt.kind(), "docker-api");

    let rt = connect_with(std::slice::from_ref(&missing), Some(podman_binary()))
        .await
        .unwrap();
    assert_eq!(rt.kind(), "podman-cli");
    assert!(rt.ping().await.unwrap().contains("Podman"));

    let err = match connect_with(std::slice::from_ref(&missing), None).await {
        Err(e) => e,
        Ok(rt) => panic!("connected to {}", rt.kind()),
    };
    assert!(matches!(err, RuntimeError::NoEngine { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("/nonexistent/rivetr/docker.sock"), "{text}");
    assert!(text.contains("podman"), "{text}");

    let err = match connect_with(&[missing], Some("/nonexistent/podman".into())).await {
        Err(e) => e.to_string(),
        Ok(rt) => panic!("connected to {}", rt.kind()),
    };
    assert!(err.contains("/nonexistent/podman"), "{err}");
}

/// The one documented difference in what the runtimes accept: the CLI's
/// env file cannot carry a newline, so it refuses such a value (without
/// naming it) and creates nothing; the API passes it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only orders whole tests, each on its own runtime.
#[allow(clippy::await_holding_lock)]
async fn env_values_with_newlines_reach_the_api_and_are_refused_by_the_cli() {
    let _serial = crate::support::podman::one_at_a_time();
    let api = docker_api();
    let cli = podman_cli();
    let mut janitor = Janitor::new();
    let test_id = unique("newline");
    let (tag, _, _) = build_web(api.as_ref(), &mut janitor, &test_id, &test_id).await;
    let network = unique("rivetr-net");
    janitor.network(&network);
    api.ensure_network(&network).await.unwrap();

    let secret_line = format!("second line {test_id}");
    let mut spec = web_spec(&test_id, &tag, &network);
    spec.env = vec![("GREETING".into(), format!("first\n{secret_line}"))];
    janitor.container(&spec.name);

    match cli.run(&spec).await {
        Err(RuntimeError::Invalid(message)) => {
            assert!(message.contains("GREETING"), "{message}");
            assert!(!message.contains(&secret_line), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(cli.inspect(&spec.name).await.unwrap(), None);

    let info = api.run(&spec).await.unwrap();
    let addr = SocketAddr::new(info.ip.unwrap(), 8080);
    let env = http_get(addr, "/env", Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(env.trim_end(), format!("first\n{secret_line}"));
    api.stop_and_remove(&info.id, Duration::from_secs(1))
        .await
        .unwrap();
}
