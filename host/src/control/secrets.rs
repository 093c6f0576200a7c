//! Secrets of an algorithm: set, list the names of, delete.

use super::{Action, ControlError, ControlPlane, Role};
use crate::config;

impl ControlPlane {
    /// Sets an algorithm's secret (an environment variable it will see).
    pub async fn set_secret(
        &self,
        role: &Role,
        owner: &str,
        name: &str,
        key: &str,
        value: String,
    ) -> Result<(), ControlError> {
        check_algorithm(owner, name)?;
        role.authorize(Action::Secrets(owner))?;
        check_variable(key)?;
        let (alg, k) = (format!("{owner}/{name}"), key.to_string());
        self.secrets_op(move |s| s.set_secret(&alg, &k, &value).map(|_| true))
            .await
            .map(|_| ())
    }

    /// Names of an algorithm's secrets (never values).
    pub async fn secret_names(
        &self,
        role: &Role,
        owner: &str,
        name: &str,
    ) -> Result<Vec<String>, ControlError> {
        check_algorithm(owner, name)?;
        role.authorize(Action::Secrets(owner))?;
        let alg = format!("{owner}/{name}");
        let all = self.with_state(|state| state.all_secrets()).await?;
        let mut names: Vec<String> = all
            .into_iter()
            .filter(|(scope, _, _)| *scope == alg)
            .map(|(_, k, _)| k)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes an algorithm's secret.
    pub async fn delete_secret(
        &self,
        role: &Role,
        owner: &str,
        name: &str,
        key: &str,
    ) -> Result<(), ControlError> {
        check_algorithm(owner, name)?;
        role.authorize(Action::Secrets(owner))?;
        check_variable(key)?;
        let (alg, k) = (format!("{owner}/{name}"), key.to_string());
        let existed = self.secrets_op(move |s| s.delete_secret(&alg, &k)).await?;
        if existed {
            Ok(())
        } else {
            Err(ControlError::NotFound(format!(
                "{owner}/{name} has no secret {key:?}"
            )))
        }
    }

    async fn secrets_op(
        &self,
        op: impl FnOnce(&crate::state::StateStore) -> anyhow::Result<bool> + Send + 'static,
    ) -> Result<bool, ControlError> {
        let services = self.router.services().clone();
        tokio::task::spawn_blocking(move || {
            let result = op(&services.state)?;
            services.reload_secrets()?;
            anyhow::Ok(result)
        })
        .await
        .map_err(|e| ControlError::Unavailable(e.to_string()))?
        .map_err(|e| ControlError::Unavailable(format!("{e:#}")))
    }
}

fn check_variable(key: &str) -> Result<(), ControlError> {
    if config::is_valid_variable(key) {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "key: secret name {}: use 1 to {} letters, digits and '_', not starting with a digit (it becomes an environment variable)",
            config::quote_name(key),
            config::MAX_NAME_BYTES
        )))
    }
}

/// Checks the two parts of an algorithm named in a request (`owner/name`),
/// which scope secrets and grants: `ezra/../../test/x` is no algorithm.
fn check_algorithm(owner: &str, name: &str) -> Result<(), ControlError> {
    config::check_name(owner).map_err(|m| ControlError::BadRequest(format!("owner: {m}")))?;
    config::check_name(name).map_err(|m| ControlError::BadRequest(format!("name: {m}")))
}
