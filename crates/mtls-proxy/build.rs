//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds
//! the files of `src/store/migrations` at compile time, and the compiler
//! does not watch that folder by itself.

fn main() {
    println!("cargo:rerun-if-changed=src/store/migrations");
}
