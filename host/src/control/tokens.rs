//! Owner-scoped tokens: create, list, revoke.

use super::{Action, ControlError, ControlPlane, Role};
use crate::config;
use crate::state::TokenInfo;
use crate::state::token::{new_token, token_hash};

impl ControlPlane {
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
