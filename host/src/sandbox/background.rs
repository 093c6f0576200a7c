//! Compiling a component is background work: it must never take the CPU
//! from messages being served. Cranelift compiles a component's functions
//! in parallel on rayon's global pool, one thread per core; at normal
//! priority a hot swap under load took both cores for its compile and the
//! flows served up to 30 % fewer messages in the second after it (B5). Loads
//! run on a thread of their own and the compile pool's threads run at a
//! lower priority (`nice` + [`NICE`]), so an idle machine compiles as
//! fast as before and a busy one serves first.

use std::sync::Once;

/// How much lower than the router's own the priority of compile threads
/// is: nice +19, the lowest, weighs about 1.5 % of a normal thread under
/// contention.
pub const NICE: i32 = 19;

/// Lowers the calling thread's scheduling priority by [`NICE`]. Linux keeps
/// a nice value per thread, so only this thread is affected; elsewhere,
/// and where it is refused, a no-op (the compile is only less polite).
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call on the calling thread's id, no memory is
    // shared with the kernel.
    unsafe {
        let lower = (nice_of_this_thread() + NICE).min(19);
        let _ = libc::setpriority(libc::PRIO_PROCESS, this_thread(), lower);
    }
}

#[cfg(target_os = "linux")]
fn this_thread() -> libc::id_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t }
}

#[cfg(target_os = "linux")]
fn nice_of_this_thread() -> i32 {
    // SAFETY: a plain system call on the calling thread's id.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, this_thread()) }
}

/// Builds rayon's global pool, which wasmtime compiles on, with threads at
/// the lower priority. Once per process; a pool someone else built first
/// is left as it is.
pub fn init_compile_pool() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("eventflow-compile-{i}"))
            .start_handler(|_| lower_this_thread())
            .build_global();
    });
}

/// Runs `work` on a new thread at the lower priority and waits for it
/// without holding an async worker. `None` if the thread could not be
/// started or `work` panicked.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("eventflow-load".into())
        .spawn(move || {
            lower_this_thread();
            let _ = done.send(work());
        })
        .ok()?;
    result.await.ok()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loads_and_compiles_run_below_the_router() {
        let own = nice_of_this_thread();
        let expected = (own + NICE).min(19);
        assert_eq!(run(nice_of_this_thread).await, Some(expected));
        assert_eq!(nice_of_this_thread(), own, "the caller keeps its priority");
        init_compile_pool();
        let (tx, rx) = std::sync::mpsc::channel();
        rayon::spawn(move || tx.send(nice_of_this_thread()).unwrap());
        assert_eq!(rx.recv().unwrap(), expected);
    }
}
