//! The etcd `Auth` gRPC service and the client-side half of auth enforcement: who is
//! calling ([`gate`], a layer in front of every etcd service), and the permission checks
//! handlers make before they read or propose (see [`crate::auth`] for the rules).
//!
//! The gate runs on the member that received the request: it resolves the `token`
//! metadata (or `authorization`, with an optional `Bearer ` prefix, as newer etcd
//! accepts; or, with `--client-cert-auth`, the client certificate's CN when no token is
//! sent) to a [`Caller`] put in the request's extensions, answers `invalid auth token`
//! for a token this member does not know, and refuses non-root callers of etcd's
//! admin-only RPCs (`IsAdminPermitted`: Maintenance Defragment/Snapshot/Hash/HashKV/
//! MoveLeader/Downgrade, membership changes, auth management).

use std::sync::Arc;
use std::time::Duration;

use skiff_proto::authpb;
use skiff_proto::etcdserverpb::{
    self as pb, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op,
};
use tonic::{Request, Response, Status};

use crate::auth::{Access, AuthData, AuthOp, PermType, Permission, ROOT};
use crate::error::Error;
use crate::node::StoreNode;
use crate::types::{Command, Reply};

/// How long a request naming a token waits for this member to apply the entry that
/// assigned it (etcd waits for the index too).
const TOKEN_INDEX_WAIT: Duration = Duration::from_secs(2);
/// A request refused with `AuthOldRevision` at apply is checked and proposed again at
/// most this many times.
pub const MAX_AUTH_RETRIES: usize = 5;

/// Who sent a request, as the gate resolved it while auth was on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// `None`: neither a token nor a usable client certificate.
    pub user: Option<String>,
}

/// The caller the gate attached to a request.
pub fn caller<T>(request: &Request<T>) -> Option<Caller> {
    request.extensions().get::<Caller>().cloned()
}

fn user_of(caller: Option<&Caller>) -> Option<&str> {
    caller.and_then(|c| c.user.as_deref())
}

/// RPCs only a `root` user may call while auth is on.
fn needs_admin(path: &str) -> bool {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return false;
    };
    match service {
        "etcdserverpb.Maintenance" => matches!(
            method,
            "Defragment" | "Snapshot" | "Hash" | "HashKV" | "MoveLeader" | "Downgrade"
        ),
        "etcdserverpb.Cluster" => matches!(
            method,
            "MemberAdd" | "MemberRemove" | "MemberUpdate" | "MemberPromote"
        ),
        // UserGet, RoleGet and UserChangePassword are also open to the user concerned:
        // their handlers check.
        "etcdserverpb.Auth" => !matches!(
            method,
            "Authenticate" | "UserGet" | "RoleGet" | "UserChangePassword"
        ),
        _ => false,
    }
}

/// The axum layer in front of the etcd services (see the module docs).
pub async fn gate(
    axum::extract::State(node): axum::extract::State<Arc<StoreNode>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    let etcd = path.starts_with("/etcdserverpb.")
        || path.starts_with("/v3lockpb.")
        || path.starts_with("/v3electionpb.");
    if !etcd || path == "/etcdserverpb.Auth/Authenticate" || !node.sm.read().auth.enabled {
        return next.run(request).await;
    }
    let admin = needs_admin(path);
    let (token, cn) = credentials(&node, &request);
    let caller = match resolve(&node, token, cn).await {
        Ok(caller) => caller,
        Err(err) => return status_response(err),
    };
    if admin && let Err(err) = node.sm.read().auth.check_admin(caller.user.as_deref()) {
        return status_response(err);
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn status_response(err: Error) -> axum::response::Response {
    Status::from(err).into_http::<axum::body::Body>()
}

/// The token a request carries, and the CN of its verified client certificate (only
/// with `--client-cert-auth`; never for the gRPC gateway's own certificate, as etcd).
fn credentials(
    node: &StoreNode,
    request: &axum::extract::Request,
) -> (Option<String>, Option<String>) {
    let headers = request.headers();
    let token = headers
        .get("token")
        .or_else(|| headers.get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).to_string());
    let mut cn = None;
    if token.is_none()
        && node.config.client_tls.client_cert_auth
        && !headers.contains_key("grpcgateway-accept")
    {
        let info = request.extensions().get::<tonic::transport::server::TlsConnectInfo<
            tonic::transport::server::TcpConnectInfo,
        >>();
        cn = info
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().and_then(|leaf| common_name(leaf)));
    }
    (token, cn)
}

