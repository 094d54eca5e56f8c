//! `strata-swarm`: many simulated agents against one control plane, for the
//! benchmark in `bench/strata`. Each simulated agent is enrolled through the
//! API, logs in with its own Ed25519 key over its own WebSocket, sends a
//! heartbeat and a stats message every second and acknowledges commands.
//! The swarm then measures command round trips (`POST /api/senders/ID/ping`,
//! timed by the control plane from send to ack) and, given the control
//! plane's pid, its RSS and CPU while the swarm runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    control: String,
    #[arg(long)]
    email: String,
    /// Read from STRATA_SWARM_PASSWORD.
    #[arg(long, env = "STRATA_SWARM_PASSWORD", hide_env_values = true)]
    password: String,
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Seconds to measure CPU over, once every agent is connected.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Command round trips to time.
    #[arg(long, default_value_t = 500)]
    pings: usize,
    /// The control plane's pid, for RSS and CPU.
    #[arg(long)]
    control_pid: Option<u32>,
}

async fn api(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn frame(id: u64, kind: &str, payload: Value) -> WsMessage {
    WsMessage::text(
        json!({"v": 1, "id": format!("s{id}"), "type": kind, "ts": now_ms(), "payload": payload})
            .to_string(),
    )
}

/// One simulated agent, until the process ends.
async fn agent(
    ws_url: String,
    sender_id: String,
    pair: Arc<Ed25519KeyPair>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
    let mut n = 0u64;
    ws.send(frame(
        n,
        "auth.hello",
        json!({"sender_id": sender_id, "agent_version": "swarm"}),
    ))
    .await?;
    let mut logged_in = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick(), if logged_in => {
                n += 1;
                ws.send(frame(n, "device.status", json!({"hostname": sender_id, "running_streams": []}))).await?;
                n += 1;
                ws.send(frame(n, "stream.stats", json!({"stream_id": format!("str_{sender_id}"), "encoder_kbps": 4000.0,
                    "links": [{"name": "wwan0", "bitrate_kbps": 2000.0, "rtt_ms": 40.0, "loss_pct": 0.1},
                              {"name": "wwan1", "bitrate_kbps": 2000.0, "rtt_ms": 60.0, "loss_pct": 0.2}]}))).await?;
            }
            msg = ws.next() => {
                let Some(msg) = msg else { bail!("closed") };
                let WsMessage::Text(text) = msg? else { continue };
                let v: Value = serde_json::from_str(&text)?;
                match v["type"].as_str().unwrap_or("") {
                    "auth.challenge" => {
                        let nonce = v["payload"]["nonce"].as_str().unwrap_or("");
                        let sig = pair.sign(&strata_protocol::challenge_message(&sender_id, nonce));
                        n += 1;
                        ws.send(frame(n, "auth.response", json!({"signature": base64::engine::general_purpose::STANDARD.encode(sig.as_ref())}))).await?;
                    }
                    "auth.ok" => {
                        logged_in = true;
                        let _ = ready.send(()).await;
                    }
                    "stream.start" | "stream.stop" | "config.update" => {
                        n += 1;
                        ws.send(frame(n, "ack", json!({"in_reply_to": v["id"], "ok": true}))).await?;
                    }
                    _ => {}
                }
            }
        }
    }
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    let base = args.control.trim_end_matches('/').to_owned();
    let login = api(
        &http,
        format!("{base}/api/auth/login"),
        None,
        json!({"email": args.email, "password": args.password}),
    )
    .await
    .context("signing in")?;
    let admin = login["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();

    eprintln!("enrolling {} agents", args.agents);
    let began = Instant::now();
    let rng = ring::rand::SystemRandom::new();
    let mut senders = Vec::with_capacity(args.agents);
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::new();
    for i in 0..args.agents {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("keygen"))?;
        let pair = Arc::new(
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("key"))?,
        );
        let (http, base, admin, sem) = (http.clone(), base.clone(), admin.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            let created = api(
                &http,
                format!("{base}/api/senders"),
                Some(&admin),
                json!({"name": format!("swarm-{i}")}),
            )
            .await?;
            let token = created["enrolment_token"]
                .as_str()
                .context("token")?
                .to_owned();
            let public =
                base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref());
            let enrolled = api(
                &http,
                format!("{base}/api/enrol"),
                None,
                json!({"token": token, "public_key": public, "hostname": format!("swarm-{i}")}),
            )
            .await?;
            let id = enrolled["sender_id"]
                .as_str()
                .context("sender id")?
                .to_owned();
            anyhow::Ok((id, pair))
        }));
    }
    for t in tasks {
        senders.push(t.await??);
    }
    eprintln!(
        "enrolled in {:.1} s; connecting",
        began.elapsed().as_secs_f64()
    );

    let ws_url = format!("{}/agent/ws", base.replacen("http", "ws", 1));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.agents.max(1));
    for (id, pair) in &senders {
        let (url, id, pair, ready) = (ws_url.clone(), id.clone(), pair.clone(), ready_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = agent(url, id.clone(), pair, ready).await {
                eprintln!("agent {id}: {e}");
            }
        });
    }
    let connect_began = Instant::now();
    for _ in 0..args.agents {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .context("agents did not all log in within 120 s")?;
    }
    eprintln!(
        "{} agents logged in in {:.1} s",
        args.agents,
        connect_began.elapsed().as_secs_f64()
    );

    // Settle, then measure the control plane over the window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu_before = args.control_pid.and_then(proc_cpu_ticks);
    let window = Instant::now();
    let mut rtts = Vec::with_capacity(args.pings);
    let ping_gap = Duration::from_secs_f64(args.duration as f64 / args.pings.max(1) as f64);
    for i in 0..args.pings {
        let (id, _) = &senders[i % senders.len()];
        let answer = api(
            &http,
            format!("{base}/api/senders/{id}/ping"),
            Some(&admin),
            json!({}),
        )
        .await?;
        rtts.push(answer["rtt_ms"].as_f64().unwrap_or(f64::NAN));
        tokio::time::sleep(ping_gap).await;
    }
    let elapsed = window.elapsed().as_secs_f64();
    let cpu_after = args.control_pid.and_then(proc_cpu_ticks);
    let rss = args.control_pid.and_then(proc_rss_kib);
    rtts.sort_by(|a, b| a.total_cmp(b));
    let cpu_pct = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some((b - a) as f64 / ticks_per_sec / elapsed * 100.0),
        _ => None,
    };
    let report = json!({
        "agents": args.agents,
        "window_s": elapsed,
        "command_rtt_ms": {"n": rtts.len(), "p50": percentile(&rtts, 0.5), "p99": percentile(&rtts, 0.99), "max": rtts.last()},
        "control_cpu_pct_of_one_core": cpu_pct,
        "control_rss_mib": rss.map(|k| k as f64 / 1024.0),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
