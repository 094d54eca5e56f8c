//! Benchmarks of the recording store on its own, without the proxy in front
//! of it. `bench/mtls-proxy/writer` and `bench/mtls-proxy/queries` run them
//! on a release build and explain the figures; see bench/README.md.
//!
//! - `writer` pushes records at a fixed rate through a real [`Recorder`]
//!   (queue, writer thread, maintenance) into a real SQLite file kept small
//!   enough that retention deletes rows and compression rewrites bodies the
//!   whole time, and reports the rows written per second, the records
//!   dropped, and how far the queue backed up (the writer's longest stall).
//! - `queries` builds a database of many rows shaped like a busy proxy's
//!   and times every kind of search `mtls-proxy logs` offers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use mtls_proxy::store::{Filter, FilterParams, Kind, Record, Recorder, Store, StoreConfig};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Records at a fixed rate while retention and compression run.
    Writer(WriterArgs),
    /// Times each kind of search on a large database (built when missing).
    Queries(QueryArgs),
}

#[derive(clap::Args)]
struct WriterArgs {
    /// The database file (created; an existing one is kept and grown).
    #[arg(long)]
    db: PathBuf,
    /// Records per second; 0 sends as fast as the sender can.
    #[arg(long, default_value_t = 45_000)]
    rate: u64,
    /// How long to send.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The store's `max_bytes`: small, so that size retention deletes rows.
    #[arg(long, default_value = "64MiB")]
    max_bytes: String,
    /// The store's `maintenance_interval`.
    #[arg(long, default_value = "1s")]
    maintenance_interval: String,
    /// The store's `compress_after`.
    #[arg(long, default_value = "5s")]
    compress_after: String,
    /// The store's `queue_capacity`; the product's default when not given.
    #[arg(long)]
    queue_capacity: Option<usize>,
    /// Every Nth record carries a 2 KiB response body (0: none, as in the
    /// proxy benchmark, which records headers only).
    #[arg(long, default_value_t = 10)]
    body_every: u64,
    /// Rows older than `max_age` (one day here) written before the run, so
    /// that age retention deletes them while records arrive.
    #[arg(long, default_value_t = 200_000)]
    old_rows: u64,
}

#[derive(clap::Args)]
struct QueryArgs {
    /// The database file; built with `rows` rows when it does not exist.
    #[arg(long)]
    db: PathBuf,
    /// Rows of a database that is built.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Timed runs of each search (after one untimed run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Writer(args) => writer(args).await,
        Command::Queries(args) => queries(args).await,
    }
}

fn duration(text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text).with_context(|| format!("invalid duration {text:?}"))
}

fn header_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

/// A record like the ones the proxy benchmark's mTLS keep-alive runs make.
fn proxied(recorder: &Recorder, i: u64) -> Record {
    let mut rec = Record::new(Kind::Request);
    rec.duration = Duration::from_micros(800 + i % 400);
    rec.route = Some("bench".into());
    rec.upstream = Some("127.0.0.1:19001".into());
    rec.method = Some(http::Method::GET);
    rec.path = Some(format!("/items/{}", i % 1000));
    rec.status = Some(200);
    rec.bytes_out = 2;
    rec.client_identity = Some("spiffe://bench/client".to_owned());
    rec.peer = Some(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        40_000 + (i % 64) as u16,
    )));
    rec.tls_version = Some("TLSv1.3");
    rec.sni = Some("localhost".to_owned());
    rec.request_headers = recorder.encode_headers(&header_map(&[
        ("host", "localhost:19443"),
        ("user-agent", "oha/1.16.0"),
        ("accept", "*/*"),
    ]));
    rec.response_headers = recorder.encode_headers(&header_map(&[
        ("server", "nginx/1.22.1"),
        ("date", "Mon, 07 Dec 2026 18:00:00 GMT"),
        ("content-type", "text/plain"),
        ("content-length", "2"),
    ]));
    rec
}