/// etcd's `AuthInfoFromCtx`, then `AuthInfoFromTLS`.
async fn resolve(
    node: &StoreNode,
    token: Option<String>,
    cn: Option<String>,
) -> Result<Caller, Error> {
    match token {
        Some(token) => Ok(Caller {
            user: Some(token_user(node, &token).await?),
        }),
        None => Ok(Caller { user: cn }),
    }
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The user a simple token names, once this member applied the entry that assigned it.
async fn token_user(node: &StoreNode, token: &str) -> Result<String, Error> {
    let index = crate::auth::token_index(token).ok_or(Error::InvalidAuthToken)?;
    let applied = |node: &StoreNode| node.sm.read().last_applied.map_or(0, |id| id.index);
    if applied(node) < index {
        let mut changes = node.sm.subscribe();
        let _ = tokio::time::timeout(
            TOKEN_INDEX_WAIT,
            changes.wait_for(|_| applied(node) >= index),
        )
        .await;
    }
    node.sm
        .read()
        .tokens
        .user(token)
        .ok_or(Error::InvalidAuthToken)
}

// ---------------------------------------------------------------------------
// Checks handlers make (etcd's authApplierV3).

/// Read access for a Range.
pub fn check_range(auth: &AuthData, user: Option<&str>, req: &RangeRequest) -> Result<(), Error> {
    auth.check_key(user, &req.key, &req.range_end, Access::Read)
}

/// Write access to the key; read access too if the previous value is returned.
pub fn check_put(auth: &AuthData, user: Option<&str>, req: &PutRequest) -> Result<(), Error> {
    auth.check_key(user, &req.key, &[], Access::Write)?;
    if req.prev_kv {
        auth.check_key(user, &req.key, &[], Access::Read)?;
    }
    Ok(())
}

/// Write access to the range; read access too if the deleted values are returned.
pub fn check_delete(
    auth: &AuthData,
    user: Option<&str>,
    req: &DeleteRangeRequest,
) -> Result<(), Error> {
    auth.check_key(user, &req.key, &req.range_end, Access::Write)?;
    if req.prev_kv {
        auth.check_key(user, &req.key, &req.range_end, Access::Read)?;
    }
    Ok(())
}

/// Read access to every compared key, and every op's access, nested txns included.
pub fn check_txn(auth: &AuthData, user: Option<&str>, req: &TxnRequest) -> Result<(), Error> {
    for compare in &req.compare {
        auth.check_key(user, &compare.key, &compare.range_end, Access::Read)?;
    }
    check_ops(auth, user, &req.success)?;
    check_ops(auth, user, &req.failure)
}

fn check_ops(auth: &AuthData, user: Option<&str>, ops: &[RequestOp]) -> Result<(), Error> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(auth, user, r)?,
            Some(request_op::Request::RequestPut(p)) => check_put(auth, user, p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => check_delete(auth, user, d)?,
            Some(request_op::Request::RequestTxn(t)) => check_txn(auth, user, t)?,
            None => {}
        }
    }
    Ok(())
}

/// Check a read against this member's auth state (call after the read barrier).
pub fn check_read(
    node: &StoreNode,
    caller: Option<&Caller>,
    check: impl FnOnce(&AuthData, Option<&str>) -> Result<(), Error>,
) -> Result<(), Error> {
    let state = node.sm.read();
    check(&state.auth, user_of(caller))
}

