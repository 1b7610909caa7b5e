//! Multi-version key-value logic with etcd's exact semantics: pure, no IO.
//!
//! The store revision starts at 1 and is bumped once per request that changes something
//! (every write of a Txn shares it). Each change is one *record*, addressed by
//! `(revision, sub)`; a delete writes a tombstone record. `Mvcc` keeps an in-memory index of
//! every key's versions (like etcd's `treeIndex`, but it also caches the values) and, for
//! every mutation, appends the records to persist to a [`WriteBatch`]. The caller commits
//! that batch in the same engine transaction as `last_applied`, so the index and the
//! engine never disagree after a restart: [`Mvcc::load`] rebuilds the index from the records.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use skiff_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse, compare, range_request,
    request_op, response_op,
};
use skiff_proto::mvccpb::KeyValue;

use crate::engine::{EngineError, ReadView, Table, WriteBatch};
use crate::error::{Error, Result};
use crate::lease::Lessor;

/// A store revision: a point in the key-value history.
pub type Revision = i64;
/// A lease identifier as it appears on the wire.
pub type LeaseId = i64;

const META_CURRENT_REV: &[u8] = b"mvcc/current_revision";
const META_COMPACT_REV: &[u8] = b"mvcc/compact_revision";
const RECORD_FORMAT: u8 = 1;

/// The value of one key at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredValue {
    create_revision: Revision,
    version: i64,
    value: Vec<u8>,
    lease: LeaseId,
}

/// One entry of a key's history; `value == None` is a tombstone.
#[derive(Clone, Debug)]
struct KeyVersion {
    revision: Revision,
    /// Position of this record among the revision's records.
    sub: i64,
    value: Option<Arc<StoredValue>>,
}

/// What a record looks like on disk (keyed by revision and sub-revision).
#[derive(Serialize, Deserialize)]
struct Record {
    key: Vec<u8>,
    tombstone: bool,
    create_revision: Revision,
    version: i64,
    value: Vec<u8>,
    lease: LeaseId,
}

/// The engine key of a record: big-endian `(revision, sub)` so records sort by revision.
pub fn record_key(revision: Revision, sub: i64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&(revision as u64).to_be_bytes());
    key[8..].copy_from_slice(&(sub as u64).to_be_bytes());
    key
}

/// The in-memory multi-version index plus the current and compacted revisions.
#[derive(Debug)]
pub struct Mvcc {
    index: BTreeMap<Vec<u8>, Vec<KeyVersion>>,
    current: Revision,
    /// etcd's `compactMainRev`: -1 until the first compaction, so that, as in etcd, a
    /// fresh store accepts a compaction at revision 0 (once) and a txn's range at revision
    /// -1 passes `checkRange` only until then.
    compacted: Revision,
    /// The leases and the live keys attached to each (see [`crate::lease`]).
    leases: Lessor,
}

impl Default for Mvcc {
    fn default() -> Self {
        Mvcc {
            index: BTreeMap::new(),
            current: 1,
            compacted: -1,
            leases: Lessor::default(),
        }
    }
}

/// The half-open key interval a request names, after etcd's `range_end` rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    start: Vec<u8>,
    /// `None`: only `start`. `Some(None)`: unbounded. `Some(Some(end))`: `[start, end)`.
    end: Option<Option<Vec<u8>>>,
}

impl KeyRange {
    /// Build from a request's `key` and `range_end`.
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        if range_end.is_empty() {
            KeyRange {
                start: key.to_vec(),
                end: None,
            }
        } else if range_end == [0] {
            KeyRange {
                start: key.to_vec(),
                end: Some(None),
            }
        } else {
            KeyRange {
                start: key.to_vec(),
                end: Some(Some(range_end.to_vec())),
            }
        }
    }

    fn bounds(&self) -> Option<KeyBounds<'_>> {
        match &self.end {
            None => Some((
                Bound::Included(self.start.as_slice()),
                Bound::Included(self.start.as_slice()),
            )),
            Some(None) => Some((Bound::Included(self.start.as_slice()), Bound::Unbounded)),
            Some(Some(end)) if end.as_slice() > self.start.as_slice() => Some((
                Bound::Included(self.start.as_slice()),
                Bound::Excluded(end.as_slice()),
            )),
            Some(Some(_)) => None,
        }
    }
}