async fn writer(args: WriterArgs) -> anyhow::Result<()> {
    let mut cfg = StoreConfig::new(&args.db);
    cfg.max_bytes = mtls_proxy_byte_size(&args.max_bytes)?;
    cfg.maintenance_interval = duration(&args.maintenance_interval)?;
    cfg.compress_after = duration(&args.compress_after)?;
    cfg.max_age = Duration::from_secs(86_400);
    if let Some(capacity) = args.queue_capacity {
        cfg.queue_capacity = capacity;
    }
    let capacity = cfg.queue_capacity;
    let cfg_max = cfg.max_bytes;
    let store = Store::open(&cfg).await?;
    let (recorder, tasks) = Recorder::start(store.clone())?;

    // Rows for age retention to delete: two days old, written (and
    // flushed) before the clock starts.
    let body = Bytes::from(
        (0..2048u32)
            .map(|i| b"{\"id\":0,\"name\":\"item\"}"[(i % 22) as usize])
            .collect::<Vec<u8>>(),
    );
    for i in 0..args.old_rows {
        let mut rec = proxied(&recorder, i);
        rec.ts = SystemTime::now() - Duration::from_secs(2 * 86_400);
        recorder.record(rec);
        if i % 5000 == 4999 {
            recorder.flush().await;
        }
    }
    recorder.flush().await;
    let dropped_before = recorder.dropped();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let recorder = recorder.clone();
        let stop = stop.clone();
        std::thread::spawn(move || sample_queue(&recorder, capacity / 2, &stop))
    };
    let started = Instant::now();
    let sender = {
        let recorder = recorder.clone();
        let (rate, seconds, body_every) = (args.rate, args.seconds, args.body_every);
        std::thread::spawn(move || {
            send_at_rate(
                &recorder,
                rate,
                Duration::from_secs(seconds),
                body_every,
                &body,
            )
        })
    };
    let sent = sender.join().expect("sender thread");
    let elapsed = started.elapsed();
    recorder.flush().await;
    let drained = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peaks = sampler.join().expect("sampler thread");

    let dropped = recorder.dropped() - dropped_before;
    let failed = recorder.failed();
    let written = sent - dropped - failed;
    tasks.shutdown().await;
    let report = Store::open_read_only(&args.db).await?;
    let size = report.size_bytes();
    report.close().await;

    let secs = elapsed.as_secs_f64();
    println!(
        "| records sent | {sent} ({:.0}/s over {secs:.1} s) |",
        sent as f64 / secs
    );
    println!(
        "| rows written | {written} ({:.0}/s; queue drained {:.2} s after the last) |",
        written as f64 / secs,
        (drained - elapsed).as_secs_f64()
    );
    println!(
        "| records dropped | {dropped} ({:.3}%) |",
        dropped as f64 * 100.0 / sent.max(1) as f64
    );
    println!("| records failed | {failed} |");
    println!(
        "| queue (capacity {capacity}) | longest backlog {} records{} |",
        peaks.max,
        if args.rate > 0 {
            format!(
                ", {:.0} ms of records at this rate",
                peaks.max as f64 * 1000.0 / args.rate as f64
            )
        } else {
            String::new()
        }
    );
    println!(
        "| time with the queue over half full | {} ms |",
        peaks.over_half.as_millis()
    );
    println!(
        "| database and log | at most {:.1} MiB during the run (max_bytes {:.1} MiB), {:.1} MiB at the end |",
        peaks.largest as f64 / 1_048_576.0,
        cfg_max as f64 / 1_048_576.0,
        size as f64 / 1_048_576.0
    );
    if dropped > 0 && args.rate > 0 {
        bail!("{dropped} records dropped");
    }
    Ok(())
}

/// Parses sizes the way the config file does (`64MiB`, `1GiB`, bytes).
fn mtls_proxy_byte_size(text: &str) -> anyhow::Result<u64> {
    let cfg: StoreConfig = toml::from_str(&format!("path = \"x\"\nmax_bytes = \"{text}\""))
        .with_context(|| format!("invalid size {text:?}"))?;
    Ok(cfg.max_bytes)
}

/// Sends records at `rate` per second (paced every 200 µs) for `length`;
/// returns how many were sent.
fn send_at_rate(
    recorder: &Recorder,
    rate: u64,
    length: Duration,
    body_every: u64,
    body: &Bytes,
) -> u64 {
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= length {
            return sent;
        }
        let due = if rate == 0 {
            sent + 256
        } else {
            (elapsed.as_secs_f64() * rate as f64) as u64
        };
        while sent < due {
            let mut rec = proxied(recorder, sent);
            if body_every > 0 && sent.is_multiple_of(body_every) {
                rec.response_body = Some(body.clone());
                rec.bytes_out = body.len() as u64;
            }
            recorder.record(rec);
            sent += 1;
        }
        if rate > 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

struct Peaks {
    max: usize,
    over_half: Duration,
    /// The largest database plus log seen, in bytes.
    largest: u64,
}

/// Samples the queue's length every millisecond until told to stop.
fn sample_queue(recorder: &Recorder, half: usize, stop: &AtomicBool) -> Peaks {
    let mut peaks = Peaks {
        max: 0,
        over_half: Duration::ZERO,
        largest: 0,
    };
    let mut tick = 0u64;
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(1));
        let queued = recorder.queued();
        let now = Instant::now();
        if queued > half {
            peaks.over_half += now - last;
        }
        last = now;
        peaks.max = peaks.max.max(queued);
        tick += 1;
        if tick.is_multiple_of(100) {
            if let Some(store) = recorder.store() {
                peaks.largest = peaks.largest.max(store.size_bytes());
            }
        }
    }
    peaks
}

