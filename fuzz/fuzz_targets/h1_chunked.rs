//! Any bytes as a chunked body after a valid head: chunk sizes,
//! extensions, the CRLF after each chunk, trailers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edge::fuzzing::chunked(data);
});
