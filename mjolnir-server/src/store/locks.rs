//! Which advisory locks a commit takes.

use super::Resolved;
use std::collections::BTreeMap;

/// The lock of one key: a 32-bit FNV-1a hash of its space and primary key.
///
/// The hash must be the same in every instance and every build, so it is spelled out here
/// rather than taken from `std`'s hasher, whose algorithm may change between releases.
pub fn lock_hash(space: &str, pk: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in space.bytes().chain([0]).chain(pk.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}

/// The locks for a commit, in the order they must be taken (ascending hash): exclusive for
/// written keys, shared for keys only read. Two keys with one hash share one lock, taken
/// exclusively if either needs it.
pub fn plan<'a>(
    reads: impl IntoIterator<Item = &'a Resolved>,
    writes: impl IntoIterator<Item = &'a Resolved>,
) -> (Vec<i32>, Vec<bool>) {
    let mut locks: BTreeMap<i32, bool> = BTreeMap::new();
    for r in reads {
        locks.entry(lock_hash(&r.space, &r.pk)).or_insert(false);
    }
    for w in writes {
        locks.insert(lock_hash(&w.space, &w.pk), true);
    }
    locks.into_iter().unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_builds() {
        // Changing these values would let two instances of different builds lock
        // different things for one key.
        assert_eq!(lock_hash("users", "alice"), 0xc0d0_de53_u32 as i32);
        assert_eq!(lock_hash("", ""), 0x050c_5d1f);
        assert_ne!(lock_hash("users", "alice"), lock_hash("user", "salice"));
    }
}
