//! The nodes of one pool and where a gang fits on them.
//!
//! Free GPUs are indexed in buckets by free count, for the whole pool and for every
//! topology domain, so "which nodes have at least g free" is a walk over at most
//! `max GPUs per node` buckets rather than over the nodes. Updates are O(levels).
//!
//! Placement is best-fit: a pod goes to the node with the fewest free GPUs that still
//! holds it, keeping whole nodes free for large gangs; a packed gang goes to the
//! domain with the fewest fitting nodes that still holds it, for the same reason.

use crate::model::GpuPool;

const NO_DOMAIN: u32 = u32::MAX;

/// Nodes bucketed by their free GPUs.
#[derive(Debug, Clone)]
struct FreeIndex {
    buckets: Vec<Vec<u32>>,
    free_gpus: u64,
}

impl FreeIndex {
    fn new(max_free: u32) -> Self {
        Self {
            buckets: vec![Vec::new(); max_free as usize + 1],
            free_gpus: 0,
        }
    }

    /// Empty again, for nodes of up to `max_free` free GPUs, keeping the memory.
    fn reset(&mut self, max_free: u32) {
        self.buckets.truncate(max_free as usize + 1);
        for bucket in &mut self.buckets {
            bucket.clear();
        }
        self.buckets.resize_with(max_free as usize + 1, Vec::new);
        self.free_gpus = 0;
    }

    /// Nodes with at least `gpus` free.
    fn count_at_least(&self, gpus: u32) -> u32 {
        self.buckets
            .iter()
            .skip(gpus as usize)
            .map(|b| b.len() as u32)
            .sum()
    }

    /// Best-fit: `n` nodes with at least `gpus` free, fewest free first.
    fn take_best_fit(&self, n: u32, gpus: u32, into: &mut Vec<u32>) {
        for bucket in self.buckets.iter().skip(gpus as usize) {
            for &node in bucket {
                if into.len() as u32 == n {
                    return;
                }
                into.push(node);
            }
        }
    }

    fn members(&self) -> impl Iterator<Item = u32> + '_ {
        self.buckets.iter().flatten().copied()
    }
}

fn index_insert(ix: &mut FreeIndex, slots: &mut [u32], slot: usize, node: u32, free: u32) {
    let bucket = &mut ix.buckets[free as usize];
    slots[slot] = bucket.len() as u32;
    bucket.push(node);
    ix.free_gpus += u64::from(free);
}

fn index_remove(
    ix: &mut FreeIndex,
    slots: &mut [u32],
    stride: usize,
    k: usize,
    node: u32,
    free: u32,
) {
    let pos = slots[node as usize * stride + k] as usize;
    let bucket = &mut ix.buckets[free as usize];
    debug_assert_eq!(bucket[pos], node);
    bucket.swap_remove(pos);
    if let Some(&moved) = bucket.get(pos) {
        slots[moved as usize * stride + k] = pos as u32;
    }
    ix.free_gpus -= u64::from(free);
}

/// Why a gang does not fit now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Not enough nodes in the pool with enough free GPUs.
    Capacity { free_gpus: u64, fitting_nodes: u32 },
    /// Enough in the pool, but not inside one domain of the pack level.
    Topology,
}

/// Where a gang fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fit {
    /// Distinct nodes, in rank order.
    pub nodes: Vec<u32>,
    /// The domain (of the pack level) they share, if packed.
    pub domain: Option<u32>,
}

/// What a pass needs to know about a pool's nodes that no job changes: capacities,
/// topology domains, rank order and the largest gangs that could ever fit. Built once
/// per pool and shared by passes while the pool's nodes stay the same.
#[derive(Debug, Clone)]
pub(crate) struct PoolLayout {
    levels: usize,
    max_gpus: u32,
    /// GPUs usable by admitted jobs: allocatable less unmanaged.
    capacity: Vec<u32>,
    schedulable: Vec<bool>,
    /// `[node * levels + level]` → domain id, or `NO_DOMAIN`.
    domain: Vec<u32>,
    /// `[level][domain]` → value, domains sorted by value.
    domain_names: Vec<Vec<String>>,
    /// Node → its place in topology order (outermost domain, …, name).
    rank: Vec<u32>,
    /// `[level + 1][gpus]` → most schedulable nodes with that capacity (in one
    /// domain of the level; `[0]` = the whole pool).
    max_nodes: Vec<Vec<u32>>,
    /// GPUs of schedulable nodes usable by admitted jobs.
    capacity_gpus: u64,
}

