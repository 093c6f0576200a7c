//! The `eventflow` binary.

/// mimalloc rather than glibc's malloc: the message path allocates and frees
/// many small objects per message on two threads or more, and glibc's
/// consolidation of its free lists took a few percent of the router's CPU
/// in B2's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // `RUST_BACKTRACE` asks for backtraces of panics; without this, every
    // error value (anyhow's, wasmtime's: a trap of an algorithm) would also
    // capture one, which costs tens of microseconds each on the message path.
    // `RUST_LIB_BACKTRACE` set by the user still wins.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet (the async runtime starts in
        // `cli::main`), so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    eventflow::cli::main()
}
