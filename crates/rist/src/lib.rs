//! RIST (VSF TR-06) through Debian's librist: a sender that bonds several
//! peers with weights and a receiver that listens on one or more addresses,
//! both optionally AES-256 encrypted with a pre-shared passphrase.
//!
//! Why a binding of our own rather than librist's `ristsender` and
//! `ristreceiver` tools as child processes: the tools take the passphrase
//! only in their argument list, which every local user can read in
//! `/proc/PID/cmdline`. Here the passphrase goes from the caller's memory
//! into librist's URL parser and nowhere else. It also saves a loopback UDP
//! hop and a process per stream.
//!
//! This crate is the workspace's only FFI boundary with librist and the one
//! place (besides none) that allows `unsafe`; every `unsafe` block says what
//! it relies on. It knows nothing about Strata, GStreamer or MPEG-TS: it
//! moves datagrams and reports librist's logs and statistics.

mod ffi;
pub mod stats;
pub mod trace;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Mutex;

pub use stats::{ReceiverFlowStats, SenderPeerStats, Stats};

/// Errors from setting up or using a RIST context.
#[derive(Debug, thiserror::Error)]
pub enum RistError {
    #[error("librist refused to create the {0} context")]
    Create(&'static str),
    #[error("librist could not parse the address {0:?}")]
    Address(String),
    #[error("librist could not create a peer for {0:?}")]
    Peer(String),
    #[error("librist did not start")]
    Start,
    #[error("the passphrase must be 8 to 128 ASCII letters or digits")]
    Passphrase,
    #[error("no link configured")]
    NoLinks,
    #[error("librist reported an error reading or writing data")]
    Io,
}

/// RIST profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Simple = 0,
    /// Encryption, GRE tunnelling on one UDP port, keep-alives.
    Main = 1,
}

/// One peer. For a sender, `address` is where to send (`host:port`); for a
/// receiver, where to listen (`0.0.0.0:port` or a local address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Names the link in statistics (librist's cname); the context's
    /// `cname` when empty. ASCII letters, digits, `-` and `_`.
    pub name: String,
    pub address: String,
    /// Share of the traffic this peer carries relative to the others; 0
    /// sends everything on it (duplicate path).
    pub weight: u32,
}

/// A context's settings.
#[derive(Clone)]
pub struct Config {
    pub profile: Profile,
    pub links: Vec<Link>,
    /// AES-256 passphrase; `None` sends in the clear.
    pub passphrase: Option<String>,
    /// The retransmission buffer (latency) in milliseconds.
    pub buffer_ms: u32,
    /// How often librist reports statistics; 0 turns them off.
    pub stats_interval_ms: u32,
    /// Shown in librist's logs and statistics.
    pub cname: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("profile", &self.profile)
            .field("links", &self.links)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "***"))
            .field("buffer_ms", &self.buffer_ms)
            .finish()
    }
}

/// Log levels as librist numbers them (syslog's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Notice,
    Info,
    Debug,
}

impl Level {
    fn from_raw(raw: c_int) -> Level {
        match raw {
            ..=3 => Level::Error,
            4 => Level::Warn,
            5 => Level::Notice,
            6 => Level::Info,
            _ => Level::Debug,
        }
    }
}

/// What librist reports, from its own threads.
#[derive(Debug, Clone)]
pub enum Event {
    Log { level: Level, message: String },
    Stats(Stats),
}

type Handler = Box<dyn Fn(Event) + Send + Sync>;

/// Where a context's callbacks go. librist copies the first logging
/// settings it sees into a process-wide global and may call that callback
/// after the context that set it is gone, so the sink is leaked (a few
/// bytes per context) and emptied, not freed, when its context is dropped.
struct Sink {
    handler: Mutex<Option<Handler>>,
    /// Our links' names in creation order (peer id 1 is the first).
    links: Vec<String>,
}

impl Sink {
    fn emit(&self, event: Event) {
        if let Ok(guard) = self.handler.lock() {
            if let Some(handler) = guard.as_ref() {
                handler(event);
            }
        }
    }
}

unsafe extern "C" fn on_log(arg: *mut c_void, level: c_int, msg: *const c_char) -> c_int {
    if arg.is_null() || msg.is_null() {
        return 0;
    }
    // SAFETY: `arg` is the leaked `&'static Sink` we registered, and `msg`
    // is a NUL-terminated string librist owns for the call's duration.
    let (sink, text) = unsafe { (&*(arg as *const Sink), CStr::from_ptr(msg)) };
    let message = text.to_string_lossy().trim_end().to_owned();
    sink.emit(Event::Log {
        level: Level::from_raw(level),
        message,
    });
    0
}