impl PoolLayout {
    /// Lay out the nodes of `pool`.
    pub fn new(pool: &GpuPool) -> Self {
        let levels = pool.topology_levels.len();
        let n = pool.nodes.len();
        let capacity: Vec<u32> = pool
            .nodes
            .iter()
            .map(|node| node.gpus.saturating_sub(node.unmanaged_gpus))
            .collect();
        let max_gpus = capacity.iter().copied().max().unwrap_or(0);
        let schedulable: Vec<bool> = pool.nodes.iter().map(|node| node.schedulable).collect();

        let mut domain = vec![NO_DOMAIN; n * levels];
        let mut domain_names = Vec::with_capacity(levels);
        for (l, level) in pool.topology_levels.iter().enumerate() {
            let mut names: Vec<&str> = pool
                .nodes
                .iter()
                .filter_map(|node| node.topology.get(level).map(String::as_str))
                .collect();
            names.sort_unstable();
            names.dedup();
            for (i, node) in pool.nodes.iter().enumerate() {
                if let Some(value) = node.topology.get(level) {
                    let id = names
                        .binary_search(&value.as_str())
                        .expect("every value was collected above");
                    domain[i * levels + l] = id as u32;
                }
            }
            domain_names.push(names.into_iter().map(str::to_owned).collect::<Vec<_>>());
        }

        // Topology order compares domain values level by level, a node without a
        // domain reading as "" (so it ties with a domain named ""), then names. Domain
        // ids are already in value order, so compare small numbers instead of strings:
        // 0 for "" or no domain, the others above it.
        let mut keys = vec![0u32; n * levels];
        for l in 0..levels {
            let empty_named = domain_names[l].first().is_some_and(String::is_empty);
            for i in 0..n {
                let d = domain[i * levels + l];
                keys[i * levels + l] = match d {
                    NO_DOMAIN => 0,
                    d if empty_named => d,
                    d => d + 1,
                };
            }
        }
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            keys[a * levels..(a + 1) * levels]
                .cmp(&keys[b * levels..(b + 1) * levels])
                .then_with(|| pool.nodes[a].name.cmp(&pool.nodes[b].name))
        });
        let mut rank = vec![0; n];
        for (r, &node) in order.iter().enumerate() {
            rank[node as usize] = r as u32;
        }

        let mut max_nodes = Vec::with_capacity(levels + 1);
        max_nodes.push(at_least_counts(
            (0..n).filter(|&i| schedulable[i]).map(|i| capacity[i]),
            max_gpus,
        ));
        for l in 0..levels {
            // Per domain, how many schedulable nodes have each capacity; then the
            // best domain for each size.
            let width = max_gpus as usize + 2;
            let mut counts = vec![0u32; domain_names[l].len() * width];
            for i in (0..n).filter(|&i| schedulable[i]) {
                let d = domain[i * levels + l];
                if d != NO_DOMAIN {
                    counts[d as usize * width + capacity[i].min(max_gpus) as usize] += 1;
                }
            }
            let mut best = vec![0u32; max_gpus as usize + 1];
            for per_domain in counts.chunks_mut(width) {
                for g in (0..=max_gpus as usize).rev() {
                    per_domain[g] += per_domain[g + 1];
                }
                for (b, c) in best.iter_mut().zip(per_domain.iter()) {
                    *b = (*b).max(*c);
                }
            }
            max_nodes.push(best);
        }
        let capacity_gpus = (0..n)
            .filter(|&i| schedulable[i])
            .map(|i| u64::from(capacity[i]))
            .sum();

        Self {
            levels,
            max_gpus,
            capacity,
            schedulable,
            domain,
            domain_names,
            rank,
            max_nodes,
            capacity_gpus,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.capacity.len()
    }
}

