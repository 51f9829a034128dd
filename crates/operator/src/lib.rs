//! `live-operator`: turns a `LiveRealtime` resource into a running, autoscaled, monitored
//! live-gateway tier.
//!
//! Layout:
//! - [`crd`]: the resource types and their validation rules (the CRD is generated from them).
//! - [`reconcile`]: one pure `desired()` builder per child, the conditions, and the IO shell that
//!   applies them ([`reconcile::apply`]).
//! - [`controller`]: the kube-runtime controller, leader election and error policy.
//! - [`context`], [`metrics`], [`admin`]: shared state, metrics and the admin HTTP port;
//!   [`readiness`]: the Ready counts computed from the controller's cache at scrape time.
//! - [`render`]: `live-operator render`, the children of a spec without a cluster.
//! - [`rbac`]: the exact permissions the operator uses, machine-readable.
//! - [`args`], [`error`]: the command line and the crate's one error type.

pub mod admin;
pub mod args;
pub mod context;
pub mod controller;
pub mod crd;
pub mod error;
pub mod metrics;
pub mod rbac;
pub mod readiness;
pub mod reconcile;
pub mod render;

pub use error::Error;

/// The field manager of every server-side apply, and the `managed-by` label value.
pub const MANAGER: &str = "live-operator";

/// Serializes `value` as YAML that YAML 1.1 readers (kubectl, PyYAML) read back unchanged:
/// strings such as `no`, `on` or `0755` are quoted (serde_yaml 0.9 emits them bare, and
/// `kubectl` would read `--appendonly no` as a boolean).
pub fn to_yaml<T: serde::Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).unwrap_or_default()
}
