//! The store's one error type and the one table that maps it onto the etcd v3 wire.
//!
//! etcd clients match on the gRPC code *and* the exact message string (clientv3's
//! `rpctypes.errStringToError`), so the strings below are etcd's, byte for byte.
//! Transient conditions map to `Unavailable` so that clients retry them.

use serde::{Deserialize, Serialize};

/// Every failure the store can report. It is serde-serialisable because errors raised
/// while applying a command on the leader travel back to the member that forwarded it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: ID removed")]
    MemberIdRemoved,
    /// This member was removed from the cluster; it stops serving (etcd exits too).
    #[error("etcdserver: the member has been permanently removed from the cluster")]
    MemberRemoved,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// The backend quota (`--quota-backend-bytes`) is exhausted or a NOSPACE alarm is active.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    /// etcd's `ErrGRPCMemberBadURLs`; the payload (why the URL is bad) shows in `Debug`.
    #[error("etcdserver: given member URLs are invalid")]
    BadPeerUrl(String),
    /// The storage engine failed; the member cannot safely continue serving writes.
    #[error("etcdserver: storage failure: {0}")]
    Storage(String),
    /// The configuration or the data directory cannot be used.
    #[error("{0}")]
    Config(String),
    /// A bug or an impossible state; reported instead of panicking.
    #[error("etcdserver: internal error: {0}")]
    Internal(String),
    // Auth (see crate::auth): etcd's `rpctypes` strings and codes.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The auth state changed between a request's permission check and its apply; the
    /// member that checked it checks again (etcd's `ErrAuthOldRevision`).
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
}

impl Error {
    /// The wire table: etcd's gRPC code for each error.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::EmptyKey
            | Error::KeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::InvalidSortOption
            | Error::RequestTooLarge
            | Error::BadPeerUrl(_)
            | Error::UserEmpty
            | Error::RoleEmpty
            | Error::PermissionNotGiven
            | Error::AuthFailed
            | Error::InvalidAuthMgmt
            | Error::AuthOldRevision => Code::InvalidArgument,
            Error::RootUserNotExist
            | Error::RootRoleNotExist
            | Error::UserAlreadyExist
            | Error::UserNotFound
            | Error::RoleAlreadyExist
            | Error::RoleNotFound
            | Error::RoleNotGranted
            | Error::PermissionNotGranted
            | Error::AuthNotEnabled => Code::FailedPrecondition,
            Error::PermissionDenied => Code::PermissionDenied,
            Error::InvalidAuthToken => Code::Unauthenticated,
            Error::Compacted | Error::FutureRev | Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
            Error::NoLeader
            | Error::LeaderChanged
            | Error::Timeout
            | Error::Stopped
            | Error::NotEnoughStartedMembers
            | Error::LeaderTransferTimeout => Code::Unavailable,
            Error::PeerUrlExists
            | Error::MemberRemoved
            | Error::MemberIdRemoved
            | Error::MemberNotLearner
            | Error::LearnerNotReady
            | Error::TooManyLearners
            | Error::NotSupportedForLearner
            | Error::LeaseExists
            | Error::NotLeader
            | Error::BadLeaderTransferee => Code::FailedPrecondition,
            Error::NoSpace => Code::ResourceExhausted,
            Error::Storage(_) => Code::DataLoss,
            Error::Internal(_) | Error::Config(_) => Code::Internal,
        }
    }

    /// Whether a client may safely retry: the request certainly was not applied.
    pub fn is_transient(&self) -> bool {
        self.code() == tonic::Code::Unavailable
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}

impl From<crate::engine::EngineError> for Error {
    fn from(err: crate::engine::EngineError) -> Self {
        Error::Storage(err.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_match_etcd() {
        let status: tonic::Status = Error::Compacted.into();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let status: tonic::Status = Error::NoLeader.into();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "etcdserver: no leader");
        let status: tonic::Status = Error::NoSpace.into();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: database space exceeded"
        );
        assert!(Error::Timeout.is_transient());
        assert!(!Error::DuplicateKey.is_transient());
    }
}