/// The free-GPU indexes of a pool's nodes, kept between passes so their memory is
/// reused; [`PoolNodes`] fills them afresh.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeBuffers {
    used: Vec<u32>,
    indexed: Vec<bool>,
    pool_index: Option<FreeIndex>,
    domain_index: Vec<Vec<FreeIndex>>,
    slots: Vec<u32>,
}

/// The nodes of one pool with their free GPUs.
#[derive(Debug, Clone)]
pub(crate) struct PoolNodes<'l> {
    layout: &'l PoolLayout,
    levels: usize,
    max_gpus: u32,
    /// GPUs held by admitted jobs.
    used: Vec<u32>,
    /// In the free indexes: schedulable and not reserved.
    indexed: Vec<bool>,
    pool_index: FreeIndex,
    /// `[level][domain]`.
    domain_index: Vec<Vec<FreeIndex>>,
    /// `[node * (levels + 1) + k]`: position in index k (0 = pool, 1.. = level).
    slots: Vec<u32>,
}

impl<'l> PoolNodes<'l> {
    /// Index the nodes of `layout`, all free.
    #[cfg(test)]
    pub fn new(layout: &'l PoolLayout) -> Self {
        Self::reusing(layout, NodeBuffers::default())
    }

    /// Index the nodes of `layout`, all free, in the memory of an earlier pass.
    /// Nodes enter the indexes in node order, as in a fresh index, so the result
    /// is the same whatever the buffers held.
    pub fn reusing(layout: &'l PoolLayout, buffers: NodeBuffers) -> Self {
        let n = layout.len();
        let levels = layout.levels;
        let max_gpus = layout.max_gpus;
        let NodeBuffers {
            mut used,
            mut indexed,
            pool_index,
            mut domain_index,
            mut slots,
        } = buffers;
        used.clear();
        used.resize(n, 0);
        indexed.clear();
        indexed.resize(n, false);
        slots.clear();
        slots.resize(n * (levels + 1), 0);
        let mut pool_index = pool_index.unwrap_or_else(|| FreeIndex::new(max_gpus));
        pool_index.reset(max_gpus);
        domain_index.truncate(levels);
        domain_index.resize_with(levels, Vec::new);
        for (ixs, names) in domain_index.iter_mut().zip(&layout.domain_names) {
            ixs.truncate(names.len());
            for ix in ixs.iter_mut() {
                ix.reset(max_gpus);
            }
            ixs.resize_with(names.len(), || FreeIndex::new(max_gpus));
        }
        let mut nodes = Self {
            layout,
            levels,
            max_gpus,
            used,
            indexed,
            pool_index,
            domain_index,
            slots,
        };
        for node in 0..n as u32 {
            if layout.schedulable[node as usize] {
                nodes.include(node);
            }
        }
        nodes
    }

