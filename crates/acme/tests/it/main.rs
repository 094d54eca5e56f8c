//! The `acme` capability against a real ACME server: `pebble` and
//! `pebble-challtestsrv` (Debian's `pebble` package), started per test.

mod eab;
mod failure;
mod issue;
mod support;
