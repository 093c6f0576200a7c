//! Running an algorithm on one message: a fresh store and instance under
//! the invocation's limits, then its result, checked, as an [`Outcome`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{ResourceTable, WasiCtx};
use wasmtime_wasi_http::WasiHttpCtx;

use super::bindings::{AlgorithmPre, Lent, LentBatch, WitMessage, WitOutcome};
use super::failure::{classify, guest_failure};
use super::host::{self, HostState, Limiter};
use super::outbound::{Hooks, HooksFor, HttpLimits};
use super::{
    Algorithm, BatchOutcome, Code, Failure, Invocation, NativeFn, NoTopics, Outcome, Reason,
    Sandbox, TopicResolver,
};
use crate::config::Limits;
use crate::message::InboundMessage;

/// How long after the timeout an invocation stuck in a host call is cut off.
const HOST_GRACE: Duration = Duration::from_millis(100);
/// How much of an algorithm's stderr (a panic message, say) is kept for the
/// failure detail.
const STDERR_CAPTURE_BYTES: usize = 4096;

impl Sandbox {
    /// Runs `algorithm` on one message in a fresh instance.
    ///
    /// When all of the pool's `max_instances` slots are taken, the call
    /// first waits (in FIFO order across flows) for one to be freed. The
    /// wait is not the algorithm's doing, so it is neither a failure nor
    /// part of `timeout`: the timeout starts once the slot is held. (The
    /// caller keeps the message leased meanwhile.)
    pub async fn invoke(&self, algorithm: &Algorithm, inv: Invocation<'_>) -> Outcome {
        let waiting = Instant::now();
        let slot = match &algorithm.code {
            Code::Wasm(_) => self.instance_slot().await,
            Code::Native(_) => None,
        };
        self.run(algorithm, inv, slot, waiting.elapsed(), false)
            .await
    }

