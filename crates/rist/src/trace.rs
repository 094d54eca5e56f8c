//! Packet traces for latency measurements: the sender and the receiver each
//! append `hash unix_time_ns` for the same sample of datagrams (those whose
//! hash is a multiple of 32), so joining the two files on the hash gives
//! each sampled datagram's one-way time on one machine's clock.

use std::hash::{Hash, Hasher};
use std::io::Write;

/// An open trace file.
pub struct PacketTrace(std::io::BufWriter<std::fs::File>);

/// Std's SipHash with its fixed keys: the same in every process built
/// from this source, which is all the join needs.
fn hash(data: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

impl PacketTrace {
    pub fn open(path: &std::path::Path) -> std::io::Result<PacketTrace> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(PacketTrace(std::io::BufWriter::new(file)))
    }

    /// Records the datagram if it is in the sample.
    pub fn record(&mut self, data: &[u8]) {
        let hash = hash(data);
        if !hash.is_multiple_of(32) {
            return;
        }
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let _ = writeln!(self.0, "{hash:016x} {ns}");
    }
}

impl Drop for PacketTrace {
    fn drop(&mut self) {
        let _ = self.0.flush();
    }
}