unsafe extern "C" fn on_stats(arg: *mut c_void, stats: *const ffi::RistStats) -> c_int {
    if stats.is_null() {
        return 0;
    }
    // SAFETY: `stats` is valid until we hand it to `rist_stats_free`, and
    // its `stats_json` is a NUL-terminated string (or NULL).
    let json = unsafe {
        let json = (*stats).stats_json;
        let text = (!json.is_null()).then(|| CStr::from_ptr(json).to_string_lossy().into_owned());
        ffi::rist_stats_free(stats);
        text
    };
    if arg.is_null() {
        return 0;
    }
    // SAFETY: as in `on_log`.
    let sink = unsafe { &*(arg as *const Sink) };
    if let Some(mut parsed) = json.as_deref().and_then(Stats::parse) {
        if let Stats::SenderPeer(peer) = &mut parsed {
            let index = usize::try_from(peer.peer_id).unwrap_or(0).wrapping_sub(1);
            if let Some(name) = sink.links.get(index) {
                peer.link = name.clone();
            }
        }
        sink.emit(Event::Stats(parsed));
    }
    0
}

/// An owned librist context with its logging settings and sink.
struct Ctx {
    ctx: *mut ffi::RistCtx,
    logging: *mut ffi::RistLoggingSettings,
    sink: &'static Sink,
}

// SAFETY: librist contexts are used from any thread (librist runs its own
// threads around them); reads happen through `&mut self` on one thread.
unsafe impl Send for Ctx {}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: both pointers came from librist and are freed once; after
        // `rist_destroy` returns, librist's threads for this context are
        // joined, so no callback runs with the context.
        unsafe {
            if !self.ctx.is_null() {
                ffi::rist_destroy(self.ctx);
            }
            if !self.logging.is_null() {
                ffi::rist_logging_settings_free2(&mut self.logging);
            }
        }
        if let Ok(mut handler) = self.sink.handler.lock() {
            *handler = None;
        }
    }
}

fn valid_passphrase(p: &str) -> bool {
    (8..=128).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The URL librist parses for one peer. The passphrase is in it, so it is
/// built here, handed to librist and dropped; it is never logged.
fn peer_url(config: &Config, link: &Link, listen: bool) -> String {
    let mut url = format!(
        "rist://{}{}?buffer={}&cname={}",
        if listen { "@" } else { "" },
        link.address,
        config.buffer_ms,
        if link.name.is_empty() {
            &config.cname
        } else {
            &link.name
        },
    );
    if !listen {
        url.push_str(&format!("&weight={}", link.weight));
    }
    if let Some(secret) = &config.passphrase {
        url.push_str(&format!("&aes-type=256&secret={secret}"));
    }
    url
}

fn open(
    config: &Config,
    handler: Handler,
    role: &'static str,
) -> Result<(Ctx, Vec<*mut ffi::RistPeer>), RistError> {
    if config.links.is_empty() {
        return Err(RistError::NoLinks);
    }
    if config
        .passphrase
        .as_deref()
        .is_some_and(|p| !valid_passphrase(p))
    {
        return Err(RistError::Passphrase);
    }
    let bad_name = |n: &str| {
        n.bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    if let Some(name) = std::iter::once(&config.cname)
        .chain(config.links.iter().map(|l| &l.name))
        .find(|n| bad_name(n))
    {
        return Err(RistError::Address(name.clone()));
    }
    let sink: &'static Sink = Box::leak(Box::new(Sink {
        handler: Mutex::new(Some(handler)),
        links: config.links.iter().map(|l| l.name.clone()).collect(),
    }));
    let arg = sink as *const Sink as *mut c_void;
    let mut ctx = Ctx {
        ctx: std::ptr::null_mut(),
        logging: std::ptr::null_mut(),
        sink,
    };
    // SAFETY: out-pointers are valid; the callback and its argument live
    // for the rest of the process (see `Sink`).
    unsafe {
        // Level 6 (info) so that connection events reach the caller, which
        // filters; 4 would hide peers joining and leaving.
        ffi::rist_logging_set(
            &mut ctx.logging,
            6,
            Some(on_log),
            arg,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        let created = match role {
            "receiver" => {
                ffi::rist_receiver_create(&mut ctx.ctx, config.profile as c_int, ctx.logging)
            }
            _ => ffi::rist_sender_create(
                &mut ctx.ctx,
                config.profile as c_int,
                ffi::rist_flow_id_create(),
                ctx.logging,
            ),
        };
        if created != 0 || ctx.ctx.is_null() {
            return Err(RistError::Create(role));
        }
    }
    let mut peers = Vec::new();
    for link in &config.links {
        let url = peer_url(config, link, role == "receiver");
        let c_url = CString::new(url).map_err(|_| RistError::Address(link.address.clone()))?;
        let mut peer_config: *mut ffi::RistPeerConfig = std::ptr::null_mut();
        // SAFETY: `c_url` outlives the call; librist allocates the config,
        // which we free right after creating the peer from it.
        unsafe {
            if ffi::rist_parse_address2(c_url.as_ptr(), &mut peer_config) != 0
                || peer_config.is_null()
            {
                return Err(RistError::Address(link.address.clone()));
            }
            let mut peer: *mut ffi::RistPeer = std::ptr::null_mut();
            let made = ffi::rist_peer_create(ctx.ctx, &mut peer, peer_config);
            ffi::rist_peer_config_free2(&mut peer_config);
            if made != 0 {
                return Err(RistError::Peer(link.address.clone()));
            }
            peers.push(peer);
        }
    }
    if config.stats_interval_ms > 0 {
        // SAFETY: as for the logging callback.
        unsafe {
            ffi::rist_stats_callback_set(
                ctx.ctx,
                config.stats_interval_ms.min(i32::MAX as u32) as c_int,
                Some(on_stats),
                arg,
            );
        }
    }
    // SAFETY: the context is fully configured.
    if unsafe { ffi::rist_start(ctx.ctx) } != 0 {
        return Err(RistError::Start);
    }
    Ok((ctx, peers))
}