    /// Runs a 0.2.0 `algorithm` on a batch, `inv`'s message and then
    /// `rest`, in ONE fresh instance: `apply-batch` sees them in this order.
    /// `inv`'s limits and timeout hold for the whole call; a message over
    /// `max_input_bytes` (or undecodable) fails on its own and is left out of
    /// the call, and each output is checked against `max_output_bytes`. A
    /// trap, a broken limit or a list of outcomes of the wrong length fails
    /// every message of the call. The slot is waited for as in
    /// [`Sandbox::invoke`]. A native algorithm runs once per message.
    pub async fn invoke_batch<'a>(
        &self,
        algorithm: &Algorithm,
        inv: Invocation<'a>,
        rest: Vec<&'a mut InboundMessage>,
    ) -> BatchOutcome {
        let waiting = Instant::now();
        let slot = match &algorithm.code {
            Code::Wasm(_) => self.instance_slot().await,
            Code::Native(_) => None,
        };
        let slot_wait = waiting.elapsed();
        let started = Instant::now();
        let pre = match &algorithm.code {
            Code::Wasm(pre) => pre,
            Code::Native(f) => {
                let results = std::iter::once(&*inv.message)
                    .chain(rest.iter().map(|m| &**m))
                    .map(|m| run_native(f, m, inv.limits))
                    .collect();
                return BatchOutcome {
                    results,
                    published: Vec::new(),
                    duration: started.elapsed(),
                    slot_wait,
                    peak_memory_bytes: 0,
                    fuel_used: None,
                };
            }
        };
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        let (mut store, fuel) = self.store(algorithm, &inv, &stderr, (started, false));
        let Invocation {
            message: first,
            limits,
            timeout,
            ..
        } = inv;
        let mut all = Vec::with_capacity(1 + rest.len());
        all.push(first);
        all.extend(rest);
        let mut results: Vec<Option<Result<Option<Vec<u8>>, Failure>>> = all
            .iter()
            .map(|m| check_input(m, limits).map(Err))
            .collect();
        let callable: Vec<&mut InboundMessage> = all
            .iter_mut()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .map(|(m, _)| &mut **m)
            .collect();
        if !callable.is_empty() {
            let n = callable.len();
            let lent = LentBatch::new(callable);
            let called = call_batch(pre, &mut store, lent.messages(), timeout, &stderr).await;
            drop(lent);
            let mut outcomes = match called {
                Ok(o) if o.len() == n => Ok(o.into_iter()),
                Ok(o) => Err(Failure::new(
                    Reason::Trap,
                    format!("apply-batch returned {} outcomes for {n} messages", o.len()),
                )),
                Err(f) => Err(f),
            };
            for r in results.iter_mut().filter(|r| r.is_none()) {
                *r = Some(match &mut outcomes {
                    Err(f) => Err(f.clone()),
                    Ok(o) => match o.next() {
                        Some(WitOutcome::Output(output)) => check_output(output, limits),
                        Some(WitOutcome::Failed(failure)) => Err(guest_failure(failure)),
                        None => unreachable!("one outcome per message, checked above"),
                    },
                });
            }
        }
        let fuel_used = fuel.and_then(|f| store.get_fuel().ok().map(|left| f - left));
        let state = store.into_data();
        drop(slot);
        let results: Vec<_> = results.into_iter().flatten().collect();
        BatchOutcome {
            published: if results.iter().any(Result::is_ok) {
                state.published
            } else {
                Vec::new()
            },
            results,
            duration: started.elapsed(),
            slot_wait,
            peak_memory_bytes: state.limiter.peak_memory as u64,
            fuel_used,
        }
    }

    /// Runs `algorithm` on one message as a shadow: in a fresh instance,
    /// with its data writes captured (the invocation reads them back, the
    /// store never sees them), every HTTP request refused, and its
    /// publishes returned to be discarded. `None`, without running, when
    /// the pool has no free instance slot: a shadow never waits for one.
    pub async fn invoke_shadow(
        &self,
        algorithm: &Algorithm,
        inv: Invocation<'_>,
    ) -> Option<Outcome> {
        let slot = match &algorithm.code {
            Code::Wasm(_) => self.free_instance_slot().ok()?,
            Code::Native(_) => None,
        };
        Some(self.run(algorithm, inv, slot, Duration::ZERO, true).await)
    }

    /// Runs an invocation holding its instance `slot`.
    async fn run(
        &self,
        algorithm: &Algorithm,
        mut inv: Invocation<'_>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
        slot_wait: Duration,
        shadow: bool,
    ) -> Outcome {
        let started = Instant::now();
        let pre = match &algorithm.code {
            Code::Wasm(pre) => pre,
            Code::Native(f) => {
                return Outcome {
                    result: run_native(f, inv.message, inv.limits),
                    published: Vec::new(),
                    duration: started.elapsed(),
                    slot_wait,
                    peak_memory_bytes: 0,
                    fuel_used: None,
                };
            }
        };
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        let (mut store, fuel) = self.store(algorithm, &inv, &stderr, (started, shadow));
        let result = match check_input(inv.message, inv.limits) {
            Some(f) => Err(f),
            None => call(pre, &mut store, &mut inv, &stderr).await,
        };
        let fuel_used = fuel.and_then(|f| store.get_fuel().ok().map(|left| f - left));
        // Dropping the store gives its instances back to the pool; only then
        // may the next invocation have the slot.
        let state = store.into_data();
        drop(slot);
        Outcome {
            published: if result.is_ok() {
                state.published
            } else {
                Vec::new()
            },
            result,
            duration: started.elapsed(),
            slot_wait,
            peak_memory_bytes: state.limiter.peak_memory as u64,
            fuel_used,
        }
    }

    /// A fresh store for one invocation, under its limits: memory, fuel
    /// (returned, when counted) and the epoch deadline that enforces the
    /// timeout counted from `started`.
    fn store(
        &self,
        algorithm: &Algorithm,
        inv: &Invocation<'_>,
        stderr: &MemoryOutputPipe,
        (started, shadow): (Instant, bool),
    ) -> (Store<HostState>, Option<u64>) {
        let limits = inv.limits;
        let timeout = inv.timeout;
        let mut wasi = WasiCtx::builder();
        // Nothing is inherited: no environment but the secrets, no
        // preopened directories, no network (sockets are denied by default,
        // and these make it explicit).
        wasi.envs(inv.env)
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(host::MAX_RANDOM_BYTES);
        let hooks = self.http_hooks(algorithm, inv, started + timeout, shadow);
        let mut state = self.host_state(
            algorithm,
            (wasi.build(), hooks),
            inv.flow.clone(),
            &inv.message.id,
            inv.resolver.clone(),
            limits,
            Duration::from_secs_f64(limits.host_call_timeout_secs).min(timeout),
        );
        if shadow {
            state.captured_writes = Some(Default::default());
        }
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let fuel = self
            .settings
            .fuel
            .then(|| limits.max_fuel.unwrap_or(u64::MAX));
        if let Some(fuel) = fuel {
            // Cannot fail: fuel is enabled on the engine.
            let _ = store.set_fuel(fuel);
        }
        if self.settings.epoch_interruption {
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(move |_| {
                if started.elapsed() >= timeout {
                    Ok(UpdateDeadline::Interrupt)
                } else {
                    // Let other tasks run between ticks of a long computation.
                    Ok(UpdateDeadline::Yield(1))
                }
            });
        }
        (store, fuel)
    }

    /// The send-request hook of one invocation: the algorithm's grants, its
    /// limits, and the message's trace continued.
    fn http_hooks(
        &self,
        algorithm: &Algorithm,
        inv: &Invocation<'_>,
        deadline: Instant,
        shadow: bool,
    ) -> Hooks {
        let (max_requests, max_request_bytes, max_response_bytes, timeout) = inv.limits.http();
        let traceparent = inv
            .message
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| v.as_str());
        let hooks = if shadow {
            Hooks::for_shadow
        } else {
            Hooks::new
        };
        hooks(
            &self.outbound,
            HooksFor {
                algorithm: algorithm.qualified().clone(),
                label: algorithm.label().clone(),
                flow: inv.flow.clone(),
                message_id: &inv.message.id,
                traceparent,
                limits: HttpLimits {
                    max_requests,
                    max_request_bytes,
                    max_response_bytes,
                    timeout,
                },
                deadline,
            },
        )
    }

    /// The host side of one instance of `algorithm`.
    #[allow(clippy::too_many_arguments)]
    fn host_state(
        &self,
        algorithm: &Algorithm,
        (wasi, outbound): (WasiCtx, Hooks),
        flow: Arc<str>,
        message_id: &str,
        resolver: Arc<dyn TopicResolver>,
        limits: &Limits,
        host_call_timeout: Duration,
    ) -> HostState {
        HostState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outbound,
            limiter: Limiter {
                memory_limit: (limits.max_memory_mib as usize) << 20,
                peak_memory: 0,
            },
            owner: algorithm.id.owner.clone(),
            label: algorithm.label().clone(),
            flow,
            message_id: message_id.to_string(),
            data: self.data.clone(),
            resolver,
            published: Vec::new(),
            published_bytes: 0,
            max_publish_bytes: limits.publish_budget(),
            publish_refusals_logged: 0,
            host_calls: 0,
            max_host_calls: limits.max_host_calls,
            data_written: 0,
            max_data_write_bytes: limits.max_data_write_bytes,
            host_call_timeout,
            captured_writes: None,
        }
    }

    /// Calls `apply` `n` times on ONE instance, under the default limits
    /// (counted across the calls) and an unreachable epoch deadline, and returns
    /// the time taken. A measurement aid: the router never reuses instances.
    pub async fn time_reused_instance(
        &self,
        algorithm: &Algorithm,
        message: &InboundMessage,
        n: u32,
    ) -> anyhow::Result<Duration> {
        let Code::Wasm(pre) = &algorithm.code else {
            anyhow::bail!("a native algorithm has no instance");
        };
        let limits = Limits::default();
        let _slot = self.instance_slot().await;
        let hooks = Hooks::new(
            &self.outbound,
            HooksFor {
                algorithm: algorithm.qualified().clone(),
                label: algorithm.label().clone(),
                flow: "benchmark".into(),
                message_id: &message.id,
                traceparent: None,
                limits: HttpLimits {
                    max_requests: 0,
                    max_request_bytes: 0,
                    max_response_bytes: 0,
                    timeout: Duration::ZERO,
                },
                deadline: Instant::now(),
            },
        );
        let state = self.host_state(
            algorithm,
            (WasiCtx::builder().build(), hooks),
            "benchmark".into(),
            &message.id,
            Arc::new(NoTopics),
            &limits,
            Duration::from_secs_f64(limits.host_call_timeout_secs),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        if self.settings.fuel {
            let _ = store.set_fuel(u64::MAX);
        }
        if self.settings.epoch_interruption {
            store.set_epoch_deadline(u64::MAX / 2);
        }
        let wit = WitMessage::from(message);
        pre.apply_reused(&mut store, &wit, n)
            .await
            .map_err(anyhow::Error::from)
    }
}

