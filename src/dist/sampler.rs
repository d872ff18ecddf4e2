//! torch.utils.data.DistributedSampler's shards over the loader's own epoch order.

/// Rank `rank`'s share of `order`: padded (with `pad`) by repeating its start up to a multiple
/// of `world`, then every `world`-th index from `rank` on. Without padding the shards are
/// disjoint and cover `order` exactly (for validation, where nothing may count twice).
pub fn shard(order: &[usize], rank: usize, world: usize, pad: bool) -> Vec<usize> {
    let world = world.max(1);
    let mut all = order.to_vec();
    if pad && !order.is_empty() {
        let total = order.len().div_ceil(world) * world;
        let mut i = 0;
        while all.len() < total {
            all.push(order[i % order.len()]);
            i += 1;
        }
    }
    all.into_iter().skip(rank).step_by(world).collect()
}

/// Consecutive batches of `size` (the last one dropped when short and `drop_last`).
pub fn batches(indices: &[usize], size: usize, drop_last: bool) -> Vec<Vec<usize>> {
    let size = size.max(1);
    let mut out: Vec<Vec<usize>> = indices.chunks(size).map(|c| c.to_vec()).collect();
    if drop_last && out.last().is_some_and(|b| b.len() < size) {
        out.pop();
    }
    out
}
