//! Process consumer (stub, being written).
use async_trait::async_trait;

use super::{Consumer, ConsumerError, Held, HeldSource, Instance, RolloutReport, Slots};
use crate::events::EventSink;
use crate::playbook::{ConsumerSpec, Pickup, Playbook, ProcessSpec};
use crate::protocol::Role;

/// N local processes.
pub struct ProcessConsumer {
    name: String,
    role: Role,
}

impl ProcessConsumer {
    /// Opens the consumer.
    pub fn new(_playbook: &Playbook, spec: &ConsumerSpec, _p: &ProcessSpec) -> Self {
        ProcessConsumer { name: spec.name.clone(), role: spec.role }
    }
}

#[async_trait]
impl Consumer for ProcessConsumer {
    fn name(&self) -> &str {
        &self.name
    }
    fn role(&self) -> Role {
        self.role
    }
    fn pickup(&self) -> Pickup {
        Pickup::Restart
    }
    async fn apply(&self, _s: &Slots, _e: &dyn EventSink) -> Result<RolloutReport, ConsumerError> {
        todo!()
    }
    async fn instances(&self) -> Result<Vec<Instance>, ConsumerError> {
        todo!()
    }
    async fn held(&self, _i: &Instance) -> Result<(Held, HeldSource), ConsumerError> {
        todo!()
    }
    async fn start(&self, _s: &Slots, _e: &dyn EventSink) -> Result<(), ConsumerError> {
        todo!()
    }
    async fn stop(&self) -> Result<usize, ConsumerError> {
        todo!()
    }
}
