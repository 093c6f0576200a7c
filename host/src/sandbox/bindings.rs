//! The one place the algorithm worlds' bindings are generated. The rest of
//! the host sees domain types; conversions live here.
//!
//! Two worlds: `eventflow:algorithm@0.1.0` exports `apply`;
//! `eventflow:algorithm@0.2.0` imports the same interfaces of 0.1.0 and adds
//! `apply-batch`. The imports are generated once, with the 0.2.0 world
//! ([`batch`]), and the 0.1.0 world's bindings ([`single`]) reuse them, so
//! one set of host implementations serves both.

/// The 0.2.0 world: `apply` and `apply-batch`, and every import.
pub mod batch {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "eventflow:algorithm/batch-algorithm@0.2.0",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// The 0.1.0 world: `apply` only, over the imports of [`batch`].
pub mod single {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "eventflow:algorithm/algorithm@0.1.0",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "eventflow:algorithm/types@0.1.0": super::batch::eventflow::algorithm0_1_0::types,
            "eventflow:algorithm/data@0.1.0": super::batch::eventflow::algorithm0_1_0::data,
            "eventflow:algorithm/publish@0.1.0": super::batch::eventflow::algorithm0_1_0::publish,
            "eventflow:algorithm/log@0.1.0": super::batch::eventflow::algorithm0_1_0::log,
        },
    });
}

/// The host's imports, for [`HostState`](super::host::HostState).
pub use self::batch::eventflow::algorithm0_1_0 as imports;
pub use self::batch::eventflow::algorithm0_1_0::data::DataError as WitDataError;
pub use self::batch::eventflow::algorithm0_1_0::log::Level as WitLevel;
pub use self::batch::eventflow::algorithm0_1_0::publish::PublishError as WitPublishError;
pub use self::batch::eventflow::algorithm0_1_0::types::{
    Failure as WitFailure, Message as WitMessage,
};
pub use self::batch::eventflow::algorithm0_2_0::batch::Outcome as WitOutcome;

/// A component ready to instantiate, with the exports of its world.
pub enum AlgorithmPre<T: 'static> {
    /// A 0.1.0 component: `apply`.
    Single(single::AlgorithmPre<T>),
    /// A 0.2.0 component: `apply` and `apply-batch`.
    Batch(batch::BatchAlgorithmPre<T>),
}

impl<T: Send + 'static> AlgorithmPre<T> {
    /// The component's world: 0.2.0 if it exports `apply-batch` (and
    /// `apply`), else 0.1.0 if it exports `apply`.
    pub fn new(pre: wasmtime::component::InstancePre<T>) -> wasmtime::Result<Self> {
        match batch::BatchAlgorithmPre::new(pre.clone()) {
            Ok(b) => Ok(Self::Batch(b)),
            Err(_) => single::AlgorithmPre::new(pre).map(Self::Single),
        }
    }

    /// Whether the component exports `apply-batch`.
    pub fn batches(&self) -> bool {
        matches!(self, Self::Batch(_))
    }

    /// Instantiates the component and calls `apply` on `message`.
    pub async fn apply(
        &self,
        store: &mut wasmtime::Store<T>,
        message: &WitMessage,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, WitFailure>> {
        macro_rules! apply {
            ($pre:expr) => {{
                let instance = $pre.instantiate_async(&mut *store).await?;
                instance.call_apply(&mut *store, message).await
            }};
        }
        match self {
            Self::Single(pre) => apply!(pre),
            Self::Batch(pre) => apply!(pre),
        }
    }

    /// Instantiates the component once and calls `apply` on `message` `n`
    /// times; returns the time the calls took (a measurement aid).
    pub async fn apply_reused(
        &self,
        store: &mut wasmtime::Store<T>,
        message: &WitMessage,
        n: u32,
    ) -> wasmtime::Result<std::time::Duration> {
        macro_rules! repeat {
            ($pre:expr) => {{
                let instance = $pre.instantiate_async(&mut *store).await?;
                let started = std::time::Instant::now();
                for _ in 0..n {
                    let out = instance.call_apply(&mut *store, message).await?;
                    std::hint::black_box(out.ok());
                }
                Ok(started.elapsed())
            }};
        }
        match self {
            Self::Single(pre) => repeat!(pre),
            Self::Batch(pre) => repeat!(pre),
        }
    }

    /// The call that instantiates the component and calls `apply-batch` on
    /// `messages`; `None` for a 0.1.0 component, which has no
    /// `apply-batch`.
    pub fn apply_batch<'a>(
        &'a self,
        store: &'a mut wasmtime::Store<T>,
        messages: &'a [WitMessage],
    ) -> Option<impl std::future::Future<Output = wasmtime::Result<Vec<WitOutcome>>> + 'a> {
        let Self::Batch(pre) = self else {
            return None;
        };
        Some(async move {
            let instance = pre.instantiate_async(&mut *store).await?;
            instance.call_apply_batch(&mut *store, messages).await
        })
    }
}

