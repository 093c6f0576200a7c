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
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to drop into the plugin
//! directory as `<owner>/<name>/<version>.wasm`.

/// The generated bindings. They live in a module of their own because the
/// exported macro and the bindings' own `use` of it would collide at the root.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "algorithm",
        pub_export_macro: true,
        export_macro_name: "export_algorithm",
        default_bindings_module: "eventflow_sdk::bindings",
    });
}

pub use bindings::eventflow::algorithm::types::RetryRequest;
pub use bindings::eventflow::algorithm::{data, log, publish};
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