/// Runs a native stand-in: the same input and output checks, no sandbox.
fn run_native(
    f: &NativeFn,
    message: &InboundMessage,
    limits: &Limits,
) -> Result<Option<Vec<u8>>, Failure> {
    match check_input(message, limits) {
        Some(failure) => Err(failure),
        None => f(message).and_then(|o| check_output(o, limits)),
    }
}

/// Instantiates the algorithm in `store` and calls `apply`, mapping a trap,
/// a host error, a guest failure or an oversized output to a [`Failure`].
async fn call(
    pre: &AlgorithmPre<HostState>,
    store: &mut Store<HostState>,
    inv: &mut Invocation<'_>,
    stderr: &MemoryOutputPipe,
) -> Result<Option<Vec<u8>>, Failure> {
    let (limits, timeout) = (inv.limits, inv.timeout);
    let lent = Lent::new(inv.message);
    let call = pre.apply(&mut *store, lent.message());
    match within_deadline(call, timeout, stderr).await? {
        Err(failure) => Err(guest_failure(failure)),
        Ok(output) => check_output(output, limits),
    }
}

/// Instantiates the algorithm in `store` and calls `apply-batch`, mapping
/// a trap, a host error or the timeout to one [`Failure`] for the call.
async fn call_batch(
    pre: &AlgorithmPre<HostState>,
    store: &mut Store<HostState>,
    messages: &[WitMessage],
    timeout: Duration,
    stderr: &MemoryOutputPipe,
) -> Result<Vec<WitOutcome>, Failure> {
    let Some(call) = pre.apply_batch(store, messages) else {
        return Err(Failure::new(
            Reason::Trap,
            "a 0.1.0 component has no apply-batch",
        ));
    };
    within_deadline(call, timeout, stderr).await
}

