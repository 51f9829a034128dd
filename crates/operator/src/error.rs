//! The operator's one error type. Each variant names the step that failed; [`Error::code`] is a
//! stable, bounded string used as a metric label and in logs (never the message: it may carry
//! object names or apiserver text).

/// Everything that can fail in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace or name (a watch event we cannot act on).
    #[error("object is missing {0}")]
    MissingObjectKey(&'static str),
    /// Server-side apply of a child was refused or failed.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// A reconcile step failed; its reason and message are in the object's status.
    #[error("{reason}: {message}")]
    Step {
        reason: &'static str,
        message: String,
    },
    /// Looking up or deleting the child of a disabled feature failed.
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Writing `.status` failed.
    #[error("patching status: {0}")]
    PatchStatus(#[source] kube::Error),
    /// A child could not be serialized (a bug, not a cluster problem).
    #[error("serializing {kind}: {source}")]
    Serialize {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Building the Kubernetes client failed.
    #[error("connecting to Kubernetes: {0}")]
    Client(#[source] kube::Error),
    /// Leader election failed.
    #[error("leader election: {0}")]
    LeaderElection(#[from] kube_lease_manager::LeaseManagerError),
    /// Another replica took the lease; the process exits so it restarts as a follower.
    #[error("lost leadership")]
    LostLeadership,
    /// The admin HTTP server could not bind or failed.
    #[error("admin server on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `render`: the input file could not be read.
    #[error("reading {path}: {source}")]
    ReadManifest {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `render`: the input is not a valid LiveRealtime.
    #[error("{path}: not a valid LiveRealtime: {reason}")]
    InvalidManifest { path: String, reason: String },
}

impl Error {
    /// A stable identifier for the failed step: a bounded metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingObjectKey(_) => "missing_object_key",
            Self::Apply { .. } => "apply",
            Self::Step { reason, .. } => match *reason {
                "NameConflict" => "name_conflict",
                "MissingSecret" => "missing_secret",
                _ => "apply",
            },
            Self::Delete { .. } => "delete",
            Self::PatchStatus(_) => "patch_status",
            Self::Serialize { .. } => "serialize",
            Self::Client(_) => "client",
            Self::LeaderElection(_) => "leader_election",
            Self::LostLeadership => "lost_leadership",
            Self::Admin { .. } => "admin",
            Self::ReadManifest { .. } => "read_manifest",
            Self::InvalidManifest { .. } => "invalid_manifest",
        }
    }
}

/// Shorthand for the crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_snake_case_labels() {
        let e = Error::MissingObjectKey("namespace");
        assert_eq!(e.code(), "missing_object_key");
        assert_eq!(Error::LostLeadership.code(), "lost_leadership");
        assert!(
            Error::PatchStatus(kube::Error::LinesCodecMaxLineLengthExceeded)
                .code()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
        );
    }
}
