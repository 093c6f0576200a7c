//! Who is calling ([`Role`]), what they ask ([`Action`]), and the one
//! place that decides whether they may ([`Role::authorize`]).

use crate::config::TopicSpec;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The admin token: everything.
    Admin,
    /// An owner-scoped token: see [`Role::authorize`] for what it may do.
    Owner(String),
}

/// One thing a caller asks to do, with the owner of the algorithm (or the
/// topic) it concerns. Every permission of the admin API is decided by
/// [`Role::authorize`] on one of these: handlers and control-plane methods
/// never look at the role themselves.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Read the whole desired state (`GET /v1/state`).
    ReadState,
    /// Replace the whole desired state (`eventflow apply -f`).
    ApplyState,
    /// List or show broker connections.
    ReadBrokers,
    /// Create a broker connection.
    CreateBroker,
    /// Delete a broker connection.
    DeleteBroker,
    /// List a broker's topics and their access lists.
    ListTopics,
    /// Declare a topic or change its address and access lists.
    DeclareTopic,
    /// Delete a topic declaration.
    DeleteTopic,
    /// Grant or revoke an algorithm's access to a topic.
    ChangeGrant,
    /// List the origins algorithms may send HTTP requests to.
    ListOutbound,
    /// Allow or deny an algorithm an HTTP origin.
    ChangeOutbound,
    /// Read a topic's messages without consuming them.
    PeekTopic,
    /// Publish messages to this topic.
    Send(&'a TopicSpec),
    /// See the topics an algorithm of this owner may consume (its queues tab).
    AlgorithmTopics(&'a str),
    /// List, show and see the status of a flow of an algorithm of this owner.
    SeeFlow(&'a str),
    /// Enable (create or re-enable) a flow for an algorithm of this owner.
    EnableFlow(&'a str),
    /// Edit or disable a flow of an algorithm of this owner.
    EditFlow(&'a str),
    /// Delete a flow of an algorithm of this owner.
    DeleteFlow(&'a str),
    /// List or replay the dead letters of a flow of an algorithm of this owner.
    DeadLetters(&'a str),
    /// List the names of, set or delete secrets of an algorithm of this owner.
    Secrets(&'a str),
    /// See the loaded versions of the algorithms of this owner.
    SeePlugins(&'a str),
    /// Create, list or revoke owner-scoped tokens.
    ManageTokens,
    /// Replay messages on a dead-letter topic that the router did not sign.
    ReplayUnverified,
}

impl Action<'_> {
    /// What the caller asked, as a phrase for a refusal.
    fn describe(&self) -> String {
        match self {
            Action::ReadState => "read the desired state".into(),
            Action::ApplyState => "replace the desired state".into(),
            Action::ReadBrokers => "see broker connections".into(),
            Action::CreateBroker => "create broker connections".into(),
            Action::DeleteBroker => "delete broker connections".into(),
            Action::ListTopics => "list topics".into(),
            Action::DeclareTopic => "declare topics".into(),
            Action::DeleteTopic => "delete topics".into(),
            Action::ChangeGrant => "grant or revoke access to topics".into(),
            Action::PeekTopic => "peek at topics".into(),
            Action::ListOutbound => "list outbound HTTP grants".into(),
            Action::ChangeOutbound => "allow or deny algorithms HTTP origins".into(),
            Action::Send(t) => format!(
                "send to topic {:?} on broker {:?} (none of its algorithms may consume it)",
                t.name, t.broker
            ),
            Action::AlgorithmTopics(o) => format!("see the topics of algorithms of {o:?}"),
            Action::SeeFlow(o) => format!("see flows of algorithms of {o:?}"),
            Action::EnableFlow(o) => format!("enable flows of algorithms of {o:?}"),
            Action::EditFlow(o) => format!("edit flows of algorithms of {o:?}"),
            Action::DeleteFlow(o) => format!("delete flows of algorithms of {o:?}"),
            Action::DeadLetters(o) => {
                format!("read or replay dead letters of flows of algorithms of {o:?}")
            }
            Action::Secrets(o) => format!("manage secrets of algorithms of {o:?}"),
            Action::SeePlugins(o) => format!("see algorithms of {o:?}"),
            Action::ManageTokens => "manage tokens".into(),
            Action::ReplayUnverified => "replay unverified dead letters".into(),
        }
    }
}

impl Role {
    /// Whether this caller may do `action`: the one place that decides.
    ///
    /// The admin token may do everything. An owner-scoped token may, for
    /// algorithms of its own owner only: see, enable, edit, disable and
    /// delete flows (and see their status); list and replay those flows'
    /// dead letters; set, delete and list the names of secrets; see the
    /// algorithms' topics and loaded versions; and send messages to a topic
    /// one of its algorithms may consume (to test a queue). Everything else
    /// (brokers, topics, grants, outbound HTTP grants, peeking, the whole state, tokens, and
    /// anything of another owner) is refused.
    pub fn authorize(&self, action: Action<'_>) -> Result<(), ControlError> {
        let Role::Owner(me) = self else {
            return Ok(());
        };
        let allowed = match action {
            Action::AlgorithmTopics(owner)
            | Action::SeeFlow(owner)
            | Action::EnableFlow(owner)
            | Action::EditFlow(owner)
            | Action::DeleteFlow(owner)
            | Action::DeadLetters(owner)
            | Action::Secrets(owner)
            | Action::SeePlugins(owner) => owner == me.as_str(),
            Action::Send(topic) => topic.consumers.iter().any(|g| {
                g.split_once('/')
                    .is_some_and(|(owner, _)| owner == me.as_str())
            }),
            Action::ReadState
            | Action::ApplyState
            | Action::ReadBrokers
            | Action::CreateBroker
            | Action::DeleteBroker
            | Action::ListTopics
            | Action::DeclareTopic
            | Action::DeleteTopic
            | Action::ChangeGrant
            | Action::ListOutbound
            | Action::ChangeOutbound
            | Action::PeekTopic
            | Action::ManageTokens
            | Action::ReplayUnverified => {
                return Err(ControlError::Forbidden(format!(
                    "the token of owner {me:?} cannot {}: it needs the admin token",
                    action.describe()
                )));
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(ControlError::Forbidden(format!(
                "the token of owner {me:?} cannot {}",
                action.describe()
            )))
        }
    }

    /// Whether `action` is allowed, for filtering listings.
    pub fn may(&self, action: Action<'_>) -> bool {
        self.authorize(action).is_ok()
    }
}

/// Why a control-plane call failed; maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// 400: the request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// 403: the token may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(String),
    /// 409: it conflicts with the current state (in use, already exists).
    #[error("{0}")]
    Conflict(String),
    /// 413: a message is larger than its broker takes.
    #[error("{0}")]
    TooLarge(String),
    /// 503: the router could not carry it out (a broker did not answer).
    #[error("{0}")]
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_token_may_only_manage_its_own_algorithms() {
        let ezra = Role::Owner("ezra".into());
        let topic = |consumers: &[&str]| TopicSpec {
            name: "in".into(),
            broker: "local".into(),
            address: None,
            consumers: consumers.iter().map(|c| c.to_string()).collect(),
            publishers: vec!["ezra/x".into()],
            dead_letter_publishers: vec![],
        };
        let consumable = topic(&["bob/y", "ezra/x"]);
        let by_owner = topic(&["ezra/*"]);
        let publish_only = topic(&["bob/y"]);
        let allowed = [
            Action::AlgorithmTopics("ezra"),
            Action::SeeFlow("ezra"),
            Action::EnableFlow("ezra"),
            Action::EditFlow("ezra"),
            Action::DeleteFlow("ezra"),
            Action::DeadLetters("ezra"),
            Action::Secrets("ezra"),
            Action::SeePlugins("ezra"),
            Action::Send(&consumable),
            Action::Send(&by_owner),
        ];
        for action in allowed {
            assert!(ezra.may(action), "{action:?}");
            assert!(Role::Admin.may(action), "{action:?}");
        }
        let refused = [
            Action::ReadState,
            Action::ApplyState,
            Action::ReadBrokers,
            Action::CreateBroker,
            Action::DeleteBroker,
            Action::ListTopics,
            Action::DeclareTopic,
            Action::DeleteTopic,
            Action::ChangeGrant,
            Action::PeekTopic,
            Action::ManageTokens,
            Action::AlgorithmTopics("bob"),
            Action::SeeFlow("bob"),
            Action::EnableFlow("bob"),
            Action::EditFlow("bob"),
            Action::DeleteFlow("bob"),
            Action::DeadLetters("bob"),
            Action::Secrets("bob"),
            Action::SeePlugins("bob"),
            Action::SeeFlow("ezr"),
            Action::Send(&publish_only),
        ];
        for action in refused {
            assert!(
                matches!(ezra.authorize(action), Err(ControlError::Forbidden(_))),
                "{action:?}"
            );
            assert!(Role::Admin.may(action), "{action:?}");
        }
    }
}