/// Awaits `call` of the guest, mapping a trap or host error to a
/// [`Failure`]. The epoch deadline stops computation; this outer deadline,
/// a little later so the epoch wins for computation, stops a host call that
/// hangs. (Its timer is armed only if the call does not finish on its first
/// poll.)
async fn within_deadline<T>(
    call: impl std::future::Future<Output = wasmtime::Result<T>>,
    timeout: Duration,
    stderr: &MemoryOutputPipe,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout + HOST_GRACE, call).await {
        Err(_) => Err(Failure::new(
            Reason::Timeout,
            format!("did not finish within {timeout:?} (stuck in a host call)"),
        )),
        Ok(Err(error)) => Err(classify(error, timeout, stderr)),
        Ok(Ok(output)) => Ok(output),
    }
}

fn check_input(message: &InboundMessage, limits: &Limits) -> Option<Failure> {
    if let Some(why) = &message.undecodable {
        return Some(Failure::new(Reason::InvalidInput, why.clone()));
    }
    if message.payload.len() as u64 > limits.max_input_bytes {
        return Some(Failure::new(
            Reason::InvalidInput,
            format!(
                "payload of {} bytes is over max_input_bytes ({})",
                message.payload.len(),
                limits.max_input_bytes
            ),
        ));
    }
    None
}

fn check_output(output: Option<Vec<u8>>, limits: &Limits) -> Result<Option<Vec<u8>>, Failure> {
    match output {
        Some(o) if o.len() as u64 > limits.max_output_bytes => Err(Failure::new(
            Reason::OutputTooLarge,
            format!(
                "returned {} bytes; max_output_bytes is {}",
                o.len(),
                limits.max_output_bytes
            ),
        )),
        other => Ok(other),
    }
}
