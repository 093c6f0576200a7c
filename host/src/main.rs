//! The `eventflow` binary.

fn main() -> std::process::ExitCode {
    eventflow::cli::main()
}
