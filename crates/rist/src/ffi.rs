//! The part of librist's C API (0.2.7, API 4.2) this crate calls, written
//! from `librist/*.h`. Only the structs whose fields we read are laid out;
//! the others stay opaque.

use std::ffi::{c_char, c_int, c_void};

#[repr(C)]
pub struct RistCtx {
    _private: [u8; 0],
}

#[repr(C)]
pub struct RistPeer {
    _private: [u8; 0],
}

#[repr(C)]
pub struct RistPeerConfig {
    _private: [u8; 0],
}

#[repr(C)]
pub struct RistLoggingSettings {
    _private: [u8; 0],
}

/// `struct rist_data_block` (headers.h).
#[repr(C)]
pub struct RistDataBlock {
    pub payload: *const c_void,
    pub payload_len: usize,
    pub ts_ntp: u64,
    pub virt_src_port: u16,
    pub virt_dst_port: u16,
    pub peer: *mut RistPeer,
    pub flow_id: u32,
    pub seq: u64,
    pub flags: u32,
    pub ref_: *mut c_void,
}

/// The head of `struct rist_stats` (stats.h): the JSON rendering is all we
/// read, so the union after it is left out (we only ever hold a pointer).
#[repr(C)]
pub struct RistStats {
    pub json_size: u32,
    pub stats_json: *mut c_char,
}

pub type LogCb = unsafe extern "C" fn(arg: *mut c_void, level: c_int, msg: *const c_char) -> c_int;
pub type StatsCb = unsafe extern "C" fn(arg: *mut c_void, stats: *const RistStats) -> c_int;

#[link(name = "rist")]
extern "C" {
    pub fn rist_logging_set(
        settings: *mut *mut RistLoggingSettings,
        level: c_int,
        log_cb: Option<LogCb>,
        cb_arg: *mut c_void,
        address: *mut c_char,
        logfp: *mut c_void,
    ) -> c_int;
    pub fn rist_logging_settings_free2(settings: *mut *mut RistLoggingSettings) -> c_int;

    pub fn rist_receiver_create(
        ctx: *mut *mut RistCtx,
        profile: c_int,
        logging: *mut RistLoggingSettings,
    ) -> c_int;
    pub fn rist_sender_create(
        ctx: *mut *mut RistCtx,
        profile: c_int,
        flow_id: u32,
        logging: *mut RistLoggingSettings,
    ) -> c_int;
    pub fn rist_flow_id_create() -> u32;

    pub fn rist_parse_address2(url: *const c_char, config: *mut *mut RistPeerConfig) -> c_int;
    pub fn rist_peer_config_free2(config: *mut *mut RistPeerConfig) -> c_int;
    pub fn rist_peer_create(
        ctx: *mut RistCtx,
        peer: *mut *mut RistPeer,
        config: *const RistPeerConfig,
    ) -> c_int;

    pub fn rist_stats_callback_set(
        ctx: *mut RistCtx,
        interval_ms: c_int,
        cb: Option<StatsCb>,
        arg: *mut c_void,
    ) -> c_int;
    pub fn rist_stats_free(stats: *const RistStats) -> c_int;

    pub fn rist_start(ctx: *mut RistCtx) -> c_int;
    pub fn rist_destroy(ctx: *mut RistCtx) -> c_int;

    pub fn rist_receiver_data_read2(
        ctx: *mut RistCtx,
        block: *mut *mut RistDataBlock,
        timeout_ms: c_int,
    ) -> c_int;
    pub fn rist_receiver_data_block_free2(block: *mut *mut RistDataBlock);
    pub fn rist_sender_data_write(ctx: *mut RistCtx, block: *const RistDataBlock) -> c_int;
}