/// One search of the `queries` benchmark.
struct Search {
    name: &'static str,
    params: FilterParams,
}

fn search(name: &'static str, pairs: &[(&str, &str)]) -> Search {
    let mut p = FilterParams::default();
    for (key, value) in pairs {
        let value = Some((*value).to_owned());
        match *key {
            "since" => p.since = value,
            "status" => p.status = value,
            "route" => p.route = value,
            "identity" => p.identity = value,
            "path" => p.path = value,
            "kind" => p.kind = value,
            _ => unreachable!("{key}"),
        }
    }
    Search { name, params: p }
}

fn searches() -> Vec<Search> {
    vec![
        search("newest 100, no filter", &[]),
        search("since 15m", &[("since", "15m")]),
        search("status 5xx (1%)", &[("status", "5xx")]),
        search("status 4xx (3%)", &[("status", "4xx")]),
        search("status 3xx (1%)", &[("status", "3xx")]),
        search("status 2xx (95%)", &[("status", "2xx")]),
        search("status 1xx (upgrades, 1%)", &[("status", "1xx")]),
        search("status 404", &[("status", "404")]),
        search("status 418 (none)", &[("status", "418")]),
        search("route api (70%)", &[("route", "api")]),
        search("route ws (1%)", &[("route", "ws")]),
        search("route nowhere (none)", &[("route", "nowhere")]),
        search(
            "identity, one service (2%)",
            &[("identity", "spiffe://corp/svc-7")],
        ),
        search(
            "identity glob spiffe://corp/* (99%)",
            &[("identity", "spiffe://corp/*")],
        ),
        search(
            "identity glob spiffe://partner/* (1%)",
            &[("identity", "spiffe://partner/*")],
        ),
        search(
            "identity glob spiffe://none/* (none)",
            &[("identity", "spiffe://none/*")],
        ),
        search("path glob /api/* (70%)", &[("path", "/api/*")]),
        search("path glob /admin/* (9%)", &[("path", "/admin/*")]),
        search(
            "path glob /admin/users/7* (rare)",
            &[("path", "/admin/users/7*")],
        ),
        search("path glob /nothing/* (none)", &[("path", "/nothing/*")]),
        search("path, exact", &[("path", "/api/v1/orders/4243")]),
        search("kind handshake (0.05%)", &[("kind", "handshake")]),
        search(
            "route api + status 5xx",
            &[("route", "api"), ("status", "5xx")],
        ),
        search(
            "since 1h + path glob /admin/*",
            &[("since", "1h"), ("path", "/admin/*")],
        ),
        search(
            "identity glob + status 404 + path glob",
            &[
                ("identity", "spiffe://corp/*"),
                ("status", "404"),
                ("path", "/admin/*"),
            ],
        ),
        search(
            "path glob */orders/* (leading wildcard, 35%)",
            &[("path", "*/orders/*")],
        ),
        search(
            "path glob */nothing (leading wildcard, none)",
            &[("path", "*/nothing")],
        ),
    ]
}

async fn queries(args: QueryArgs) -> anyhow::Result<()> {
    if !args.db.exists() {
        let started = Instant::now();
        build(&args.db, args.rows).await?;
        eprintln!(
            "# built {} rows in {:.0} s",
            args.rows,
            started.elapsed().as_secs_f64()
        );
    }
    let store = Store::open_read_only(&args.db).await?;
    let size = store.size_bytes();
    eprintln!("# {:.2} GiB", size as f64 / (1u64 << 30) as f64);
    println!("| Search | rows | median ms | slowest ms |");
    println!("|---|---:|---:|---:|");
    let mut worst = 0.0f64;
    for s in searches() {
        let filter = Filter::parse(&s.params)?;
        let rows = store.query(&filter).await?.len();
        let mut times = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let filter = Filter::parse(&s.params)?;
            let started = Instant::now();
            let n = store.query(&filter).await?.len();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(n, rows, "{}", s.name);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let slowest = times[times.len() - 1];
        if !s.name.contains("leading wildcard") {
            worst = worst.max(median);
        }
        println!("| {} | {rows} | {median:.1} | {slowest:.1} |", s.name);
    }
    println!("\nSlowest median apart from leading wildcards: {worst:.1} ms");
    store.close().await;
    Ok(())
}

