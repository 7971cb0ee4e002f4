//! Counts AWS calls by operation (`DynamoDB.TransactWriteItems`, `SQS.ReceiveMessage`, …)
//! with an SDK interceptor, so tests and benchmarks can report calls per placement.
//! Counted once per operation, not per retry attempt.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

#[derive(Debug, Clone, Default)]
pub struct CallCounter(Arc<Mutex<BTreeMap<String, u64>>>);

impl CallCounter {
    pub(crate) fn interceptor(&self) -> Counting {
        Counting(self.clone())
    }

    /// Calls so far, by `Service.Operation`.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    pub fn reset(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn add(&self, op: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(op).or_default() += 1;
    }
}

#[derive(Debug)]
pub(crate) struct Counting(CallCounter);

impl Intercept for Counting {
    fn name(&self) -> &'static str {
        "lineup-call-counter"
    }

    // Not `read_before_execution`: for client-level interceptors it runs before the
    // operation's configuration (which holds its `Metadata`) is applied.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            self.0.add(format!("{}.{}", m.service(), m.name()));
        }
        Ok(())
    }
}
