//! Reasons a cycle builds once and shares between the classes that get them:
//! those of blocked pools, those of groups no pool takes, and those of lone
//! groups, found once for each state of the pools.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::ids::RunId;
use crate::resources::Resources;
use crate::selector::PoolSelector;

use super::{Block, FastMap, FxHasher, Reason, Snapshot};

/// Reasons built once in a cycle and shared by the classes that get them,
/// and the blocks of the pools [`super::place`] looks at, kept from call to call.
pub(super) struct ReasonCache {
    pub(super) shared: SharedReasons,
    pub(super) blocks: Vec<(usize, Block)>,
}

impl ReasonCache {
    pub(super) fn new(snapshot: &Snapshot) -> ReasonCache {
        ReasonCache {
            shared: SharedReasons {
                holders: snapshot
                    .pools
                    .values()
                    .filter_map(|p| p.reserved.map(|(run, _)| run))
                    .collect(),
                ..SharedReasons::default()
            },
            blocks: Vec::new(),
        }
    }

    /// The cycle charged pools, or reserved room in them for `holder`.
    pub(super) fn pools_changed(&mut self, holder: Option<RunId>) {
        self.shared.state += 1;
        self.shared.holders.extend(holder);
    }
}

/// Reasons of blocked pools, by position of the pool in the snapshot, block
/// and need. Such a reason reads of its pool only its name, capacity and
/// `max_workers` besides the block.
pub(super) type PoolReasons = FastMap<(usize, Block, Resources), Arc<Reason>>;

/// Reasons built once in a cycle and shared by the classes that get them.
#[derive(Default)]
pub(super) struct SharedReasons {
    /// Reasons of blocked pools, by position of the pool in the snapshot, block
    /// and need: the many classes that find the same pools full share them.
    pub(super) pools: PoolReasons,
    /// Reasons of blocked pools the incremental controller kept from its last
    /// cycle, taken into `pools` as the cycle finds them again.
    pub(super) kept: PoolReasons,
    /// The reason of a group that no pool takes, with no group of its gang
    /// placed before it, by need, the group's index and selector when it has
    /// partners, and the blocks of its pools (positions and blocks, all of the
    /// pool's alone): the classes that differ only in what the reason does not
    /// read (tenant, level) share it, so re-evaluating one that still waits
    /// copies a pointer. Kept by [`group_blocks_hash`], so that finding one
    /// builds no key.
    pub(super) groups: FastMap<u64, Vec<(GroupBlocks, Arc<Reason>)>>,
    /// The reasons of lone groups of tenants with no per-pool limits, by
    /// [`LoneKey`], with the rows of [`super::Masks::matching`] they were found for.
    pub(super) lone: FastMap<LoneKey, Vec<LoneReason>>,
    /// Counts the changes to pools in the cycle: a lone group's reason holds
    /// for one state of the pools.
    pub(super) state: u64,
    /// Runs that hold room in a pool: a pool's reservation does not block its
    /// holder, so their reasons are their own.
    pub(super) holders: Vec<RunId>,
}

/// A lone group's need, whether any pool would do, the [`row_hash`] of its
/// row of [`super::Masks::matching`] and the state of the pools.
pub(super) type LoneKey = (Resources, bool, u64, u64);

/// A lone group's row of [`super::Masks::matching`] and its reason.
type LoneReason = (Vec<Option<bool>>, Arc<Reason>);

impl SharedReasons {
    /// The reason kept for a lone group of `key` and `row`.
    pub(super) fn lone(&self, key: &LoneKey, row: &[Option<bool>]) -> Option<&Arc<Reason>> {
        self.lone
            .get(key)?
            .iter()
            .find_map(|(r, reason)| (r.as_slice() == row).then_some(reason))
    }

    pub(super) fn keep_lone(&mut self, key: LoneKey, row: &[Option<bool>], reason: &Arc<Reason>) {
        self.lone
            .entry(key)
            .or_default()
            .push((row.to_vec(), Arc::clone(reason)));
    }

    /// The reason kept for a group of need `need`, `gang` (its index and
    /// selector in a gang) and `blocks`, whose [`group_blocks_hash`] is `key`.
    pub(super) fn group(
        &self,
        key: u64,
        need: &Resources,
        gang: Option<(u32, &PoolSelector)>,
        blocks: &[(usize, Block)],
    ) -> Option<&Arc<Reason>> {
        self.groups
            .get(&key)?
            .iter()
            .find_map(|((n, g, b), reason)| {
                (n == need && g.as_ref().map(|(i, s)| (*i, s)) == gang && b.as_slice() == blocks)
                    .then_some(reason)
            })
    }
}

/// A hash of a row of [`super::Masks::matching`], two bits a pool.
pub(super) fn row_hash(row: &[Option<bool>]) -> u64 {
    let mut h = FxHasher::default();
    h.write_usize(row.len());
    for chunk in row.chunks(32) {
        let word = chunk.iter().fold(0u64, |w, m| {
            (w << 2)
                | match m {
                    None => 0,
                    Some(false) => 1,
                    Some(true) => 2,
                }
        });
        h.write_u64(word);
    }
    h.finish()
}

/// A hash of a [`GroupBlocks`]: the blocks are hashed each on its own and
/// summed, which costs less than one chain over all of them.
pub(super) fn group_blocks_hash(
    need: &Resources,
    gang: Option<(u32, &PoolSelector)>,
    blocks: &[(usize, Block)],
) -> u64 {
    let mut h = FxHasher::default();
    need.hash(&mut h);
    gang.hash(&mut h);
    let sum = blocks.iter().fold(0u64, |sum, b| {
        let mut hb = FxHasher::default();
        b.hash(&mut hb);
        sum.wrapping_add(hb.finish())
    });
    h.write_u64(sum);
    h.finish()
}

/// A group's need, its index and selector in a gang, and for each pool in its
/// way, the pool's position and block.
pub(super) type GroupBlocks = (Resources, Option<(u32, PoolSelector)>, Vec<(usize, Block)>);
