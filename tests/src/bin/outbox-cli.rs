//! The `outbox` command line, built by this package so that its tests run a binary compiled
//! with the same features as they are (`cargo test` builds it; no nested `cargo build`).

fn main() -> std::process::ExitCode {
    outbox_seaorm::cli::main()
}
