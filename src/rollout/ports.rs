//! The narrow surfaces a rollout driver needs from Nomad and Consul.
//!
//! The driver's decisions are pure functions of what these calls return,
//! so tests drive it against a scripted fake (operator edits, lost races,
//! outages, garbage-collected deployments) deterministically and without a
//! cluster; the real clients implement the same traits one-to-one. Only
//! the calls the driver makes are here: a new call is a deliberate change
//! to both the real and the fake side.

use std::future::Future;
use std::time::Duration;

use crate::clients::consul::{Consul, ConsulError, TxnOp, TxnOutcome};
use crate::clients::nomad::{
    Allocation, CheckResult, Deployment, Evaluation, Job, Nomad, NomadError, Read, WriteResponse,
};
use crate::store::history::{self, HeadRead, HistoryKeys};
use crate::store::HistoryEntry;
use crate::store::KvRead;
use crate::store::StoreError;

/// Nomad as a rollout uses it.
pub trait NomadPort: Send + Sync {
    fn job(
        &self,
        namespace: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Job>, NomadError>> + Send;
    /// Every stored version, newest first.
    fn job_versions(
        &self,
        namespace: &str,
        id: &str,
    ) -> impl Future<Output = Result<Vec<Job>, NomadError>> + Send;
    fn register(
        &self,
        job: &Job,
        enforce_index: u64,
    ) -> impl Future<Output = Result<WriteResponse, NomadError>> + Send;
    fn revert(
        &self,
        namespace: &str,
        id: &str,
        version: u64,
        enforce_prior_version: u64,
    ) -> impl Future<Output = Result<WriteResponse, NomadError>> + Send;
    fn latest_deployment(
        &self,
        namespace: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> impl Future<Output = Result<Read<Option<Deployment>>, NomadError>> + Send;
    fn deployment(
        &self,
        namespace: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> impl Future<Output = Result<Read<Deployment>, NomadError>> + Send;
    fn deployment_allocations(
        &self,
        namespace: &str,
        id: &str,
    ) -> impl Future<Output = Result<Vec<Allocation>, NomadError>> + Send;
    fn allocation_checks(
        &self,
        namespace: &str,
        alloc_id: &str,
    ) -> impl Future<Output = Result<Vec<CheckResult>, NomadError>> + Send;
    fn promote(
        &self,
        namespace: &str,
        deployment_id: &str,
    ) -> impl Future<Output = Result<(), NomadError>> + Send;
    fn fail_deployment(
        &self,
        namespace: &str,
        deployment_id: &str,
    ) -> impl Future<Output = Result<(), NomadError>> + Send;
    fn evaluation(
        &self,
        namespace: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> impl Future<Output = Result<Read<Evaluation>, NomadError>> + Send;
}

/// Consul as a rollout uses it: single reads, transactions, and the
/// history layout (head + entries, see `store::history`). Single reads
/// come from the store's `KvRead`, so the store's readers serve the
/// driver too.
pub trait ConsulPort: KvRead {
    fn txn(&self, ops: &[TxnOp]) -> impl Future<Output = Result<TxnOutcome, ConsulError>> + Send;
    /// The history head to append after (migrating the old layout first).
    fn history_head(
        &self,
        keys: &HistoryKeys,
        keep: usize,
    ) -> impl Future<Output = Result<HeadRead, StoreError>> + Send;
    /// The newest `limit` history entries, newest first.
    fn history_recent(
        &self,
        keys: &HistoryKeys,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<HistoryEntry>, StoreError>> + Send;
}

impl NomadPort for Nomad {
    async fn job(&self, namespace: &str, id: &str) -> Result<Option<Job>, NomadError> {
        Nomad::job(self, namespace, id).await
    }
    async fn job_versions(&self, namespace: &str, id: &str) -> Result<Vec<Job>, NomadError> {
        Nomad::job_versions(self, namespace, id).await
    }
    async fn register(&self, job: &Job, enforce_index: u64) -> Result<WriteResponse, NomadError> {
        Nomad::register(self, job, enforce_index).await
    }
    async fn revert(
        &self,
        namespace: &str,
        id: &str,
        version: u64,
        enforce_prior_version: u64,
    ) -> Result<WriteResponse, NomadError> {
        Nomad::revert(self, namespace, id, version, enforce_prior_version).await
    }
    async fn latest_deployment(
        &self,
        namespace: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Option<Deployment>>, NomadError> {
        Nomad::latest_deployment(self, namespace, id, block).await
    }
    async fn deployment(
        &self,
        namespace: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Deployment>, NomadError> {
        Nomad::deployment(self, namespace, id, block).await
    }
    async fn deployment_allocations(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Vec<Allocation>, NomadError> {
        Nomad::deployment_allocations(self, namespace, id).await
    }
    async fn allocation_checks(
        &self,
        namespace: &str,
        alloc_id: &str,
    ) -> Result<Vec<CheckResult>, NomadError> {
        Nomad::allocation_checks(self, namespace, alloc_id).await
    }
    async fn promote(&self, namespace: &str, deployment_id: &str) -> Result<(), NomadError> {
        Nomad::promote(self, namespace, deployment_id).await
    }
    async fn fail_deployment(
        &self,
        namespace: &str,
        deployment_id: &str,
    ) -> Result<(), NomadError> {
        Nomad::fail_deployment(self, namespace, deployment_id).await
    }
    async fn evaluation(
        &self,
        namespace: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Evaluation>, NomadError> {
        Nomad::evaluation(self, namespace, id, block).await
    }
}

impl ConsulPort for Consul {
    async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, ConsulError> {
        Consul::txn(self, ops).await
    }
    async fn history_head(&self, keys: &HistoryKeys, keep: usize) -> Result<HeadRead, StoreError> {
        history::migrate(self, keys, keep).await
    }
    async fn history_recent(
        &self,
        keys: &HistoryKeys,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        history::recent(self, keys, limit).await
    }
}