    /// Give the memory back for the next pass.
    pub fn into_buffers(self) -> NodeBuffers {
        NodeBuffers {
            used: self.used,
            indexed: self.indexed,
            pool_index: Some(self.pool_index),
            domain_index: self.domain_index,
            slots: self.slots,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.layout.len()
    }

    /// Free GPUs of a node.
    pub fn free(&self, node: u32) -> u32 {
        let i = node as usize;
        self.layout.capacity[i].saturating_sub(self.used[i])
    }

    /// Free GPUs on nodes new work may use (schedulable, not reserved).
    pub fn free_gpus(&self) -> u64 {
        self.pool_index.free_gpus
    }

    /// GPUs of schedulable nodes usable by admitted jobs.
    pub fn capacity_gpus(&self) -> u64 {
        self.layout.capacity_gpus
    }

    /// Free GPUs of schedulable nodes, reserved or not.
    pub fn free_gpus_schedulable(&self) -> u64 {
        (0..self.len() as u32)
            .filter(|&i| self.layout.schedulable[i as usize])
            .map(|i| u64::from(self.free(i)))
            .sum()
    }

    /// The value of a node's domain at a level.
    pub fn domain_name(&self, level: usize, domain: u32) -> &str {
        &self.layout.domain_names[level][domain as usize]
    }

    /// Most schedulable nodes that could ever hold `gpus` each (in one domain of
    /// `level` if given).
    pub fn max_nodes(&self, gpus: u32, level: Option<usize>) -> u32 {
        if gpus > self.max_gpus {
            return 0;
        }
        self.layout.max_nodes[level.map_or(0, |l| l + 1)][gpus as usize]
    }

    fn set_used(&mut self, node: u32, used: u32) {
        let indexed = self.indexed[node as usize];
        if indexed {
            self.exclude(node);
        }
        self.used[node as usize] = used;
        if indexed {
            self.include(node);
        }
    }

    /// A job takes `gpus` on the node.
    pub fn take(&mut self, node: u32, gpus: u32) {
        let used = self.used[node as usize] + gpus;
        self.set_used(node, used);
    }

    /// A job gives back `gpus` on the node.
    pub fn give_back(&mut self, node: u32, gpus: u32) {
        let used = self.used[node as usize].saturating_sub(gpus);
        self.set_used(node, used);
    }

    /// Take the node out of the free indexes (reserved, or being updated).
    pub fn exclude(&mut self, node: u32) {
        let i = node as usize;
        if !self.indexed[i] {
            return;
        }
        let free = self.free(node);
        let stride = self.levels + 1;
        index_remove(&mut self.pool_index, &mut self.slots, stride, 0, node, free);
        for l in 0..self.levels {
            let d = self.layout.domain[i * self.levels + l];
            if d != NO_DOMAIN {
                let ix = &mut self.domain_index[l][d as usize];
                index_remove(ix, &mut self.slots, stride, l + 1, node, free);
            }
        }
        self.indexed[i] = false;
    }

    /// Put a schedulable node back into the free indexes.
    pub fn include(&mut self, node: u32) {
        let i = node as usize;
        if self.indexed[i] || !self.layout.schedulable[i] {
            return;
        }
        let free = self.free(node);
        let stride = self.levels + 1;
        index_insert(
            &mut self.pool_index,
            &mut self.slots,
            i * stride,
            node,
            free,
        );
        for l in 0..self.levels {
            let d = self.layout.domain[i * self.levels + l];
            if d != NO_DOMAIN {
                let ix = &mut self.domain_index[l][d as usize];
                index_insert(ix, &mut self.slots, i * stride + l + 1, node, free);
            }
        }
        self.indexed[i] = true;
    }

    /// Where `n` pods of `gpus` GPUs fit now, on distinct nodes, inside one domain of
    /// `level` if given.
    pub fn find(&self, n: u32, gpus: u32, level: Option<usize>) -> Result<Fit, Miss> {
        let capacity_miss = || Miss::Capacity {
            free_gpus: self.pool_index.free_gpus,
            fitting_nodes: if gpus > self.max_gpus {
                0
            } else {
                self.pool_index.count_at_least(gpus)
            },
        };
        // Fast rejection: not enough free GPUs in the whole pool.
        if gpus > self.max_gpus || self.pool_index.free_gpus < u64::from(n) * u64::from(gpus) {
            return Err(capacity_miss());
        }
        let mut nodes = Vec::with_capacity(n as usize);
        let domain = match level {
            None => {
                if self.pool_index.count_at_least(gpus) < n {
                    return Err(capacity_miss());
                }
                self.pool_index.take_best_fit(n, gpus, &mut nodes);
                None
            }
            Some(l) => {
                // Best-fit among domains: the one with the fewest fitting nodes.
                let best = self.domain_index[l]
                    .iter()
                    .enumerate()
                    .filter(|(_, ix)| ix.free_gpus >= u64::from(n) * u64::from(gpus))
                    .map(|(d, ix)| (ix.count_at_least(gpus), ix.free_gpus, d))
                    .filter(|(count, _, _)| *count >= n)
                    .min();
                let Some((_, _, d)) = best else {
                    return Err(if self.pool_index.count_at_least(gpus) < n {
                        capacity_miss()
                    } else {
                        Miss::Topology
                    });
                };
                self.domain_index[l][d].take_best_fit(n, gpus, &mut nodes);
                Some(d as u32)
            }
        };
        nodes.sort_unstable_by_key(|&node| self.layout.rank[node as usize]);
        Ok(Fit { nodes, domain })
    }

    /// The nodes to reserve for a gang that cannot start: among nodes that could
    /// ever hold a pod, the `n` (in one domain of `level`) that already have the
    /// most of what a pod needs (Σ min(free, gpus) largest), ties to the lowest
    /// domain then node. Deterministic, and no worse next pass once nothing new
    /// lands on them, which is what makes the reservation drain.
    pub fn reservation(&self, n: u32, gpus: u32, level: Option<usize>) -> Option<Vec<u32>> {
        let pick = |members: &mut dyn Iterator<Item = u32>| -> Option<(u64, Vec<u32>)> {
            let mut scored: Vec<(u32, u32)> = members
                .filter(|&node| self.layout.capacity[node as usize] >= gpus)
                .map(|node| (self.free(node).min(gpus), node))
                .collect();
            if (scored.len() as u32) < n {
                return None;
            }
            scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.truncate(n as usize);
            let metric = scored.iter().map(|(s, _)| u64::from(*s)).sum();
            Some((metric, scored.into_iter().map(|(_, node)| node).collect()))
        };
        let mut nodes = match level {
            None => pick(&mut self.pool_index.members())?.1,
            Some(l) => {
                let mut best: Option<(u64, Vec<u32>)> = None;
                for ix in &self.domain_index[l] {
                    if let Some((metric, nodes)) = pick(&mut ix.members())
                        && best.as_ref().is_none_or(|(m, _)| metric > *m)
                    {
                        best = Some((metric, nodes));
                    }
                }
                best?.1
            }
        };
        nodes.sort_unstable_by_key(|&node| self.layout.rank[node as usize]);
        Some(nodes)
    }
}

/// `[g]` → how many of `capacities` are at least `g`, for g in 0..=max.
fn at_least_counts(capacities: impl Iterator<Item = u32>, max: u32) -> Vec<u32> {
    let mut counts = vec![0u32; max as usize + 2];
    for c in capacities {
        counts[c.min(max) as usize] += 1;
    }
    for g in (0..=max as usize).rev() {
        counts[g] += counts[g + 1];
    }
    counts.truncate(max as usize + 1);
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;

    /// Two racks of four 8-GPU nodes.
    fn h100() -> GpuPool {
        GpuPool::new("h100", "H100-80GB").racks(2, 4, 8)
    }

    fn names(pool: &GpuPool, nodes: &[u32]) -> Vec<String> {
        nodes
            .iter()
            .map(|&n| pool.nodes[n as usize].name.clone())
            .collect()
    }

    #[test]
    fn a_small_pod_goes_to_the_fullest_node_that_still_holds_it() {
        let pool = h100();
        let layout = PoolLayout::new(&pool);
        let mut nodes = PoolNodes::new(&layout);
        nodes.take(5, 6); // h100-r1-n1 has 2 free
        nodes.take(2, 4); // h100-r0-n2 has 4 free
        let fit = nodes.find(1, 2, None).unwrap();
        assert_eq!(names(&pool, &fit.nodes), ["h100-r1-n1"]);
        let fit = nodes.find(1, 3, None).unwrap();
        assert_eq!(names(&pool, &fit.nodes), ["h100-r0-n2"]);
    }

    #[test]
    fn a_gang_uses_distinct_nodes_in_rank_order() {
        let pool = h100();
        let layout = PoolLayout::new(&pool);
        let nodes = PoolNodes::new(&layout);
        let fit = nodes.find(8, 8, None).unwrap();
        assert_eq!(
            names(&pool, &fit.nodes),
            [
                "h100-r0-n0",
                "h100-r0-n1",
                "h100-r0-n2",
                "h100-r0-n3",
                "h100-r1-n0",
                "h100-r1-n1",
                "h100-r1-n2",
                "h100-r1-n3"
            ]
        );
        assert_eq!(
            nodes.find(9, 8, None),
            Err(Miss::Capacity {
                free_gpus: 64,
                fitting_nodes: 8
            })
        );
    }

    #[test]
    fn a_packed_gang_takes_the_tightest_rack_that_holds_it() {
        let pool = h100();
        let layout = PoolLayout::new(&pool);
        let mut nodes = PoolNodes::new(&layout);
        nodes.take(0, 8); // rack r0 has 3 whole nodes left, r1 has 4
        let fit = nodes.find(3, 8, Some(1)).unwrap();
        assert_eq!(fit.domain.map(|d| nodes.domain_name(1, d)), Some("r0"));
        assert_eq!(
            names(&pool, &fit.nodes),
            ["h100-r0-n1", "h100-r0-n2", "h100-r0-n3"]
        );
    }

    #[test]
    fn free_gpus_spread_over_racks_do_not_make_a_packed_gang_fit() {
        let pool = h100();
        let layout = PoolLayout::new(&pool);
        let mut nodes = PoolNodes::new(&layout);
        nodes.take(0, 8);
        nodes.take(4, 8); // three whole nodes left in each rack
        assert_eq!(nodes.find(4, 8, Some(1)), Err(Miss::Topology));
        assert!(nodes.find(4, 8, None).is_ok());
    }

    #[test]
    fn unschedulable_and_reserved_nodes_take_no_new_work() {
        let pool = GpuPool::new("a100", "A100-40GB")
            .node(Node::new("a", 8).unschedulable())
            .node(Node::new("b", 8))
            .node(Node::new("c", 8).unmanaged(6));
        let layout = PoolLayout::new(&pool);
        let mut nodes = PoolNodes::new(&layout);
        assert_eq!(nodes.free_gpus(), 10);
        assert_eq!(nodes.max_nodes(8, None), 1);
        nodes.exclude(1);
        assert_eq!(nodes.find(1, 4, None).map_err(|_| ()), Err(()));
        assert_eq!(names(&pool, &nodes.find(1, 2, None).unwrap().nodes), ["c"]);
        nodes.include(1);
        assert_eq!(names(&pool, &nodes.find(1, 4, None).unwrap().nodes), ["b"]);
    }

    #[test]
    fn the_reservation_picks_the_nodes_closest_to_holding_the_gang() {
        let pool = h100();
        let layout = PoolLayout::new(&pool);
        let mut nodes = PoolNodes::new(&layout);
        for node in 0..8 {
            nodes.take(node, 8);
        }
        nodes.give_back(6, 4);
        nodes.give_back(7, 8);
        nodes.give_back(1, 6);
        // Two whole nodes wanted in one rack: r1 has 8 + 4 of 16, r0 has 6 + 0.
        let reserved = nodes.reservation(2, 8, Some(1)).unwrap();
        assert_eq!(names(&pool, &reserved), ["h100-r1-n2", "h100-r1-n3"]);
        // Anywhere: the whole node and the one with 6 free.
        let reserved = nodes.reservation(2, 8, None).unwrap();
        assert_eq!(names(&pool, &reserved), ["h100-r0-n1", "h100-r1-n3"]);
        assert_eq!(nodes.reservation(5, 8, Some(1)), None);
    }

    #[test]
    fn updates_keep_the_buckets_consistent() {
        let pool = h100();
        let layout = PoolLayout::new(&pool);
        let mut nodes = PoolNodes::new(&layout);
        for round in 0..50u32 {
            let node = (round * 7) % 8;
            if nodes.free(node) >= 3 {
                nodes.take(node, 3);
            } else {
                nodes.give_back(node, 5);
            }
            let total: u64 = (0..8).map(|n| u64::from(nodes.free(n))).sum();
            assert_eq!(nodes.free_gpus(), total);
            let whole = (0..8).filter(|&n| nodes.free(n) == 8).count() as u32;
            assert_eq!(nodes.pool_index.count_at_least(8), whole);
        }
    }
}