/// A RIST receiver: listens on each link's address and merges what arrives
/// on all of them into one flow, in order, retransmissions filled in.
pub struct Receiver {
    ctx: Ctx,
}

/// One datagram out of a receiver (its payload is usually 7 TS packets).
pub struct Block {
    block: *mut ffi::RistDataBlock,
}

// SAFETY: a data block is a reference-counted buffer librist hands over;
// freeing it from another thread is allowed.
unsafe impl Send for Block {}

impl Block {
    pub fn payload(&self) -> &[u8] {
        // SAFETY: librist guarantees `payload` points at `payload_len`
        // bytes until the block is freed, which needs `&mut self`.
        unsafe {
            let b = &*self.block;
            if b.payload.is_null() || b.payload_len == 0 {
                return &[];
            }
            std::slice::from_raw_parts(b.payload as *const u8, b.payload_len)
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: the block came from `rist_receiver_data_read2` and is
        // freed exactly once.
        if !self.block.is_null() {
            unsafe { ffi::rist_receiver_data_block_free2(&mut self.block) }
        }
    }
}

impl Receiver {
    /// Starts listening. `on_event` is called from librist's threads.
    pub fn new(
        config: &Config,
        on_event: impl Fn(Event) + Send + Sync + 'static,
    ) -> Result<Receiver, RistError> {
        let (ctx, _peers) = open(config, Box::new(on_event), "receiver")?;
        Ok(Receiver { ctx })
    }

    /// The next datagram, waiting up to `timeout_ms`; `None` on timeout.
    pub fn read(&mut self, timeout_ms: u32) -> Result<Option<Block>, RistError> {
        let mut block: *mut ffi::RistDataBlock = std::ptr::null_mut();
        // SAFETY: the context is live; the out-pointer is valid.
        let n = unsafe {
            ffi::rist_receiver_data_read2(
                self.ctx.ctx,
                &mut block,
                timeout_ms.min(i32::MAX as u32) as c_int,
            )
        };
        if n < 0 {
            return Err(RistError::Io);
        }
        if block.is_null() {
            return Ok(None);
        }
        Ok(Some(Block { block }))
    }
}

/// A RIST sender: each datagram goes out over the links in proportion to
/// their weights, and lost packets are resent on whichever link is alive.
pub struct Sender {
    ctx: Ctx,
}

impl Sender {
    /// Starts the sender. `on_event` is called from librist's threads.
    pub fn new(
        config: &Config,
        on_event: impl Fn(Event) + Send + Sync + 'static,
    ) -> Result<Sender, RistError> {
        let (ctx, _peers) = open(config, Box::new(on_event), "sender")?;
        Ok(Sender { ctx })
    }

    /// Queues one datagram (at most 1316 bytes of payload is usual).
    pub fn write(&mut self, payload: &[u8]) -> Result<(), RistError> {
        let block = ffi::RistDataBlock {
            payload: payload.as_ptr() as *const c_void,
            payload_len: payload.len(),
            ts_ntp: 0,
            virt_src_port: 0,
            virt_dst_port: 0,
            peer: std::ptr::null_mut(),
            flow_id: 0,
            seq: 0,
            flags: 0,
            ref_: std::ptr::null_mut(),
        };
        // SAFETY: librist copies the payload before returning.
        let n = unsafe { ffi::rist_sender_data_write(self.ctx.ctx, &block) };
        if n < 0 {
            return Err(RistError::Io);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrases_are_url_safe() {
        assert!(valid_passphrase(&"ab".repeat(32)));
        assert!(!valid_passphrase("short"));
        assert!(!valid_passphrase("has&amp=x"));
    }

    #[test]
    fn debug_hides_the_passphrase() {
        let config = Config {
            profile: Profile::Main,
            links: vec![],
            passphrase: Some("secretsecret".into()),
            buffer_ms: 1000,
            stats_interval_ms: 0,
            cname: "x".into(),
        };
        assert!(!format!("{config:?}").contains("secretsecret"));
    }
}