/// Check a client write and wrap it for proposing: as it is while auth is off, else as
/// `Command::Guarded` with the auth revision it was checked at. Returns that revision.
pub fn guard(
    node: &StoreNode,
    caller: Option<&Caller>,
    command: &Command,
    check: &impl Fn(&AuthData, Option<&str>) -> Result<(), Error>,
) -> Result<(Command, u64), Error> {
    let state = node.sm.read();
    if !state.auth.enabled {
        return Ok((command.clone(), 0));
    }
    check(&state.auth, user_of(caller))?;
    let inner = postcard::to_stdvec(command)
        .map_err(|e| Error::Internal(format!("encode command: {e}")))?;
    Ok((
        Command::Guarded {
            auth_revision: state.auth.revision,
            command: inner,
        },
        state.auth.revision,
    ))
}

/// Whether a write was refused because the auth state changed after its check.
pub fn is_old_revision(status: &Status) -> bool {
    status.message() == Error::AuthOldRevision.to_string()
}

/// Wait (briefly) until this member has applied an auth change newer than `revision`,
/// before checking a refused write again.
pub async fn wait_auth_newer(node: &StoreNode, revision: u64) {
    let mut changes = node.sm.subscribe();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        changes.wait_for(|_| node.sm.read().auth.revision > revision),
    )
    .await;
}

/// Write access on every key attached to a lease (etcd's `checkLeasePuts`); root may
/// revoke any lease.
pub fn check_lease_keys(
    state: &crate::state_machine::SmState,
    user: Option<&str>,
    id: i64,
    access: Access,
) -> Result<(), Error> {
    let auth = &state.auth;
    if !auth.enabled || auth.check_admin(user).is_ok() {
        return Ok(());
    }
    if let Some(lease) = state.mvcc.lessor().get(id) {
        for key in lease.keys() {
            auth.check_key(user, key, &[], access)?;
        }
    }
    Ok(())
}

/// Check and wrap a client's LeaseRevoke (write access to every attached key).
pub fn guard_lease_revoke(
    node: &StoreNode,
    caller: Option<&Caller>,
    id: i64,
    command: Command,
) -> Result<Command, Error> {
    let state = node.sm.read();
    if !state.auth.enabled {
        return Ok(command);
    }
    check_lease_keys(&state, user_of(caller), id, Access::Write)?;
    let inner = postcard::to_stdvec(&command)
        .map_err(|e| Error::Internal(format!("encode command: {e}")))?;
    Ok(Command::Guarded {
        auth_revision: state.auth.revision,
        command: inner,
    })
}

/// Read access to every key attached to a lease, for a TimeToLive that lists them.
pub fn check_lease_read(node: &StoreNode, caller: Option<&Caller>, id: i64) -> Result<(), Error> {
    let state = node.sm.read();
    check_lease_keys(&state, user_of(caller), id, Access::Read)
}

/// Read access for a watch on `[key, range_end)`.
pub fn check_watch(
    node: &StoreNode,
    caller: Option<&Caller>,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), Error> {
    let state = node.sm.read();
    state
        .auth
        .check_key(user_of(caller), key, range_end, Access::Read)
}

// ---------------------------------------------------------------------------
// The Auth service.

/// The etcd `Auth` service.
#[derive(Clone)]
pub struct AuthApi {
    pub node: Arc<StoreNode>,
}

impl AuthApi {
    fn header(&self) -> pb::ResponseHeader {
        let revision = self.node.sm.read().mvcc.current_revision();
        self.node.header(revision)
    }

    async fn propose<T>(&self, request: &Request<T>, op: AuthOp) -> Result<Vec<u8>, Status> {
        op.check()?;
        let require_leader = crate::grpc::requires_leader(request);
        match self.node.write(Command::Auth(op), require_leader).await? {
            Reply::Response(bytes) => Ok(bytes),
            Reply::Failed(err) => Err(err.into()),
            Reply::Done => Err(Status::internal("unexpected reply kind")),
        }
    }

