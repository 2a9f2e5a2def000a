//! `outbox`: look at an outbox and act on it from a shell. See [`outbox_seaorm::cli`].

fn main() -> std::process::ExitCode {
    outbox_seaorm::cli::main()
}