/// Writes `rows` rows spread over the last seven days, shaped like a busy
/// proxy's: 70% of requests on route `api`, 20% `static`, 9% `admin`, 1%
/// WebSocket upgrades (101); 95% successes, 1% redirects, 3% client and 1%
/// server errors; fifty client identities and a partner's; one failed
/// handshake in 2,000 rows.
async fn build(path: &Path, rows: u64) -> anyhow::Result<()> {
    // The store creates the file and its schema; the rows go in through a
    // connection of our own, in large transactions.
    Store::open(&StoreConfig::new(path)).await?.close().await;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || fill(&path, rows)).await??;
    Ok(())
}

fn fill(path: &Path, rows: u64) -> anyhow::Result<()> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("PRAGMA cache_size = -1000000; PRAGMA synchronous = OFF;")?;
    let now = mtls_micros(SystemTime::now());
    let span: i64 = 7 * 86_400 * 1_000_000;
    let request_headers = r#"[["host","api.corp.example"],["user-agent","client/2.3"],["accept","application/json"],["x-request-id","5f0c7a2e9b3d4c1f"]]"#;
    let response_headers = r#"[["content-type","application/json"],["content-length","512"],["date","Mon, 07 Dec 2026 18:00:00 GMT"]]"#;
    let per_tx = 100_000;
    let mut i = 0u64;
    while i < rows {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO exchanges (ts, duration_us, kind, route, upstream, method, path, \
                 status, bytes_in, bytes_out, client_identity, peer, tls_version, sni, error, \
                 request_headers, response_headers) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 512, ?, ?, 'TLSv1.3', 'api.corp.example', ?, ?, ?)",
            )?;
            let end = (i + per_tx).min(rows);
            for n in i..end {
                let ts = now - span + (n as i64 * span / rows as i64);
                let peer = format!("10.0.{}.{}:{}", n % 200, n % 250, 30_000 + n % 30_000);
                if n % 2000 == 7 {
                    insert.execute(rusqlite::params![
                        ts,
                        0,
                        "handshake",
                        None::<&str>,
                        None::<&str>,
                        None::<&str>,
                        None::<&str>,
                        None::<i64>,
                        None::<&str>,
                        peer,
                        "tls:unknown_issuer",
                        "[]",
                        "[]"
                    ])?;
                    continue;
                }
                let pick = n % 100;
                let spread = (n.wrapping_mul(7919)) % 1000;
                let (route, path, status) = if pick < 70 {
                    let path = if n % 2 == 0 {
                        format!("/api/v1/users/{}", n % 100_000)
                    } else {
                        format!("/api/v1/orders/{}", n % 50_000)
                    };
                    ("api", path, http_status(spread))
                } else if pick < 90 {
                    (
                        "static",
                        format!("/static/app.{}.js", n % 50),
                        http_status(spread),
                    )
                } else if pick < 99 {
                    (
                        "admin",
                        format!("/admin/users/{}", n % 1000),
                        http_status(spread),
                    )
                } else {
                    ("ws", "/socket".to_owned(), 101)
                };
                let identity = if n % 100 == 42 {
                    format!("spiffe://partner/app-{}", n % 5)
                } else {
                    format!("spiffe://corp/svc-{}", n.wrapping_mul(31) % 50)
                };
                insert.execute(rusqlite::params![
                    ts,
                    900 + (n % 5000) as i64,
                    "request",
                    route,
                    "10.1.0.5:8080",
                    "GET",
                    path,
                    status,
                    identity,
                    peer,
                    None::<&str>,
                    request_headers,
                    response_headers
                ])?;
            }
            i = end;
        }
        tx.commit()?;
        if i.is_multiple_of(1_000_000) {
            eprintln!("# {i} rows");
        }
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

/// 95% 200, 1% 304, 2.5% 404, 0.5% 429, 1% 5xx.
fn http_status(spread: u64) -> i64 {
    match spread {
        0..950 => 200,
        950..960 => 304,
        960..985 => 404,
        985..990 => 429,
        990..995 => 500,
        995..998 => 502,
        _ => 503,
    }
}

fn mtls_micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
