//! A real librist sender and receiver on loopback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rist::{Config, Event, Link, Profile, Receiver, Sender, Stats};

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(address: String, passphrase: &str) -> Config {
    Config {
        profile: Profile::Main,
        links: vec![Link {
            name: String::new(),
            address,
            weight: 5,
        }],
        passphrase: Some(passphrase.into()),
        buffer_ms: 200,
        stats_interval_ms: 200,
        cname: "test".into(),
    }
}

struct Run {
    received: Vec<Vec<u8>>,
    events: Vec<Event>,
}

fn send_and_receive(send_key: &str, receive_key: &str) -> Run {
    let port = free_port();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut receiver = Receiver::new(
        &config(format!("127.0.0.1:{port}"), receive_key),
        move |e| sink.lock().unwrap().push(e),
    )
    .unwrap();
    let sink = events.clone();
    let mut sender = Sender::new(&config(format!("127.0.0.1:{port}"), send_key), move |e| {
        sink.lock().unwrap().push(e)
    })
    .unwrap();
    let mut received = Vec::new();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        let mut packet = vec![0x47u8; 1316];
        packet[1..5].copy_from_slice(&n.to_be_bytes());
        sender.write(&packet).unwrap();
        n += 1;
        while let Some(block) = receiver.read(5).unwrap() {
            received.push(block.payload().to_vec());
        }
    }
    let events = events.lock().unwrap().clone();
    Run { received, events }
}

#[test]
fn the_right_key_delivers_every_datagram_in_order() {
    let run = send_and_receive(&"ab".repeat(32), &"ab".repeat(32));
    assert!(
        run.received.len() > 50,
        "only {} datagrams",
        run.received.len()
    );
    let numbers: Vec<u32> = run
        .received
        .iter()
        .map(|p| u32::from_be_bytes(p[1..5].try_into().unwrap()))
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert!(run
        .events
        .iter()
        .any(|e| matches!(e, Event::Stats(Stats::SenderPeer(_)))));
    assert!(run
        .events
        .iter()
        .any(|e| matches!(e, Event::Stats(Stats::ReceiverFlow(_)))));
}

#[test]
fn a_wrong_key_delivers_nothing_and_says_so() {
    let run = send_and_receive(&"ab".repeat(32), &"cd".repeat(32));
    assert!(run.received.is_empty(), "{} datagrams", run.received.len());
    assert!(
        run.events.iter().any(|e| matches!(
            e,
            Event::Log {
                level: rist::Level::Error,
                ..
            }
        )),
        "no error logged"
    );
}

#[test]
fn sender_stats_name_each_link() {
    let port = free_port();
    let dead = free_port();
    let events = Arc::new(Mutex::new(Vec::new()));
    let _receiver = Receiver::new(
        &config(format!("127.0.0.1:{port}"), &"ab".repeat(32)),
        |_| {},
    )
    .unwrap();
    let sink = events.clone();
    let mut c = config(format!("127.0.0.1:{port}"), &"ab".repeat(32));
    c.links = vec![
        Link {
            name: "dead".into(),
            address: format!("127.0.0.1:{dead}"),
            weight: 5,
        },
        Link {
            name: "alive".into(),
            address: format!("127.0.0.1:{port}"),
            weight: 5,
        },
    ];
    let mut sender = Sender::new(&c, move |e| sink.lock().unwrap().push(e)).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        sender.write(&[0x47; 1316]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let events = events.lock().unwrap();
    let last = |name: &str| {
        events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Stats(Stats::SenderPeer(p)) if p.link == name => Some(p.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no stats for {name}"))
    };
    // The link with nobody at the other end hears nothing back.
    assert_eq!(last("dead").received, 0);
    assert!(last("alive").received > 0);
}
