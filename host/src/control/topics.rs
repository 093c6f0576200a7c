//! Topics and their access lists (grants): list, declare, grant or
//! revoke, delete.

use super::{Action, ControlError, ControlPlane, Role};
use crate::api::{self, DeclareTopic, Grant};
use crate::config::{self, FlowSpec, TopicSpec};

impl From<TopicSpec> for api::Topic {
    fn from(t: TopicSpec) -> Self {
        Self {
            name: t.name,
            broker: t.broker,
            address: t.address,
            consumers: t.consumers,
            publishers: t.publishers,
            dead_letter_publishers: t.dead_letter_publishers,
        }
    }
}

impl ControlPlane {
    /// Declared topics of a broker, and those the broker lists. The second
    /// value says why the broker's own list is missing when the broker
    /// refused to give it (SQS without `ListQueues`, say).
    pub async fn list_topics(
        &self,
        role: &Role,
        broker: &str,
    ) -> Result<(Vec<api::TopicEntry>, Option<String>), ControlError> {
        role.authorize(Action::ListTopics)?;
        let topology = self.router.topology();
        let connection = topology
            .brokers
            .get(broker)
            .ok_or_else(|| {
                ControlError::NotFound(format!("no broker connection named {broker:?}"))
            })?
            .connection
            .clone();
        let d = self.declarations();
        let mut out: Vec<api::TopicEntry> = d
            .topics
            .iter()
            .filter(|t| t.broker == broker)
            .map(|t| api::TopicEntry {
                topic: t.clone().into(),
                declared: true,
            })
            .collect();
        match connection.list_topics().await {
            Ok(Some(names)) => {
                for name in names {
                    let known = d
                        .topics
                        .iter()
                        .any(|t| t.broker == broker && (t.address() == name || t.name == name));
                    if !known {
                        out.push(api::TopicEntry {
                            topic: api::Topic {
                                name,
                                broker: broker.to_string(),
                                address: None,
                                consumers: Vec::new(),
                                publishers: Vec::new(),
                                dead_letter_publishers: Vec::new(),
                            },
                            declared: false,
                        });
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(broker = %broker, error = %why, "Cannot list the broker's topics.");
                return Ok((out, Some(why)));
            }
        }
        Ok((out, None))
    }

    /// Declares a topic, or changes the fields `spec` gives of an existing
    /// one (the others keep their values).
    pub async fn declare_topic(
        &self,
        role: &Role,
        broker: &str,
        name: &str,
        spec: DeclareTopic,
    ) -> Result<TopicSpec, ControlError> {
        role.authorize(Action::DeclareTopic)?;
        self.require_broker(broker)?;
        let (b, n) = (broker.to_string(), name.to_string());
        let d = self
            .change(move |d| {
                match d.topics.iter_mut().find(|x| x.broker == b && x.name == n) {
                    Some(existing) => {
                        if let Some(address) = spec.address {
                            existing.address = address;
                        }
                        if let Some(consumers) = spec.consumers {
                            existing.consumers = consumers;
                        }
                        if let Some(publishers) = spec.publishers {
                            existing.publishers = publishers;
                        }
                        if let Some(dlp) = spec.dead_letter_publishers {
                            existing.dead_letter_publishers = dlp;
                        }
                    }
                    None => d.topics.push(TopicSpec {
                        name: n,
                        broker: b,
                        address: spec.address.flatten(),
                        consumers: spec.consumers.unwrap_or_default(),
                        publishers: spec.publishers.unwrap_or_default(),
                        dead_letter_publishers: spec.dead_letter_publishers.unwrap_or_default(),
                    }),
                }
                Ok(())
            })
            .await?;
        Ok(d.topics
            .into_iter()
            .find(|x| x.broker == broker && x.name == name)
            .expect("the topic was just declared"))
    }

    /// Adds (`add`) or removes grants of an algorithm on a topic.
    pub async fn grant(
        &self,
        role: &Role,
        broker: &str,
        topic: &str,
        grant: Grant,
        add: bool,
    ) -> Result<TopicSpec, ControlError> {
        role.authorize(Action::ChangeGrant)?;
        check_grant(&grant.algorithm)?;
        if !grant.consume && !grant.publish && !grant.dead_letter_publish {
            return Err(ControlError::BadRequest(
                "say what to grant or revoke: consume, publish, dead_letter_publish".into(),
            ));
        }
        let (b, t) = (broker.to_string(), topic.to_string());
        let d = self
            .change(move |d| {
                let spec = d
                    .topics
                    .iter_mut()
                    .find(|x| x.broker == b && x.name == t)
                    .ok_or_else(|| {
                        ControlError::NotFound(format!("no topic {t:?} on broker {b:?}"))
                    })?;
                for (wanted, list) in [
                    (grant.consume, &mut spec.consumers),
                    (grant.publish, &mut spec.publishers),
                    (grant.dead_letter_publish, &mut spec.dead_letter_publishers),
                ] {
                    if !wanted {
                        continue;
                    }
                    list.retain(|g| *g != grant.algorithm);
                    if add {
                        list.push(grant.algorithm.clone());
                    }
                }
                Ok(())
            })
            .await?;
        Ok(d.topics
            .into_iter()
            .find(|x| x.broker == broker && x.name == topic)
            .expect("the topic exists"))
    }

    /// Deletes a topic declaration. Refused while flows use it, unless
    /// `force`, which disables them.
    pub async fn delete_topic(
        &self,
        role: &Role,
        broker: &str,
        topic: &str,
        force: bool,
    ) -> Result<Vec<String>, ControlError> {
        role.authorize(Action::DeleteTopic)?;
        let d = self.declarations();
        if !d
            .topics
            .iter()
            .any(|t| t.broker == broker && t.name == topic)
        {
            return Err(ControlError::NotFound(format!(
                "no topic {topic:?} on broker {broker:?}"
            )));
        }
        let users: Vec<String> = d
            .flows
            .iter()
            .filter(|f| f.enabled && flow_uses_topic(f, broker, topic))
            .map(|f| f.name.clone())
            .collect();
        if !users.is_empty() && !force {
            return Err(ControlError::Conflict(format!(
                "topic {topic:?} is used by flows {}: disable them first, or delete with force",
                users.join(", ")
            )));
        }
        let (b, t, u) = (broker.to_string(), topic.to_string(), users.clone());
        self.change(move |d| {
            for f in d.flows.iter_mut().filter(|f| u.contains(&f.name)) {
                f.enabled = false;
            }
            d.topics.retain(|x| !(x.broker == b && x.name == t));
            Ok(())
        })
        .await?;
        Ok(users)
    }
}

fn check_grant(g: &str) -> Result<(), ControlError> {
    let ok = match g.split_once('/') {
        Some((owner, name)) => {
            config::is_valid_name(owner) && (name == "*" || config::is_valid_name(name))
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "algorithm: {g:?} is not owner/name or owner/*"
        )))
    }
}

fn flow_uses_topic(f: &FlowSpec, broker: &str, topic: &str) -> bool {
    let names = |r: &str| -> bool {
        match r.split_once(':') {
            Some((b, t)) => b == broker && t == topic,
            None => f.broker == broker && r == topic,
        }
    };
    names(&f.topic)
        || f.output_topic.as_deref().is_some_and(names)
        || f.dead_letter_topic.as_deref().is_some_and(names)
}
