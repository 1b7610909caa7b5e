//! etcd authentication and authorization: users, roles, key permissions, the auth switch
//! and simple tokens, with etcd's semantics (`server/auth/store.go`).
//!
//! # Where state lives
//! - [`AuthData`] (users with bcrypt hashes, roles with permissions, `enabled`, the auth
//!   revision) is replicated: every change is a [`Command::Auth`](crate::types::Command)
//!   applied by the state machine on every member, persisted in the engine's `Meta`
//!   table under [`KEY_AUTH`] and therefore carried by Raft snapshots and by
//!   `snapshot save`/`restore`. Passwords are hashed by the member that received the
//!   request, so only hashes enter the log.
//! - [`Tokens`] (simple tokens) are in memory, as etcd's: an `Authenticate` is replicated
//!   so that every member assigns the token `<16 random letters>.<log index>` when it
//!   applies it; a member asked about a token whose index it has not applied yet waits
//!   for it. Tokens expire after `--auth-token-ttl` without use, die with a restart, and
//!   at most [`MAX_LIVE_TOKENS`] live at once (the one closest to expiry goes first).
//!
//! # The rule for checking permissions
//! A request is checked by the member that received it from the client, where its token
//! is known, against that member's replicated auth state, before it is forwarded or
//! proposed. A write checked with auth on is proposed as `Command::Guarded` carrying the
//! auth revision it was checked at; the state machine applies it only if the auth state
//! has not changed since (else [`Error::AuthOldRevision`], and the member checks again),
//! so a permission revoked before a write is applied never lets that write through. A
//! plain client write (checked while auth was off) that reaches the state machine after
//! auth was enabled is refused with `user name is empty`, as etcd refuses a request
//! without user. Reads are checked after the read-index barrier, against state at least
//! as new as any revoke acknowledged before the read began.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The `Meta` key holding the encoded [`AuthData`].
pub const KEY_AUTH: &[u8] = b"sm/auth";
/// The user and the role that may do everything.
pub const ROOT: &str = "root";
/// Live simple tokens per member (etcd keeps them unbounded and warns every 10,000).
pub const MAX_LIVE_TOKENS: usize = 65_536;
/// Length of a simple token's random prefix (etcd's `defaultSimpleTokenLength`).
pub const TOKEN_PREFIX_LEN: usize = 16;
/// bcrypt's cost bounds (golang.org/x/crypto/bcrypt `MinCost`, `MaxCost`).
pub const MIN_BCRYPT_COST: u32 = 4;
pub const MAX_BCRYPT_COST: u32 = 31;

/// `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// How long a simple token lives without use (etcd's default 300 s).
    pub token_ttl: Duration,
    /// bcrypt cost for new password hashes (etcd's default 10).
    pub bcrypt_cost: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl: Duration::from_secs(300),
            bcrypt_cost: 10,
        }
    }
}

/// etcd's `authpb.Permission.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermType {
    Read,
    Write,
    ReadWrite,
}

impl PermType {
    /// From the protobuf enum value (READ=0, WRITE=1, READWRITE=2).
    pub fn from_i32(v: i32) -> Option<PermType> {
        match v {
            0 => Some(PermType::Read),
            1 => Some(PermType::Write),
            2 => Some(PermType::ReadWrite),
            _ => None,
        }
    }

    pub fn as_i32(self) -> i32 {
        match self {
            PermType::Read => 0,
            PermType::Write => 1,
            PermType::ReadWrite => 2,
        }
    }

    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (PermType::ReadWrite, _)
                | (PermType::Read, Access::Read)
                | (PermType::Write, Access::Write)
        )
    }
}

/// What a request needs on a key range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A permission on one key (`range_end` empty), a range `[key, range_end)`, or all keys
/// from `key` on (`range_end` = `"\0"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub perm_type: PermType,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// bcrypt hash; `None` for a `no_password` user (it authenticates by certificate).
    pub password_hash: Option<String>,
    /// Sorted, as etcd keeps them.
    pub roles: BTreeSet<String>,
    pub no_password: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Sorted by key, as etcd keeps them.
    pub permissions: Vec<Permission>,
}

