//! Where algorithms may send HTTP requests (`[[outbound]]`): list, allow
//! and deny origins.

use super::{Action, ControlError, ControlPlane, Role};
use crate::api;
use crate::config::{OutboundGrant, is_grantee};
use crate::sandbox::outbound::Origin;

impl From<&OutboundGrant> for api::OutboundGrant {
    fn from(g: &OutboundGrant) -> Self {
        Self {
            algorithm: g.algorithm.clone(),
            origins: g.origins.iter().map(Origin::to_string).collect(),
        }
    }
}

impl ControlPlane {
    /// Every algorithm's granted origins.
    pub fn list_outbound(&self, role: &Role) -> Result<Vec<api::OutboundGrant>, ControlError> {
        role.authorize(Action::ListOutbound)?;
        Ok(self
            .declarations()
            .outbound
            .iter()
            .map(Into::into)
            .collect())
    }

    /// Allows (`add`) or denies again an origin for `algorithm`
    /// (`owner/name` or `owner/*`); returns its grant afterwards. An
    /// algorithm left without origins loses its entry.
    pub async fn change_outbound(
        &self,
        role: &Role,
        algorithm: &str,
        origin: &str,
        add: bool,
    ) -> Result<api::OutboundGrant, ControlError> {
        role.authorize(Action::ChangeOutbound)?;
        if !is_grantee(algorithm) {
            return Err(ControlError::BadRequest(format!(
                "algorithm: {algorithm:?} is not owner/name or owner/*"
            )));
        }
        let origin: Origin =
            origin
                .parse()
                .map_err(|e: crate::sandbox::outbound::OriginError| {
                    ControlError::BadRequest(format!("origin: {e}"))
                })?;
        let alg = algorithm.to_string();
        let d = self
            .change(move |d| {
                let i = match d.outbound.iter().position(|g| g.algorithm == alg) {
                    Some(i) => i,
                    None => {
                        d.outbound.push(OutboundGrant {
                            algorithm: alg.clone(),
                            origins: Vec::new(),
                        });
                        d.outbound.len() - 1
                    }
                };
                let origins = &mut d.outbound[i].origins;
                origins.retain(|o| *o != origin);
                if add {
                    origins.push(origin);
                }
                d.outbound.retain(|g| !g.origins.is_empty());
                Ok(())
            })
            .await?;
        Ok(d.outbound
            .iter()
            .find(|g| g.algorithm == algorithm)
            .map(Into::into)
            .unwrap_or(api::OutboundGrant {
                algorithm: algorithm.to_string(),
                origins: Vec::new(),
            }))
    }
}
