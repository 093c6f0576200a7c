//! The one place the algorithm world's bindings are generated. The rest of
//! the host sees domain types; conversions live here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "eventflow:algorithm/algorithm",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::eventflow::algorithm::data::DataError as WitDataError;
pub use self::eventflow::algorithm::log::Level as WitLevel;
pub use self::eventflow::algorithm::publish::PublishError as WitPublishError;
pub use self::eventflow::algorithm::types::{Failure as WitFailure, Message as WitMessage};

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

/// Moves `m`'s fields into a message for the guest, leaving `m` empty until
/// [`give_back`]: the call copies the payload into guest memory once, and
/// the host never copies it.
pub fn lend(m: &mut crate::message::InboundMessage) -> WitMessage {
    WitMessage {
        id: std::mem::take(&mut m.id),
        topic: std::mem::take(&mut m.topic),
        payload: std::mem::take(&mut m.payload),
        headers: std::mem::take(&mut m.headers),
        attempt: m.attempt,
    }
}

/// Puts back what [`lend`] took from `m`.
pub fn give_back(lent: WitMessage, m: &mut crate::message::InboundMessage) {
    m.id = lent.id;
    m.topic = lent.topic;
    m.payload = lent.payload;
    m.headers = lent.headers;
}
