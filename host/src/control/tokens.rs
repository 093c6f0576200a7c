//! Owner-scoped tokens: create, list, revoke.

use super::{Action, ControlError, ControlPlane, Role};
use crate::api;
use crate::config;
use crate::state::TokenInfo;
use crate::state::token::{new_token, token_hash};

impl ControlPlane {
    /// Who `role` is and what it may manage, decided by
    /// [`Role::authorize`] like every call.
    pub fn whoami(&self, role: &Role) -> api::Identity {
        Self::identity(role)
    }

    fn identity(role: &Role) -> api::Identity {
        let may = |action| role.may(action);
        api::Identity {
            kind: match role {
                Role::Admin => api::TokenKind::Admin,
                Role::Owner(_) => api::TokenKind::Owner,
            },
            owner: match role {
                Role::Admin => None,
                Role::Owner(owner) => Some(owner.clone()),
            },
            manage_brokers: may(Action::CreateBroker)
                && may(Action::DeleteBroker)
                && may(Action::ReadBrokers),
            manage_topics: may(Action::DeclareTopic)
                && may(Action::DeleteTopic)
                && may(Action::ChangeGrant)
                && may(Action::ListTopics),
            manage_tokens: may(Action::ManageTokens),
        }
    }

    /// Creates an owner-scoped token; returns its info and the token, which
    /// is shown only this once.
    pub async fn create_token(
        &self,
        role: &Role,
        owner: &str,
    ) -> Result<(TokenInfo, String), ControlError> {
        role.authorize(Action::ManageTokens)?;
        if !config::is_valid_name(owner) {
            return Err(ControlError::BadRequest(format!(
                "owner: {owner:?} is not a valid owner name"
            )));
        }
        let token = new_token();
        let info = TokenInfo {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            owner: owner.to_string(),
            created_at: crate::util::rfc3339_now(),
        };
        let (hash, stored) = (token_hash(&token), info.clone());
        self.with_state(move |state| state.add_token(&hash, &stored))
            .await?;
        Ok((info, token))
    }

    /// Every owner-scoped token (without the tokens).
    pub async fn tokens(&self, role: &Role) -> Result<Vec<TokenInfo>, ControlError> {
        role.authorize(Action::ManageTokens)?;
        self.with_state(|state| state.tokens()).await
    }

    /// Revokes a token.
    pub async fn delete_token(&self, role: &Role, id: &str) -> Result<(), ControlError> {
        role.authorize(Action::ManageTokens)?;
        let id2 = id.to_string();
        let found = self
            .with_state(move |state| state.delete_token(&id2))
            .await?;
        if found {
            Ok(())
        } else {
            Err(ControlError::NotFound(format!("no token with id {id:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The console hides what `whoami` says a token may not manage; an owner
    /// token must be told it manages none of the admin's resources.
    #[test]
    fn whoami_follows_authorize() {
        let owner = Role::Owner("ezra".into());
        let may = |role: &Role| {
            let id = ControlPlane::identity(role);
            (id.manage_brokers, id.manage_topics, id.manage_tokens)
        };
        assert_eq!(may(&Role::Admin), (true, true, true));
        assert_eq!(may(&owner), (false, false, false));
        assert_eq!(
            ControlPlane::identity(&owner).owner.as_deref(),
            Some("ezra")
        );
        assert_eq!(
            ControlPlane::identity(&Role::Admin).kind,
            api::TokenKind::Admin
        );
    }
}