type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The outcome of applying one write request: the wire response (header revision filled,
/// other header fields left for the server) and whether the store changed.
#[derive(Debug)]
pub struct Applied<T> {
    pub response: T,
    pub changed: bool,
}

/// State of one write request while it executes (a Txn's writes share one revision).
struct WriteCtx<'a> {
    batch: &'a mut WriteBatch,
    begin: Revision,
    sub: i64,
}

impl WriteCtx<'_> {
    /// The revision reads inside this request see: `begin + 1` once something was written.
    fn read_revision(&self) -> Revision {
        if self.sub > 0 {
            self.begin + 1
        } else {
            self.begin
        }
    }
}

fn header(revision: Revision) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl Mvcc {
    /// The newest revision.
    pub fn current_revision(&self) -> Revision {
        self.current
    }

    /// chaos-bugs `revision-regress`: move the revision counter.
    #[cfg(feature = "chaos-bugs")]
    pub(crate) fn chaos_set_current(&mut self, revision: Revision) {
        self.current = revision;
    }

    /// The revision at or below which history has been compacted (0: never).
    pub fn compact_revision(&self) -> Revision {
        self.compacted.max(0)
    }

    /// etcd's `compactMainRev` as HashKV reports it: -1 until the first compaction.
    pub fn compact_main_revision(&self) -> Revision {
        self.compacted
    }

    /// Number of live keys at the current revision.
    pub fn live_keys(&self) -> usize {
        self.index
            .values()
            .filter(|versions| versions.last().is_some_and(|v| v.value.is_some()))
            .count()
    }

    /// Rebuild the index from an engine view (records + meta).
    pub fn load(view: &dyn ReadView) -> std::result::Result<Mvcc, EngineError> {
        let mut mvcc = Mvcc::default();
        if let Some(raw) = view.get(Table::Meta, META_CURRENT_REV)? {
            mvcc.current = decode_i64(&raw)?;
        }
        if let Some(raw) = view.get(Table::Meta, META_COMPACT_REV)? {
            mvcc.compacted = decode_i64(&raw)?;
        }
        let mut failure = None;
        view.scan(Table::Kv, &[], None, &mut |key, value| {
            match decode_record(key, value) {
                Ok((revision, sub, record)) => mvcc.insert_loaded(revision, sub, record),
                Err(err) => {
                    failure = Some(err);
                    return false;
                }
            }
            true
        })?;
        if let Some(err) = failure {
            return Err(err);
        }
        mvcc.load_leases(view)?;
        Ok(mvcc)
    }

    fn insert_loaded(&mut self, revision: Revision, sub: i64, record: Record) {
        let value = (!record.tombstone).then(|| {
            Arc::new(StoredValue {
                create_revision: record.create_revision,
                version: record.version,
                value: record.value,
                lease: record.lease,
            })
        });
        let versions = self.index.entry(record.key).or_default();
        let entry = KeyVersion {
            revision,
            sub,
            value,
        };
        match versions.last_mut() {
            Some(last) if last.revision == revision => *last = entry,
            _ => versions.push(entry),
        }
        if revision > self.current {
            self.current = revision;
        }
    }

    /// The key's value as of `revision` (None if absent or deleted then).
    fn get_at(&self, key: &[u8], revision: Revision) -> Option<KeyValue> {
        let versions = self.index.get(key)?;
        visible(key, versions, revision)
    }

    fn check_read_revision(&self, requested: Revision, current: Revision) -> Result<Revision> {
        if requested <= 0 {
            return Ok(current);
        }
        if requested > current {
            return Err(Error::FutureRev);
        }
        if requested < self.compacted {
            return Err(Error::Compacted);
        }
        Ok(requested)
    }

    /// Serve a Range at the current revision (or at `req.revision`).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        self.range_at(req, self.current)
    }

    /// Range as seen by a request whose own current revision is `current`.
    fn range_at(&self, req: &RangeRequest, current: Revision) -> Result<RangeResponse> {
        let revision = self.check_read_revision(req.revision, current)?;
        let range = KeyRange::new(&req.key, &req.range_end);
        let sort_order = range_request::SortOrder::try_from(req.sort_order)
            .map_err(|_| Error::InvalidSortOption)?;
        let sort_target = range_request::SortTarget::try_from(req.sort_target)
            .map_err(|_| Error::InvalidSortOption)?;
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let sorted = sort_order != range_request::SortOrder::None
            || sort_target != range_request::SortTarget::Key;
        // Like etcd: with a sort order or filters, fetch everything and cut afterwards. A
        // target without an order sorts only the first `limit + 1` keys (etcd does the same).
        let fetch_all = sort_order != range_request::SortOrder::None || filtered;
        let fetch_limit = if fetch_all || req.limit <= 0 {
            usize::MAX
        } else {
            req.limit as usize + 1
        };
        let mut count: i64 = 0;
        let mut kvs = Vec::new();
        if let Some(bounds) = range.bounds() {
            for (key, versions) in self.index.range::<[u8], _>(bounds) {
                if let Some(kv) = visible(key, versions, revision) {
                    count += 1;
                    if !req.count_only && kvs.len() < fetch_limit {
                        kvs.push(kv);
                    }
                }
            }
        }
        if filtered {
            kvs.retain(|kv| {
                (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                    && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                    && (req.min_create_revision == 0
                        || kv.create_revision >= req.min_create_revision)
                    && (req.max_create_revision == 0
                        || kv.create_revision <= req.max_create_revision)
            });
        }
        if sorted {
            let order = if sort_order == range_request::SortOrder::None {
                range_request::SortOrder::Ascend
            } else {
                sort_order
            };
            let key_of = |kv: &KeyValue| -> SortKey {
                match sort_target {
                    range_request::SortTarget::Key => SortKey::Bytes(kv.key.clone()),
                    range_request::SortTarget::Version => SortKey::Int(kv.version),
                    range_request::SortTarget::Create => SortKey::Int(kv.create_revision),
                    range_request::SortTarget::Mod => SortKey::Int(kv.mod_revision),
                    range_request::SortTarget::Value => SortKey::Bytes(kv.value.clone()),
                }
            };
            // Stable in both directions: ties keep key order, as etcd's sort does.
            if order == range_request::SortOrder::Descend {
                kvs.sort_by_cached_key(|kv| std::cmp::Reverse(key_of(kv)));
            } else {
                kvs.sort_by_cached_key(key_of);
            }
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            header: header(current),
            kvs,
            more,
            count,
        })
    }

    /// Apply a Put as its own request.
    pub fn put(
        &mut self,
        req: &PutRequest,
        batch: &mut WriteBatch,
    ) -> Result<Applied<PutResponse>> {
        // A plain Put looks the lease up before anything else (etcd's applier `Put`); in a
        // txn, `checkPut` tests ignore_value/ignore_lease first (see `check_put`).
        if req.lease != 0 && !self.leases.contains(req.lease) {
            return Err(Error::LeaseNotFound);
        }
        self.check_put(req)?;
        let mut ctx = self.begin(batch);
        let response = self.put_in(&mut ctx, req);
        Ok(self.finish(ctx, response))
    }

    /// Apply a DeleteRange as its own request.
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
        batch: &mut WriteBatch,
    ) -> Result<Applied<DeleteRangeResponse>> {
        let mut ctx = self.begin(batch);
        let response = self.delete_in(&mut ctx, req);
        Ok(self.finish(ctx, response))
    }

    /// Apply a Txn: evaluate compares, check the chosen branch, then execute it in order.
    pub fn txn(
        &mut self,
        req: &TxnRequest,
        batch: &mut WriteBatch,
    ) -> Result<Applied<TxnResponse>> {
        // Like etcd's pre-check: every op of the branch that will run is validated against
        // the state before the txn, so a failing txn changes nothing.
        self.check_txn(req, self.current)?;
        let path = self.compare_path(req, self.current);
        let mut ctx = self.begin(batch);
        let response = self.txn_in(&mut ctx, req, &mut path.into_iter());
        Ok(self.finish(ctx, response))
    }

    /// Execute a Txn without any write (read-only), outside Raft.
    pub fn read_only_txn(&self, req: &TxnRequest) -> Result<TxnResponse> {
        self.check_txn(req, self.current)?;
        let mut response = self.read_only_txn_in(req)?;
        response.header = header(self.current);
        Ok(response)
    }

    fn read_only_txn_in(&self, req: &TxnRequest) -> Result<TxnResponse> {
        let succeeded = self.compares_hold(&req.compare, self.current);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range_at(r, self.current)?)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    response_op::Response::ResponseTxn(self.read_only_txn_in(t)?)
                }
                _ => return Err(Error::Internal("write op in a read-only txn".into())),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        // Like etcd, a nested txn's header stays empty; the caller fills the outer one.
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        })
    }

    /// etcd's `compareToPath`: the outcome of every compare in the txn tree that will run,
    /// in pre-order, all evaluated against the state *before* the txn (a nested txn does
    /// not see the writes of the ops before it when choosing its branch).
    fn compare_path(&self, req: &TxnRequest, revision: Revision) -> Vec<bool> {
        fn walk(mvcc: &Mvcc, req: &TxnRequest, revision: Revision, path: &mut Vec<bool>) {
            let succeeded = mvcc.compares_hold(&req.compare, revision);
            path.push(succeeded);
            let ops = if succeeded {
                &req.success
            } else {
                &req.failure
            };
            for op in ops {
                if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                    walk(mvcc, t, revision, path);
                }
            }
        }
        let mut path = Vec::new();
        walk(self, req, revision, &mut path);
        path
    }

    fn begin<'a>(&self, batch: &'a mut WriteBatch) -> WriteCtx<'a> {
        WriteCtx {
            batch,
            begin: self.current,
            sub: 0,
        }
    }

    fn finish<T: HasHeader>(&mut self, ctx: WriteCtx<'_>, mut response: T) -> Applied<T> {
        let changed = ctx.sub > 0;
        if changed {
            self.current = ctx.begin + 1;
            ctx.batch.put(
                Table::Meta,
                META_CURRENT_REV,
                self.current.to_be_bytes().to_vec(),
            );
        }
        response.set_revision(self.current);
        Applied { response, changed }
    }

    fn check_put(&self, req: &PutRequest) -> Result<()> {
        if (req.ignore_value || req.ignore_lease) && self.get_at(&req.key, self.current).is_none() {
            return Err(Error::KeyNotFound);
        }
        if req.lease != 0 && !self.leases.contains(req.lease) {
            return Err(Error::LeaseNotFound);
        }
        Ok(())
    }

    /// etcd's `checkRequests`, run twice over the ops that will execute (nested txns
    /// included): first every Put (`checkPut`), then every Range (`checkRange`), so a
    /// missing key for ignore_value is reported before a compacted read revision.
    fn check_txn(&self, req: &TxnRequest, current: Revision) -> Result<()> {
        self.for_each_op_on_path(req, current, &mut |op| match &op.request {
            Some(request_op::Request::RequestPut(p)) => self.check_put(p),
            _ => Ok(()),
        })?;
        self.for_each_op_on_path(req, current, &mut |op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => self.check_txn_range(r, current),
            _ => Ok(()),
        })
    }

    /// etcd's `checkRange`. Unlike a plain Range, where a negative revision means "current",
    /// only 0 is exempt here: a negative revision fails as compacted once anything was
    /// compacted (etcd compares it with `compactMainRev`, -1 before the first compaction).
    fn check_txn_range(&self, req: &RangeRequest, current: Revision) -> Result<()> {
        if req.revision == 0 {
            return Ok(());
        }
        if req.revision > current {
            return Err(Error::FutureRev);
        }
        if req.revision < self.compacted {
            return Err(Error::Compacted);
        }
        Ok(())
    }

    /// Visit, in order, every non-txn op of the branches the txn tree will take.
    fn for_each_op_on_path(
        &self,
        req: &TxnRequest,
        current: Revision,
        f: &mut dyn FnMut(&RequestOp) -> Result<()>,
    ) -> Result<()> {
        let succeeded = self.compares_hold(&req.compare, current);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestTxn(t)) => {
                    self.for_each_op_on_path(t, current, f)?
                }
                _ => f(op)?,
            }
        }
        Ok(())
    }

    fn compares_hold(&self, compares: &[Compare], revision: Revision) -> bool {
        compares.iter().all(|c| self.compare_holds(c, revision))
    }

    fn compare_holds(&self, cmp: &Compare, revision: Revision) -> bool {
        let range = KeyRange::new(&cmp.key, &cmp.range_end);
        let target = compare::CompareTarget::try_from(cmp.target).ok();
        let mut matched = Vec::new();
        if let Some(bounds) = range.bounds() {
            for (key, versions) in self.index.range::<[u8], _>(bounds) {
                if let Some(kv) = visible(key, versions, revision) {
                    matched.push(kv);
                }
            }
        }
        if matched.is_empty() {
            if target == Some(compare::CompareTarget::Value) {
                return false;
            }
            return compare_kv(cmp, &KeyValue::default());
        }
        matched.iter().all(|kv| compare_kv(cmp, kv))
    }

    /// Execute a txn whose branches were chosen beforehand (`path`, see `compare_path`).
    fn txn_in(
        &mut self,
        ctx: &mut WriteCtx<'_>,
        req: &TxnRequest,
        path: &mut std::vec::IntoIter<bool>,
    ) -> TxnResponse {
        let succeeded = match path.next() {
            Some(succeeded) => succeeded,
            None => self.compares_hold(&req.compare, ctx.begin),
        };
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = self.op_in(ctx, op, path);
            responses.push(ResponseOp { response });
        }
        // Like etcd, a nested txn's header stays empty; `finish` fills the outer one.
        TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        }
    }

    fn op_in(
        &mut self,
        ctx: &mut WriteCtx<'_>,
        op: &RequestOp,
        path: &mut std::vec::IntoIter<bool>,
    ) -> Option<response_op::Response> {
        Some(match op.request.as_ref()? {
            request_op::Request::RequestRange(r) => {
                let current = ctx.read_revision();
                // Revisions were checked before execution; an error here cannot happen, but
                // must not panic either: answer with an empty range.
                let response = self.range_at(r, current).unwrap_or_else(|_| RangeResponse {
                    header: header(current),
                    ..Default::default()
                });
                response_op::Response::ResponseRange(response)
            }
            request_op::Request::RequestPut(p) => {
                response_op::Response::ResponsePut(self.put_in(ctx, p))
            }
            request_op::Request::RequestDeleteRange(d) => {
                response_op::Response::ResponseDeleteRange(self.delete_in(ctx, d))
            }
            request_op::Request::RequestTxn(t) => {
                response_op::Response::ResponseTxn(self.txn_in(ctx, t, path))
            }
        })
    }

    fn put_in(&mut self, ctx: &mut WriteCtx<'_>, req: &PutRequest) -> PutResponse {
        let revision = ctx.begin + 1;
        let prev = self.get_at(&req.key, ctx.read_revision());
        let (create_revision, version) = match &prev {
            Some(kv) => (kv.create_revision, kv.version + 1),
            None => (revision, 1),
        };
        let value = match (&prev, req.ignore_value) {
            (Some(kv), true) => kv.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(kv), true) => kv.lease,
            _ => req.lease,
        };
        let stored = StoredValue {
            create_revision,
            version,
            value,
            lease,
        };
        self.write_record(ctx, &req.key, Some(stored));
        PutResponse {
            header: header(revision),
            prev_kv: if req.prev_kv { prev } else { None },
        }
    }

    fn delete_in(
        &mut self,
        ctx: &mut WriteCtx<'_>,
        req: &DeleteRangeRequest,
    ) -> DeleteRangeResponse {
        let read_revision = ctx.read_revision();
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut doomed = Vec::new();
        if let Some(bounds) = range.bounds() {
            for (key, versions) in self.index.range::<[u8], _>(bounds) {
                if let Some(kv) = visible(key, versions, read_revision) {
                    doomed.push(kv);
                }
            }
        }
        for kv in &doomed {
            self.write_record(ctx, &kv.key, None);
        }
        DeleteRangeResponse {
            header: header(ctx.read_revision()),
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        }
    }

    fn write_record(&mut self, ctx: &mut WriteCtx<'_>, key: &[u8], value: Option<StoredValue>) {
        let revision = ctx.begin + 1;
        let record = match &value {
            Some(v) => Record {
                key: key.to_vec(),
                tombstone: false,
                create_revision: v.create_revision,
                version: v.version,
                value: v.value.clone(),
                lease: v.lease,
            },
            None => Record {
                key: key.to_vec(),
                tombstone: true,
                create_revision: 0,
                version: 0,
                value: Vec::new(),
                lease: 0,
            },
        };
        ctx.batch.put(
            Table::Kv,
            record_key(revision, ctx.sub).to_vec(),
            encode_record(&record),
        );
        ctx.sub += 1;
        let versions = self.index.entry(key.to_vec()).or_default();
        // Keep the lessor's attached keys in step: detach from the key's previous lease,
        // attach to the new one.
        let old_lease = versions
            .last()
            .and_then(|v| v.value.as_ref())
            .map_or(0, |v| v.lease);
        let new_lease = value.as_ref().map_or(0, |v| v.lease);
        if old_lease != 0 {
            self.leases.detach(old_lease, key);
        }
        if new_lease != 0 {
            self.leases.attach(new_lease, key);
        }
        let entry = KeyVersion {
            revision,
            sub: ctx.sub - 1,
            value: value.map(Arc::new),
        };
        // Within one revision a key is written at most once (duplicate keys are rejected
        // before a txn is proposed), but stay correct if it happens: last write wins.
        match versions.last_mut() {
            Some(last) if last.revision == revision => *last = entry,
            _ => versions.push(entry),
        }
    }

    /// The leases (replicated lessor state).
    pub fn lessor(&self) -> &Lessor {
        &self.leases
    }

    /// Read the leases and attach every live key to its lease (after the index is built).
    fn load_leases(&mut self, view: &dyn ReadView) -> std::result::Result<(), EngineError> {
        self.leases = Lessor::load(view)?;
        for (key, versions) in &self.index {
            let lease = versions
                .last()
                .and_then(|v| v.value.as_ref())
                .map_or(0, |v| v.lease);
            if lease != 0 {
                self.leases.attach(lease, key);
            }
        }
        Ok(())
    }

    /// Apply a LeaseGrant (etcd's applier: the header carries the current revision).
    pub fn lease_grant(
        &mut self,
        req: &LeaseGrantRequest,
        batch: &mut WriteBatch,
    ) -> Result<LeaseGrantResponse> {
        let ttl = self.leases.grant(req.id, req.ttl, batch)?;
        Ok(LeaseGrantResponse {
            header: header(self.current),
            id: req.id,
            ttl,
            error: String::new(),
        })
    }

    /// Apply a LeaseRevoke: every attached key is deleted in one revision (in key order,
    /// like etcd), and the lease is removed in the same batch.
    pub fn lease_revoke(
        &mut self,
        req: &LeaseRevokeRequest,
        batch: &mut WriteBatch,
    ) -> Result<Applied<LeaseRevokeResponse>> {
        let keys: Vec<Vec<u8>> = match self.leases.get(req.id) {
            Some(lease) => lease.keys().iter().cloned().collect(),
            None => return Err(Error::LeaseNotFound),
        };
        let mut ctx = self.begin(batch);
        for key in &keys {
            if self.get_at(key, ctx.read_revision()).is_some() {
                self.write_record(&mut ctx, key, None);
            }
        }
        self.leases.remove(req.id, ctx.batch);
        let response = LeaseRevokeResponse {
            header: header(ctx.read_revision()),
        };
        Ok(self.finish(ctx, response))
    }

    /// Compact history at `revision`: for every key keep only the newest version at or
    /// below it (dropped entirely if that version is a tombstone), and delete the records.
    pub fn compact(&mut self, revision: Revision, batch: &mut WriteBatch) -> Result<()> {
        if revision <= self.compacted {
            return Err(Error::Compacted);
        }
        if revision > self.current {
            return Err(Error::FutureRev);
        }
        let mut emptied = Vec::new();
        for (key, versions) in self.index.iter_mut() {
            // Index of the newest version at or below the compaction revision.
            let Some(keep) = versions.iter().rposition(|v| v.revision <= revision) else {
                continue;
            };
            // A tombstone exactly at the compaction revision stays (until the next
            // compaction) so a watch resuming at that revision still sees the delete.
            let drop_through =
                if versions[keep].value.is_none() && versions[keep].revision < revision {
                    keep + 1
                } else {
                    keep
                };
            if drop_through == 0 {
                continue;
            }
            for removed in versions.drain(..drop_through) {
                batch.delete(
                    Table::Kv,
                    record_key(removed.revision, removed.sub).to_vec(),
                );
            }
            if versions.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.index.remove(&key);
        }
        self.compacted = revision;
        batch.put(
            Table::Meta,
            META_COMPACT_REV,
            revision.to_be_bytes().to_vec(),
        );
        Ok(())
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortKey {
    Int(i64),
    Bytes(Vec<u8>),
}

trait HasHeader {
    fn set_revision(&mut self, revision: Revision);
}

macro_rules! has_header {
    ($($t:ty),*) => {$(
        impl HasHeader for $t {
            fn set_revision(&mut self, revision: Revision) {
                self.header.get_or_insert_with(Default::default).revision = revision;
            }
        }
    )*};
}
has_header!(
    PutResponse,
    DeleteRangeResponse,
    TxnResponse,
    LeaseRevokeResponse
);

fn visible(key: &[u8], versions: &[KeyVersion], revision: Revision) -> Option<KeyValue> {
    let idx = versions.partition_point(|v| v.revision <= revision);
    let version = versions.get(idx.checked_sub(1)?)?;
    let stored = version.value.as_ref()?;
    Some(KeyValue {
        key: key.to_vec(),
        create_revision: stored.create_revision,
        mod_revision: version.revision,
        version: stored.version,
        value: stored.value.clone(),
        lease: stored.lease,
    })
}

fn compare_kv(cmp: &Compare, kv: &KeyValue) -> bool {
    use compare::TargetUnion;
    let ordering = match compare::CompareTarget::try_from(cmp.target) {
        Ok(compare::CompareTarget::Value) => {
            let wanted: &[u8] = match &cmp.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(wanted)
        }
        Ok(target) => {
            let wanted = match (&cmp.target_union, target) {
                (Some(TargetUnion::Version(v)), compare::CompareTarget::Version) => *v,
                (Some(TargetUnion::CreateRevision(v)), compare::CompareTarget::Create) => *v,
                (Some(TargetUnion::ModRevision(v)), compare::CompareTarget::Mod) => *v,
                (Some(TargetUnion::Lease(v)), compare::CompareTarget::Lease) => *v,
                _ => 0,
            };
            let actual = match target {
                compare::CompareTarget::Version => kv.version,
                compare::CompareTarget::Create => kv.create_revision,
                compare::CompareTarget::Mod => kv.mod_revision,
                compare::CompareTarget::Lease => kv.lease,
                compare::CompareTarget::Value => 0,
            };
            actual.cmp(&wanted)
        }
        // etcd's `compareKV` leaves the comparison at "equal" for an unknown target...
        Err(_) => std::cmp::Ordering::Equal,
    };
    match compare::CompareResult::try_from(cmp.result) {
        Ok(compare::CompareResult::Equal) => ordering.is_eq(),
        Ok(compare::CompareResult::NotEqual) => ordering.is_ne(),
        Ok(compare::CompareResult::Greater) => ordering.is_gt(),
        Ok(compare::CompareResult::Less) => ordering.is_lt(),
        // ...and lets an unknown result hold.
        Err(_) => true,
    }
}

fn encode_record(record: &Record) -> Vec<u8> {
    let mut out = vec![RECORD_FORMAT];
    // Serialising plain structs of integers and byte vectors cannot fail.
    out.extend(postcard::to_stdvec(record).unwrap_or_default());
    out
}

fn decode_record(
    key: &[u8],
    value: &[u8],
) -> std::result::Result<(Revision, i64, Record), EngineError> {
    let key: [u8; 16] = key
        .try_into()
        .map_err(|_| EngineError::Corrupt("record key is not 16 bytes".into()))?;
    let mut revision_bytes = [0u8; 8];
    let mut sub_bytes = [0u8; 8];
    revision_bytes.copy_from_slice(&key[..8]);
    sub_bytes.copy_from_slice(&key[8..]);
    let revision = u64::from_be_bytes(revision_bytes) as Revision;
    let sub = u64::from_be_bytes(sub_bytes) as i64;
    match value.split_first() {
        Some((&RECORD_FORMAT, rest)) => postcard::from_bytes(rest)
            .map(|record| (revision, sub, record))
            .map_err(|e| EngineError::Corrupt(format!("record at revision {revision}: {e}"))),
        _ => Err(EngineError::Corrupt(format!(
            "record at revision {revision}: unknown format"
        ))),
    }
}

/// One change in the history, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub revision: Revision,
    /// The key's value after the change; for a delete only `key` and `mod_revision`.
    pub kv: KeyValue,
    pub deleted: bool,
}

