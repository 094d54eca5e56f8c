//! Configuration errors name the key and the file; `--version` is fast.

use std::time::{Duration, Instant};

use crate::helpers::TestEnv;

#[tokio::test]
async fn a_bad_value_names_the_key_and_the_file() {
    let env = TestEnv::new();
    env.write("picode.toml", "max_steps = \"lots\"\n");
    let run = env.run(&["--trust", "-p", "hi"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("max_steps"), "{}", run.stderr);
    assert!(run.stderr.contains("project/picode.toml"), "{}", run.stderr);
}

#[tokio::test]
async fn an_unknown_provider_reference_names_the_key_and_the_file() {
    let env = TestEnv::new();
    env.write_user_config("default_provider = \"ghost\"\n");
    let run = env.run(&["-p", "hi"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("default_provider"), "{}", run.stderr);
    assert!(run.stderr.contains("config/picode.toml"), "{}", run.stderr);
    assert!(run.stderr.contains("ghost"), "{}", run.stderr);
}

#[tokio::test]
async fn an_environment_override_is_named_as_such() {
    let env = TestEnv::new();
    let out = env
        .command()
        .args(["-p", "hi"])
        .env("PICODE_MAX_STEPS", "zero")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_steps"), "{stderr}");
    assert!(stderr.contains("PICODE_"), "{stderr}");
}

#[tokio::test]
async fn no_provider_is_a_usage_error() {
    let env = TestEnv::new();
    let run = env.run(&["-p", "hi"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("provider add"), "{}", run.stderr);
}

#[tokio::test]
async fn version_starts_fast() {
    let env = TestEnv::new();
    // Warm the page cache once, then take the best of a few runs.
    env.run(&["--version"]).await.assert_code(0);
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let run = env.run(&["--version"]).await;
        best = best.min(started.elapsed());
        run.assert_code(0);
        assert!(run.stdout.starts_with("picode "));
    }
    // The target is 20 ms; the bound leaves room for a loaded CI machine.
    assert!(best < Duration::from_millis(100), "--version took {best:?}");
}