    /// Own records (or any, for root).
    fn check_self_or_admin<T>(&self, request: &Request<T>, name: &str) -> Result<(), Status> {
        let auth = &self.node.sm.read().auth;
        let caller = caller(request);
        let user = user_of(caller.as_ref());
        if auth.check_admin(user).is_err() && user != Some(name) {
            auth.check_admin(user)?;
        }
        Ok(())
    }

    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.node.config.auth.bcrypt_cost;
        tokio::task::spawn_blocking(move || crate::auth::hash_password(&password, cost))
            .await
            .map_err(|e| Status::internal(format!("hash password: {e}")))?
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthApi {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        self.propose(&request, AuthOp::Enable).await?;
        Ok(Response::new(pb::AuthEnableResponse {
            header: Some(self.header()),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.propose(&request, AuthOp::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: Some(self.header()),
        }))
    }

    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.node.linearizable_barrier().await?;
        let (enabled, auth_revision) = {
            let auth = &self.node.sm.read().auth;
            (auth.enabled, auth.revision)
        };
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(self.header()),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let req = request.get_ref().clone();
        for _ in 0..MAX_AUTH_RETRIES {
            let (hash, checked_revision) = {
                let auth = &self.node.sm.read().auth;
                if !auth.enabled {
                    return Err(Error::AuthNotEnabled.into());
                }
                match auth.users.get(&req.name) {
                    Some(user) if !user.no_password => (
                        user.password_hash.clone().unwrap_or_default(),
                        auth.revision,
                    ),
                    _ => return Err(Error::AuthFailed.into()),
                }
            };
            let password = req.password.clone();
            let matches =
                tokio::task::spawn_blocking(move || crate::auth::verify_password(&password, &hash))
                    .await
                    .unwrap_or(false);
            if !matches {
                return Err(Error::AuthFailed.into());
            }
            let op = AuthOp::Authenticate {
                name: req.name.clone(),
                prefix: crate::auth::token_prefix(),
                checked_revision,
            };
            match self.propose(&request, op).await {
                Ok(token) => {
                    return Ok(Response::new(pb::AuthenticateResponse {
                        header: Some(self.header()),
                        token: String::from_utf8_lossy(&token).into_owned(),
                    }));
                }
                Err(status) if is_old_revision(&status) => {
                    wait_auth_newer(&self.node, checked_revision).await;
                }
                Err(status) => return Err(status),
            }
        }
        Err(Error::AuthOldRevision.into())
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let req = request.get_ref();
        if req.name.is_empty() {
            return Err(Error::UserEmpty.into());
        }
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            None
        } else {
            Some(self.hash(req.password.clone()).await?)
        };
        let op = AuthOp::UserAdd {
            name: req.name.clone(),
            password_hash,
            no_password,
        };
        self.propose(&request, op).await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: Some(self.header()),
        }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        self.check_self_or_admin(&request, &request.get_ref().name)?;
        self.node.linearizable_barrier().await?;
        let roles = {
            let auth = &self.node.sm.read().auth;
            let user = auth
                .users
                .get(&request.get_ref().name)
                .ok_or(Error::UserNotFound)?;
            user.roles.iter().cloned().collect()
        };
        Ok(Response::new(pb::AuthUserGetResponse {
            header: Some(self.header()),
            roles,
        }))
    }

    async fn user_list(
        &self,
        _request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.node.linearizable_barrier().await?;
        let users = self.node.sm.read().auth.users.keys().cloned().collect();
        Ok(Response::new(pb::AuthUserListResponse {
            header: Some(self.header()),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let op = AuthOp::UserDelete {
            name: request.get_ref().name.clone(),
        };
        self.propose(&request, op).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: Some(self.header()),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        self.check_self_or_admin(&request, &request.get_ref().name)?;
        let password_hash = Some(self.hash(request.get_ref().password.clone()).await?);
        let op = AuthOp::UserChangePassword {
            name: request.get_ref().name.clone(),
            password_hash,
        };
        self.propose(&request, op).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: Some(self.header()),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let req = request.get_ref();
        let op = AuthOp::UserGrantRole {
            user: req.user.clone(),
            role: req.role.clone(),
        };
        self.propose(&request, op).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: Some(self.header()),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let req = request.get_ref();
        let op = AuthOp::UserRevokeRole {
            name: req.name.clone(),
            role: req.role.clone(),
        };
        self.propose(&request, op).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: Some(self.header()),
        }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let op = AuthOp::RoleAdd {
            name: request.get_ref().name.clone(),
        };
        self.propose(&request, op).await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: Some(self.header()),
        }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let name = request.get_ref().role.clone();
        {
            let auth = &self.node.sm.read().auth;
            let caller = caller(&request);
            let user = user_of(caller.as_ref());
            if let Err(err) = auth.check_admin(user)
                && !user.is_some_and(|u| auth.has_role(u, &name))
            {
                return Err(err.into());
            }
        }
        self.node.linearizable_barrier().await?;
        let perm = {
            let auth = &self.node.sm.read().auth;
            let role = auth.roles.get(&name).ok_or(Error::RoleNotFound)?;
            if name == ROOT {
                vec![authpb::Permission {
                    perm_type: PermType::ReadWrite.as_i32(),
                    key: Vec::new(),
                    range_end: vec![0],
                }]
            } else {
                role.permissions
                    .iter()
                    .map(|p| authpb::Permission {
                        perm_type: p.perm_type.as_i32(),
                        key: p.key.clone(),
                        range_end: p.range_end.clone(),
                    })
                    .collect()
            }
        };
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: Some(self.header()),
            perm,
        }))
    }

    async fn role_list(
        &self,
        _request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.node.linearizable_barrier().await?;
        let roles = self.node.sm.read().auth.roles.keys().cloned().collect();
        Ok(Response::new(pb::AuthRoleListResponse {
            header: Some(self.header()),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let op = AuthOp::RoleDelete {
            name: request.get_ref().role.clone(),
        };
        self.propose(&request, op).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: Some(self.header()),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let req = request.get_ref();
        let perm = req.perm.as_ref().ok_or(Error::PermissionNotGiven)?;
        let perm_type = PermType::from_i32(perm.perm_type).ok_or(Error::PermissionNotGiven)?;
        let op = AuthOp::RoleGrantPermission {
            name: req.name.clone(),
            permission: Permission {
                perm_type,
                key: perm.key.clone(),
                range_end: perm.range_end.clone(),
            },
        };
        self.propose(&request, op).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: Some(self.header()),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let req = request.get_ref();
        let op = AuthOp::RoleRevokePermission {
            name: req.role.clone(),
            key: req.key.clone(),
            range_end: req.range_end.clone(),
        };
        self.propose(&request, op).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: Some(self.header()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_only_rpcs_are_etcds() {
        assert!(needs_admin("/etcdserverpb.Maintenance/Defragment"));
        assert!(needs_admin("/etcdserverpb.Maintenance/Snapshot"));
        assert!(!needs_admin("/etcdserverpb.Maintenance/Status"));
        assert!(needs_admin("/etcdserverpb.Cluster/MemberAdd"));
        assert!(!needs_admin("/etcdserverpb.Cluster/MemberList"));
        assert!(needs_admin("/etcdserverpb.Auth/UserAdd"));
        assert!(needs_admin("/etcdserverpb.Auth/AuthStatus"));
        assert!(!needs_admin("/etcdserverpb.Auth/UserGet"));
        assert!(!needs_admin("/etcdserverpb.KV/Range"));
    }
}