impl Change {
    /// Approximate wire size, for response budgets.
    pub fn size(&self) -> usize {
        self.kv.key.len() + self.kv.value.len() + 48
    }
}

/// Visit the changes with revision in `[from, to]` in revision order, from the persisted
/// records of a consistent engine view, until `f` returns false.
pub fn read_changes(
    view: &dyn ReadView,
    from: Revision,
    to: Revision,
    f: &mut dyn FnMut(Change) -> bool,
) -> std::result::Result<(), EngineError> {
    if to < from || to <= 0 {
        return Ok(());
    }
    let start = record_key(from.max(0), 0);
    let end = record_key(to.saturating_add(1), 0);
    let mut failure = None;
    view.scan(
        Table::Kv,
        &start,
        Some(&end),
        &mut |key, value| match decode_record(key, value) {
            Ok((revision, _, record)) => {
                let kv = if record.tombstone {
                    KeyValue {
                        key: record.key,
                        mod_revision: revision,
                        ..Default::default()
                    }
                } else {
                    KeyValue {
                        key: record.key,
                        create_revision: record.create_revision,
                        mod_revision: revision,
                        version: record.version,
                        value: record.value,
                        lease: record.lease,
                    }
                };
                f(Change {
                    revision,
                    kv,
                    deleted: record.tombstone,
                })
            }
            Err(err) => {
                failure = Some(err);
                false
            }
        },
    )?;
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

impl Mvcc {
    /// The key's value just before `revision` (a watcher's `prev_kv`); None if it did not
    /// exist or that history has been compacted away.
    pub fn value_before(&self, key: &[u8], revision: Revision) -> Option<KeyValue> {
        if revision - 1 < self.compacted {
            return None;
        }
        self.get_at(key, revision - 1)
    }

    /// Whether `key` falls in the range a request names (etcd's `range_end` rules).
    pub fn range_contains(range: &KeyRange, key: &[u8]) -> bool {
        match range.bounds() {
            Some((start, end)) => {
                let after_start = match start {
                    Bound::Included(s) => key >= s,
                    Bound::Excluded(s) => key > s,
                    Bound::Unbounded => true,
                };
                let before_end = match end {
                    Bound::Included(e) => key <= e,
                    Bound::Excluded(e) => key < e,
                    Bound::Unbounded => true,
                };
                after_start && before_end
            }
            None => false,
        }
    }
}

fn decode_i64(raw: &[u8]) -> std::result::Result<i64, EngineError> {
    let bytes: [u8; 8] = raw
        .try_into()
        .map_err(|_| EngineError::Corrupt("bad revision in meta".into()))?;
    Ok(i64::from_be_bytes(bytes))
}

/// Convenience used by the server: an op is a write if it (or a nested txn) mutates.
pub fn txn_has_writes(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(req.failure.iter())
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => txn_has_writes(t),
            _ => false,
        })
}