/// The replicated auth state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthData {
    pub enabled: bool,
    /// Bumped by every change that can change a verdict (etcd's auth revision; starts at 1).
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthData {
    fn default() -> Self {
        AuthData {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// One replicated auth change (the payload of `Command::Auth`). Variants are only ever
/// appended: their index is their wire form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOp {
    Enable,
    Disable,
    UserAdd {
        name: String,
        password_hash: Option<String>,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        name: String,
        permission: Permission,
    },
    RoleRevokePermission {
        name: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    /// Assign the token `<prefix>.<index of this entry>` to `name`, if the password the
    /// proposing member checked at auth revision `checked_revision` is still current.
    Authenticate {
        name: String,
        prefix: String,
        checked_revision: u64,
    },
}

impl AuthOp {
    /// Approximate encoded size, for batch limits.
    pub fn encoded_len(&self) -> usize {
        let strings: usize = match self {
            AuthOp::Enable | AuthOp::Disable => 0,
            AuthOp::UserAdd {
                name,
                password_hash,
                ..
            }
            | AuthOp::UserChangePassword {
                name,
                password_hash,
            } => name.len() + password_hash.as_ref().map_or(0, String::len),
            AuthOp::UserDelete { name }
            | AuthOp::RoleAdd { name }
            | AuthOp::RoleDelete { name } => name.len(),
            AuthOp::UserGrantRole { user: a, role: b }
            | AuthOp::UserRevokeRole { name: a, role: b }
            | AuthOp::Authenticate {
                name: a, prefix: b, ..
            } => a.len() + b.len(),
            AuthOp::RoleGrantPermission { name, permission } => {
                name.len() + permission.key.len() + permission.range_end.len()
            }
            AuthOp::RoleRevokePermission {
                name,
                key,
                range_end,
            } => name.len() + key.len() + range_end.len(),
        };
        strings + 32
    }

    /// Structural check, the same on every member (names may not be empty where etcd
    /// refuses them).
    pub fn check(&self) -> Result<(), Error> {
        match self {
            AuthOp::UserAdd { name, .. } if name.is_empty() => Err(Error::UserEmpty),
            AuthOp::RoleAdd { name } if name.is_empty() => Err(Error::RoleEmpty),
            AuthOp::Authenticate { prefix, .. } if prefix.len() != TOKEN_PREFIX_LEN => Err(
                Error::Internal("authenticate: malformed token prefix".into()),
            ),
            _ => Ok(()),
        }
    }
}

/// What applying an [`AuthOp`] asks of the in-memory tokens.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenEffect {
    None,
    Assign { token: String, user: String },
    InvalidateUser(String),
    ClearAll,
}

impl AuthData {
    /// Apply one change; `index` is the log index of its entry (for token names).
    pub fn apply(&mut self, op: &AuthOp, index: u64) -> Result<TokenEffect, Error> {
        op.check()?;
        let effect = match op {
            AuthOp::Enable => {
                if self.enabled {
                    return Ok(TokenEffect::None);
                }
                let root = self.users.get(ROOT).ok_or(Error::RootUserNotExist)?;
                if !root.roles.contains(ROOT) {
                    return Err(Error::RootRoleNotExist);
                }
                self.enabled = true;
                // etcd does not bump the revision on enable.
                return Ok(TokenEffect::None);
            }
            AuthOp::Disable => {
                if !self.enabled {
                    return Ok(TokenEffect::None);
                }
                self.enabled = false;
                TokenEffect::ClearAll
            }
            AuthOp::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if self.users.contains_key(name) {
                    return Err(Error::UserAlreadyExist);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password_hash: if *no_password {
                            None
                        } else {
                            password_hash.clone()
                        },
                        roles: BTreeSet::new(),
                        no_password: *no_password,
                    },
                );
                TokenEffect::None
            }
            AuthOp::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(Error::UserNotFound)?;
                TokenEffect::InvalidateUser(name.clone())
            }
            AuthOp::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(name).ok_or(Error::UserNotFound)?;
                if !user.no_password {
                    user.password_hash = password_hash.clone();
                }
                TokenEffect::InvalidateUser(name.clone())
            }
            AuthOp::UserGrantRole { user, role } => {
                if role != ROOT && !self.roles.contains_key(role) {
                    if !self.users.contains_key(user) {
                        return Err(Error::UserNotFound);
                    }
                    return Err(Error::RoleNotFound);
                }
                let entry = self.users.get_mut(user).ok_or(Error::UserNotFound)?;
                if !entry.roles.insert(role.clone()) {
                    // Granted already: ignored, as etcd does (no revision bump).
                    return Ok(TokenEffect::None);
                }
                TokenEffect::None
            }
            AuthOp::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(name).ok_or(Error::UserNotFound)?;
                if !user.roles.remove(role) {
                    return Err(Error::RoleNotGranted);
                }
                TokenEffect::None
            }
            AuthOp::RoleAdd { name } => {
                if self.roles.contains_key(name) {
                    return Err(Error::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Role::default());
                TokenEffect::None
            }
            AuthOp::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(Error::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.remove(name);
                }
                TokenEffect::None
            }
            AuthOp::RoleGrantPermission { name, permission } => {
                let role = self.roles.get_mut(name).ok_or(Error::RoleNotFound)?;
                match role
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == permission.key && p.range_end == permission.range_end)
                {
                    Some(existing) => existing.perm_type = permission.perm_type,
                    None => {
                        role.permissions.push(permission.clone());
                        role.permissions.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                TokenEffect::None
            }
            AuthOp::RoleRevokePermission {
                name,
                key,
                range_end,
            } => {
                let role = self.roles.get_mut(name).ok_or(Error::RoleNotFound)?;
                let before = role.permissions.len();
                role.permissions
                    .retain(|p| !(&p.key == key && &p.range_end == range_end));
                if role.permissions.len() == before {
                    return Err(Error::PermissionNotGranted);
                }
                TokenEffect::None
            }
            AuthOp::Authenticate {
                name,
                prefix,
                checked_revision,
            } => {
                if !self.enabled {
                    return Err(Error::AuthNotEnabled);
                }
                if *checked_revision < self.revision {
                    return Err(Error::AuthOldRevision);
                }
                match self.users.get(name) {
                    Some(user) if !user.no_password => {}
                    _ => return Err(Error::AuthFailed),
                }
                // Assigning a token changes no verdict: no revision bump.
                return Ok(TokenEffect::Assign {
                    token: format!("{prefix}.{index}"),
                    user: name.clone(),
                });
            }
        };
        self.revision += 1;
        Ok(effect)
    }

    /// etcd's `IsAdminPermitted` (auth assumed on): the user must exist and hold `root`.
    pub fn check_admin(&self, user: Option<&str>) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.filter(|u| !u.is_empty()).ok_or(Error::UserEmpty)?;
        let user = self.users.get(name).ok_or(Error::UserNotFound)?;
        if !user.roles.contains(ROOT) {
            return Err(Error::PermissionDenied);
        }
        Ok(())
    }

    /// Whether `user` holds `role` (etcd's `HasRole`).
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(role))
    }

    /// etcd's `isOpPermitted`: may `user` read or write `[key, range_end)` (a single key
    /// if `range_end` is empty, everything from `key` on if it is `"\0"`)?
    pub fn check_key(
        &self,
        user: Option<&str>,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.filter(|u| !u.is_empty()).ok_or(Error::UserEmpty)?;
        let user = self.users.get(name).ok_or(Error::PermissionDenied)?;
        if user.roles.contains(ROOT) {
            return Ok(());
        }
        let granted: Vec<Interval> = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.permissions.iter())
            .filter(|p| p.perm_type.allows(access))
            .map(|p| Interval::of_permission(&p.key, &p.range_end))
            .collect();
        let allowed = if range_end.is_empty() {
            granted.iter().any(|ivl| ivl.contains_point(key))
        } else {
            covers(granted, key, open_end(range_end))
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }
}

