//! Bindings for writing Eventflow algorithms in Rust.
//!
//! ```ignore
//! use eventflow_sdk::{Failure, Guest, Message};
//!
//! struct Echo;
//!
//! impl Guest for Echo {
//!     fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
//!         Ok(Some(msg.payload))
//!     }
//! }
//!
//! eventflow_sdk::export_algorithm!(Echo);
//! ```
//!
//! That is a component of the `eventflow:algorithm@0.1.0` world: one message
//! per call. To take a flow's batches (`batch = { ... }`) in one call,
//! implement [`batch::Guest`] instead (`apply` and `apply_batch`) and export
//! with [`export_batch_algorithm!`]: a component of the 0.2.0 world.
//!
//! ```ignore
//! use eventflow_sdk::batch::{self, Outcome};
//! use eventflow_sdk::{Failure, Message};
//!
//! struct Echo;
//!
//! impl batch::Guest for Echo {
//!     fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
//!         Ok(Some(msg.payload))
//!     }
//!
//!     fn apply_batch(messages: Vec<Message>) -> Vec<Outcome> {
//!         // One model call for all of them would go here.
//!         batch::each(messages, <Echo as batch::Guest>::apply)
//!     }
//! }
//!
//! eventflow_sdk::export_batch_algorithm!(Echo);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to drop into the plugin
//! directory as `<owner>/<name>/<version>.wasm`.

/// The generated bindings. They live in a module of their own because the
/// exported macro and the bindings' own `use` of it would collide at the root.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "eventflow:algorithm/algorithm@0.1.0",
        pub_export_macro: true,
        export_macro_name: "export_algorithm",
        default_bindings_module: "eventflow_sdk::bindings",
    });
}

/// The bindings of the 0.2.0 world, which adds `apply-batch`. Its imports
/// and types are those of 0.1.0, shared with [`bindings`].
#[doc(hidden)]
pub mod batch_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "eventflow:algorithm/batch-algorithm@0.2.0",
        pub_export_macro: true,
        export_macro_name: "export_batch_algorithm",
        default_bindings_module: "eventflow_sdk::batch_bindings",
        with: {
            "eventflow:algorithm/types@0.1.0": crate::bindings::eventflow::algorithm0_1_0::types,
            "eventflow:algorithm/data@0.1.0": crate::bindings::eventflow::algorithm0_1_0::data,
            "eventflow:algorithm/publish@0.1.0": crate::bindings::eventflow::algorithm0_1_0::publish,
            "eventflow:algorithm/log@0.1.0": crate::bindings::eventflow::algorithm0_1_0::log,
        },
    });
}

/// Batches: [`Guest`], the 0.2.0 world's `apply` and `apply-batch`, its
/// [`Outcome`], and [`each`] to run `apply` on each message of a batch.
pub mod batch {
    pub use crate::batch_bindings::Guest;
    pub use crate::batch_bindings::eventflow::algorithm0_2_0::batch::Outcome;
    use crate::{Failure, Message};

    /// The outcomes of running `apply` on each of `messages`, in order: for
    /// an `apply_batch` that does nothing batch-wide.
    pub fn each(
        messages: Vec<Message>,
        apply: impl Fn(Message) -> Result<Option<Vec<u8>>, Failure>,
    ) -> Vec<Outcome> {
        messages
            .into_iter()
            .map(|m| match apply(m) {
                Ok(output) => Outcome::Output(output),
                Err(failure) => Outcome::Failed(failure),
            })
            .collect()
    }
}

pub use batch_bindings::export_batch_algorithm;
pub use bindings::eventflow::algorithm0_1_0::types::RetryRequest;
pub use bindings::eventflow::algorithm0_1_0::{data, log, publish};
pub use bindings::{Failure, Guest, Message, export_algorithm};

/// Shorthand for `Failure::Reject` with a reason.
pub fn reject(reason: impl Into<String>) -> Failure {
    Failure::Reject(reason.into())
}

/// Shorthand for `Failure::Retry` after `delay_ms` with a reason.
pub fn retry(delay_ms: u64, reason: impl Into<String>) -> Failure {
    Failure::Retry(RetryRequest {
        delay_ms,
        reason: reason.into(),
    })
}

/// Writes an info line to the router's log, tagged with the flow and message.
pub fn info(message: &str) {
    log::log(log::Level::Info, message);
}
