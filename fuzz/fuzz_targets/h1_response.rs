//! Any bytes as an upstream's answer to a GET: the response head parser,
//! framing (length, chunked, until close, interim and 101 responses) and
//! the body decoders, read through a real loopback connection. See
//! `edge::fuzzing` for the properties checked besides crashes and hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edge::fuzzing::response(data);
});