/// `"\0"` as a range end means "no end".
fn open_end(range_end: &[u8]) -> Option<&[u8]> {
    if range_end == [0] {
        None
    } else {
        Some(range_end)
    }
}

/// `[start, end)`, `end` `None` for unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// etcd's `getMergedPerms`: a single key is the point `[key, key+"\0")`.
    fn of_permission(key: &[u8], range_end: &[u8]) -> Interval {
        let end = if range_end.is_empty() {
            let mut next = key.to_vec();
            next.push(0);
            Some(next)
        } else {
            open_end(range_end).map(<[u8]>::to_vec)
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }

    fn contains_point(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && self.end.as_deref().is_none_or(|end| key < end)
    }
}

/// Whether the union of `granted` covers all of `[start, end)` (etcd's interval tree
/// `Contains`).
fn covers(mut granted: Vec<Interval>, start: &[u8], end: Option<&[u8]>) -> bool {
    granted.sort_by(|a, b| a.start.cmp(&b.start));
    let mut reached = start.to_vec();
    for ivl in granted {
        if ivl.start > reached {
            break;
        }
        match ivl.end {
            None => return true,
            Some(e) if e > reached => reached = e,
            Some(_) => {}
        }
        if end.is_some_and(|end| reached.as_slice() >= end) {
            return true;
        }
    }
    false
}

