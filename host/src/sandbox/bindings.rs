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
        let wit = WitMessage {
            id: std::mem::take(&mut home.id),
            topic: std::mem::take(&mut home.topic),
            payload: std::mem::take(&mut home.payload),
            headers: std::mem::take(&mut home.headers),
            attempt: home.attempt,
        };
        Lent { wit, home }
    }

    /// The message as the guest sees it.
    pub fn message(&self) -> &WitMessage {
        &self.wit
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.home.id = std::mem::take(&mut self.wit.id);
        self.home.topic = std::mem::take(&mut self.wit.topic);
        self.home.payload = std::mem::take(&mut self.wit.payload);
        self.home.headers = std::mem::take(&mut self.wit.headers);
    }
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