impl From<crate::data::DataError> for WitDataError {
    fn from(e: crate::data::DataError) -> Self {
        use crate::data::DataError as D;
        match e {
            D::InvalidUri(why) => WitDataError::InvalidUri(why),
            D::AccessDenied => WitDataError::AccessDenied,
            D::NotFound => WitDataError::NotFound,
            D::QuotaExceeded => WitDataError::QuotaExceeded,
            D::Io(why) => WitDataError::Io(why),
        }
    }
}

impl From<super::PublishRefusal> for WitPublishError {
    fn from(e: super::PublishRefusal) -> Self {
        use super::PublishRefusal as R;
        match e {
            R::AccessDenied => WitPublishError::AccessDenied,
            R::UnknownTopic => WitPublishError::UnknownTopic,
            R::TooLarge => WitPublishError::TooLarge,
            R::LimitExceeded => WitPublishError::LimitExceeded,
        }
    }
}

impl From<&crate::message::InboundMessage> for WitMessage {
    /// A copy of `m`, for calls that keep their message (the benchmarks').
    fn from(m: &crate::message::InboundMessage) -> Self {
        WitMessage {
            id: m.id.clone(),
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            headers: m.headers.clone(),
            attempt: m.attempt,
        }
    }
}

/// `m`'s fields moved into a message for the guest: the call copies the
/// payload into guest memory once and the host never copies it. They go
/// back into `m` when this is dropped, also when the call is cancelled
/// half-way, so the caller always has its message whole again.
pub struct Lent<'a> {
    wit: WitMessage,
    home: &'a mut crate::message::InboundMessage,
}

impl<'a> Lent<'a> {
    /// Moves `home`'s fields out until the returned value is dropped.
    pub fn new(home: &'a mut crate::message::InboundMessage) -> Self {
        Lent {
            wit: lend(home),
            home,
        }
    }

    /// The message as the guest sees it.
    pub fn message(&self) -> &WitMessage {
        &self.wit
    }
}

/// A batch's messages lent to the guest, as [`Lent`] lends one: moved out
/// of `home` until this is dropped, also when the call is cancelled.
pub struct LentBatch<'a> {
    wit: Vec<WitMessage>,
    home: Vec<&'a mut crate::message::InboundMessage>,
}

impl<'a> LentBatch<'a> {
    /// Moves the fields of every message of `home` out until the returned
    /// value is dropped.
    pub fn new(mut home: Vec<&'a mut crate::message::InboundMessage>) -> Self {
        let wit = home.iter_mut().map(|m| lend(m)).collect();
        LentBatch { wit, home }
    }

    /// The messages as the guest sees them.
    pub fn messages(&self) -> &[WitMessage] {
        &self.wit
    }
}

impl Drop for LentBatch<'_> {
    fn drop(&mut self) {
        for (wit, home) in self.wit.iter_mut().zip(self.home.iter_mut()) {
            give_back(wit, home);
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        give_back(&mut self.wit, self.home);
    }
}

/// `home`'s fields moved into a message for the guest.
fn lend(home: &mut crate::message::InboundMessage) -> WitMessage {
    WitMessage {
        id: std::mem::take(&mut home.id),
        topic: std::mem::take(&mut home.topic),
        payload: std::mem::take(&mut home.payload),
        headers: std::mem::take(&mut home.headers),
        attempt: home.attempt,
    }
}

/// The fields [`lend`] moved out of `home`, moved back.
fn give_back(wit: &mut WitMessage, home: &mut crate::message::InboundMessage) {
    home.id = std::mem::take(&mut wit.id);
    home.topic = std::mem::take(&mut wit.topic);
    home.payload = std::mem::take(&mut wit.payload);
    home.headers = std::mem::take(&mut wit.headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::InboundMessage;

    fn message() -> InboundMessage {
        InboundMessage {
            id: "m-1".into(),
            topic: "in".into(),
            payload: b"payload".to_vec(),
            headers: vec![("k".into(), "v".into())],
            attempt: 3,
            enqueued_at: None,
            undecodable: None,
        }
    }

    /// The worker dead-letters or releases the message after a cancelled
    /// call (shutdown, an outer timeout): it must not find it emptied.
    #[test]
    fn a_lent_message_comes_back_whole_even_when_the_call_is_dropped() {
        let mut m = message();
        {
            let lent = Lent::new(&mut m);
            assert_eq!(lent.message().payload, b"payload");
            assert_eq!(lent.message().attempt, 3);
            let call = async move {
                let _guest = lent.message();
                std::future::pending::<()>().await
            };
            drop(call);
        }
        let back = message();
        assert_eq!(
            (m.id, m.topic, m.payload, m.headers),
            (back.id, back.topic, back.payload, back.headers)
        );
    }
}