/// A bcrypt hash of `password` at `cost` (slow: call off the async threads).
pub fn hash_password(password: &str, cost: u32) -> Result<String, Error> {
    bcrypt::hash(password, cost.clamp(MIN_BCRYPT_COST, MAX_BCRYPT_COST))
        .map_err(|e| Error::Internal(format!("hash password: {e}")))
}

/// Whether `password` matches `hash` (slow: call off the async threads).
pub fn verify_password(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// A simple token's random part: 16 ASCII letters, as etcd's.
pub fn token_prefix() -> String {
    use rand::Rng;
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..TOKEN_PREFIX_LEN)
        .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
        .collect()
}

/// The log index a simple token names (`<prefix>.<index>`), if well formed.
pub fn token_index(token: &str) -> Option<u64> {
    let (prefix, index) = token.split_once('.')?;
    if prefix.is_empty() || index.contains('.') {
        return None;
    }
    index.parse().ok()
}

/// This member's live simple tokens.
#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    live: Mutex<HashMap<String, (String, Instant)>>,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::new(AuthConfig::default().token_ttl)
    }
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Carry out what an applied [`AuthOp`] asks.
    pub fn take_effect(&self, effect: TokenEffect) {
        let mut live = self.lock();
        match effect {
            TokenEffect::None => {}
            TokenEffect::Assign { token, user } => {
                let now = Instant::now();
                if live.len() >= MAX_LIVE_TOKENS {
                    live.retain(|_, (_, expiry)| *expiry > now);
                }
                if live.len() >= MAX_LIVE_TOKENS
                    && let Some(oldest) = live
                        .iter()
                        .min_by_key(|(_, (_, expiry))| *expiry)
                        .map(|(t, _)| t.clone())
                {
                    live.remove(&oldest);
                }
                live.insert(token, (user, now + self.ttl));
            }
            TokenEffect::InvalidateUser(user) => live.retain(|_, (u, _)| *u != user),
            TokenEffect::ClearAll => live.clear(),
        }
    }

    /// The user a live token belongs to; using a token extends its life by the TTL.
    pub fn user(&self, token: &str) -> Option<String> {
        let mut live = self.lock();
        let now = Instant::now();
        match live.get_mut(token) {
            Some((user, expiry)) if *expiry > now => {
                *expiry = now + self.ttl;
                Some(user.clone())
            }
            Some(_) => {
                live.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermType, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        }
    }

    fn with_perms(perms: Vec<Permission>) -> AuthData {
        let mut auth = AuthData::default();
        for op in [
            AuthOp::UserAdd {
                name: ROOT.into(),
                password_hash: None,
                no_password: false,
            },
            AuthOp::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthOp::UserAdd {
                name: "alice".into(),
                password_hash: None,
                no_password: false,
            },
            AuthOp::RoleAdd { name: "r".into() },
            AuthOp::UserGrantRole {
                user: "alice".into(),
                role: "r".into(),
            },
        ] {
            auth.apply(&op, 1).unwrap();
        }
        for permission in perms {
            auth.apply(
                &AuthOp::RoleGrantPermission {
                    name: "r".into(),
                    permission,
                },
                1,
            )
            .unwrap();
        }
        auth.apply(&AuthOp::Enable, 1).unwrap();
        auth
    }

    fn ok(auth: &AuthData, key: &str, end: &str, access: Access) -> bool {
        auth.check_key(Some("alice"), key.as_bytes(), end.as_bytes(), access)
            .is_ok()
    }

    #[test]
    fn prefix_permissions_cover_keys_and_subranges_only() {
        // `role grant-permission r read /app/ --prefix` is [/app/, /app0).
        let auth = with_perms(vec![perm(PermType::Read, "/app/", "/app0")]);
        assert!(ok(&auth, "/app/x", "", Access::Read));
        assert!(ok(&auth, "/app/", "/app0", Access::Read));
        assert!(ok(&auth, "/app/a", "/app/b", Access::Read));
        assert!(!ok(&auth, "/app/x", "", Access::Write));
        assert!(!ok(&auth, "/ap", "", Access::Read));
        assert!(!ok(&auth, "/app/", "/app1", Access::Read));
        assert!(!ok(&auth, "/app/", "\0", Access::Read));
        assert_eq!(
            auth.check_key(Some("alice"), b"/b", b"", Access::Read),
            Err(Error::PermissionDenied)
        );
    }

    #[test]
    fn single_keys_from_key_and_adjacent_ranges() {
        let auth = with_perms(vec![
            perm(PermType::ReadWrite, "k", ""),
            perm(PermType::Write, "a", "c"),
            perm(PermType::Write, "c", "e"),
            perm(PermType::Read, "x", "\0"),
        ]);
        assert!(ok(&auth, "k", "", Access::Read));
        assert!(ok(&auth, "k", "", Access::Write));
        assert!(ok(&auth, "k", "k\0", Access::Write));
        assert!(!ok(&auth, "k", "l", Access::Read));
        assert!(!ok(&auth, "k0", "", Access::Read));
        // Adjacent ranges merge: [a, e) is covered by [a, c) and [c, e).
        assert!(ok(&auth, "a", "e", Access::Write));
        assert!(!ok(&auth, "a", "e\0", Access::Write));
        // From-key permission: everything from x on, including a from-key range.
        assert!(ok(&auth, "zzz", "", Access::Read));
        assert!(ok(&auth, "xa", "\0", Access::Read));
        assert!(!ok(&auth, "w", "\0", Access::Read));
    }

    #[test]
    fn root_no_user_and_disabled() {
        let auth = with_perms(vec![]);
        assert!(
            auth.check_key(Some(ROOT), b"anything", b"\0", Access::Write)
                .is_ok()
        );
        assert_eq!(
            auth.check_key(None, b"k", b"", Access::Read),
            Err(Error::UserEmpty)
        );
        assert_eq!(
            auth.check_key(Some("nobody"), b"k", b"", Access::Read),
            Err(Error::PermissionDenied)
        );
        assert_eq!(
            auth.check_admin(Some("alice")),
            Err(Error::PermissionDenied)
        );
        assert_eq!(auth.check_admin(Some("bob")), Err(Error::UserNotFound));
        assert_eq!(auth.check_admin(None), Err(Error::UserEmpty));
        assert!(auth.check_admin(Some(ROOT)).is_ok());
        let off = AuthData::default();
        assert!(off.check_key(None, b"k", b"", Access::Write).is_ok());
    }

    #[test]
    fn management_follows_etcd() {
        let mut auth = AuthData::default();
        assert_eq!(auth.apply(&AuthOp::Enable, 1), Err(Error::RootUserNotExist));
        let add = |name: &str| AuthOp::UserAdd {
            name: name.into(),
            password_hash: None,
            no_password: false,
        };
        auth.apply(&add(ROOT), 1).unwrap();
        assert_eq!(auth.apply(&add(ROOT), 1), Err(Error::UserAlreadyExist));
        assert_eq!(auth.apply(&add(""), 1), Err(Error::UserEmpty));
        assert_eq!(auth.apply(&AuthOp::Enable, 1), Err(Error::RootRoleNotExist));
        let grant = |user: &str, role: &str| AuthOp::UserGrantRole {
            user: user.into(),
            role: role.into(),
        };
        assert_eq!(auth.apply(&grant(ROOT, "r"), 1), Err(Error::RoleNotFound));
        assert_eq!(auth.apply(&grant("x", ROOT), 1), Err(Error::UserNotFound));
        auth.apply(&grant(ROOT, ROOT), 1).unwrap();
        let rev = auth.revision;
        auth.apply(&grant(ROOT, ROOT), 1).unwrap();
        assert_eq!(auth.revision, rev, "a repeated grant is ignored");
        auth.apply(&AuthOp::Enable, 1).unwrap();
        assert_eq!(auth.revision, rev, "enable does not bump the revision");
        assert_eq!(
            auth.apply(&AuthOp::UserDelete { name: ROOT.into() }, 1),
            Err(Error::InvalidAuthMgmt)
        );
        assert_eq!(
            auth.apply(
                &AuthOp::UserRevokeRole {
                    name: ROOT.into(),
                    role: "r".into()
                },
                1
            ),
            Err(Error::RoleNotGranted)
        );
        auth.apply(&AuthOp::RoleAdd { name: "r".into() }, 1)
            .unwrap();
        assert_eq!(
            auth.apply(&AuthOp::RoleAdd { name: "r".into() }, 1),
            Err(Error::RoleAlreadyExist)
        );
        assert_eq!(
            auth.apply(
                &AuthOp::RoleRevokePermission {
                    name: "r".into(),
                    key: b"k".to_vec(),
                    range_end: vec![]
                },
                1
            ),
            Err(Error::PermissionNotGranted)
        );
        let effect = auth
            .apply(
                &AuthOp::Authenticate {
                    name: ROOT.into(),
                    prefix: "abcdefghijklmnop".into(),
                    checked_revision: auth.revision,
                },
                42,
            )
            .unwrap();
        assert_eq!(
            effect,
            TokenEffect::Assign {
                token: "abcdefghijklmnop.42".into(),
                user: ROOT.into()
            }
        );
        assert_eq!(
            auth.apply(
                &AuthOp::Authenticate {
                    name: ROOT.into(),
                    prefix: "abcdefghijklmnop".into(),
                    checked_revision: auth.revision - 1,
                },
                43,
            ),
            Err(Error::AuthOldRevision)
        );
        assert_eq!(auth.apply(&AuthOp::Disable, 1), Ok(TokenEffect::ClearAll));
    }

    #[test]
    fn tokens_expire_are_bounded_and_invalidated() {
        let tokens = Tokens::new(Duration::from_secs(60));
        tokens.take_effect(TokenEffect::Assign {
            token: "a.1".into(),
            user: "alice".into(),
        });
        assert_eq!(tokens.user("a.1").as_deref(), Some("alice"));
        tokens.take_effect(TokenEffect::InvalidateUser("alice".into()));
        assert_eq!(tokens.user("a.1"), None);
        let short = Tokens::new(Duration::ZERO);
        short.take_effect(TokenEffect::Assign {
            token: "b.2".into(),
            user: "bob".into(),
        });
        assert_eq!(short.user("b.2"), None);
        assert_eq!(token_index("abc.17"), Some(17));
        assert_eq!(token_index("abc"), None);
        assert_eq!(token_index("a.b.1"), None);
        let prefix = token_prefix();
        assert_eq!(prefix.len(), TOKEN_PREFIX_LEN);
        assert!(prefix.chars().all(|c| c.is_ascii_alphabetic()));
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("pw", MIN_BCRYPT_COST).unwrap();
        assert!(verify_password("pw", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("pw", "not a hash"));
    }
}
