//! The RFC 6962 Merkle tree beside the chain: leaf and node hashes, the compact range kept
//! at ingest, proof generation over stored nodes, and proof verification (RFC 9162 §2.1).
//!
//! Pure. SHA-256, so standard transparency-log tools interoperate. Leaf `i` is the entry
//! with seq `i + 1`; its leaf data is that entry's 32-byte chain hash, which already binds
//! the seq, the previous hash, the receive time, the subject and the envelope.

use sha2::{Digest, Sha256};

/// A SHA-256 tree hash.
pub type Hash = [u8; 32];

/// A proof never has more hashes than this (a tree of 2^64 leaves needs 64).
pub const PROOF_HASHES_MAX: usize = 64;

/// SHA-256(0x00 || entry hash): the leaf hash of one entry.
pub fn leaf_hash(entry_hash: &[u8; 32]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry_hash);
    h.finalize().into()
}

/// SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, SHA-256 of no bytes.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A complete subtree: `2^level` leaves starting at leaf `index << level`. The store keeps
/// one hash per node id, written when the subtree fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError<E> {
    #[error("leaf {index} is not in a tree of {size} entries")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {old} is larger than {new}")]
    OldAfterNew { old: u64, new: u64 },
    #[error("a tree of size {size} has {have} border nodes, not {want}")]
    BorderLength { size: u64, have: usize, want: usize },
    #[error(transparent)]
    Source(E),
}

/// The roots of the maximal complete subtrees of a tree, largest first: enough to append
/// a leaf (writing the nodes it completes) and to compute the root, in O(log n).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    border: Vec<Hash>,
}

impl CompactRange {
    /// The ids of the border nodes of a tree of `size` leaves, largest first.
    pub fn border_ids(size: u64) -> Vec<NodeId> {
        (0..64u8)
            .rev()
            .filter(|level| size >> level & 1 == 1)
            .map(|level| NodeId {
                level,
                index: (size >> level) - 1,
            })
            .collect()
    }

    /// A range from its border nodes, as `border_ids(size)` names them.
    pub fn from_border<E>(size: u64, border: Vec<Hash>) -> Result<Self, ProofError<E>> {
        let want = size.count_ones() as usize;
        if border.len() != want {
            return Err(ProofError::BorderLength {
                size,
                have: border.len(),
                want,
            });
        }
        Ok(CompactRange { size, border })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; `completed` sees the leaf node and every node it completes.
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(NodeId, Hash)) {
        let index = self.size;
        completed(NodeId { level: 0, index }, leaf);
        let mut cur = leaf;
        let mut level = 0u8;
        while index >> level & 1 == 1 {
            let Some(left) = self.border.pop() else {
                break; // unreachable while the border matches the size
            };
            cur = node_hash(&left, &cur);
            level += 1;
            completed(
                NodeId {
                    level,
                    index: index >> level,
                },
                cur,
            );
        }
        self.border.push(cur);
        self.size += 1;
    }

    /// The tree's root: the border folded from the right.
    pub fn root(&self) -> Hash {
        let mut nodes = self.border.iter().rev();
        let Some(last) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// Largest power of two strictly smaller than `n` (n >= 2).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[start:end]) from stored complete-subtree nodes, hashing only along the right edge.
pub fn subtree_root<E>(
    start: u64,
    end: u64,
    node: &mut impl FnMut(NodeId) -> Result<Hash, E>,
) -> Result<Hash, E> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = n.trailing_zeros() as u8;
        return node(NodeId {
            level,
            index: start >> level,
        });
    }
    let k = split(n);
    let left = subtree_root(start, start + k, node)?;
    let right = subtree_root(start + k, end, node)?;
    Ok(node_hash(&left, &right))
}

/// RFC 6962 PATH(index, D[0:size]): the audit path of one leaf, deepest sibling first.
pub fn inclusion_proof<E>(
    index: u64,
    size: u64,
    node: &mut impl FnMut(NodeId) -> Result<Hash, E>,
) -> Result<Vec<Hash>, ProofError<E>> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(index, 0, size, node, &mut out).map_err(ProofError::Source)?;
    Ok(out)
}

fn path<E>(
    m: u64,
    start: u64,
    end: u64,
    node: &mut impl FnMut(NodeId) -> Result<Hash, E>,
    out: &mut Vec<Hash>,
) -> Result<(), E> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(m, start, start + k, node, out)?;
        out.push(subtree_root(start + k, end, node)?);
    } else {
        path(m - k, start + k, end, node, out)?;
        out.push(subtree_root(start, start + k, node)?);
    }
    Ok(())
}

/// RFC 6962 PROOF(old, D[0:new]); empty when `old` is 0 or equals `new`.
pub fn consistency_proof<E>(
    old: u64,
    new: u64,
    node: &mut impl FnMut(NodeId) -> Result<Hash, E>,
) -> Result<Vec<Hash>, ProofError<E>> {
    if old > new {
        return Err(ProofError::OldAfterNew { old, new });
    }
    let mut out = Vec::new();
    if old > 0 && old < new {
        subproof(old, 0, new, true, node, &mut out).map_err(ProofError::Source)?;
    }
    Ok(out)
}

fn subproof<E>(
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    node: &mut impl FnMut(NodeId) -> Result<Hash, E>,
    out: &mut Vec<Hash>,
) -> Result<(), E> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(subtree_root(start, end, node)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, start + k, whole, node, out)?;
        out.push(subtree_root(start + k, end, node)?);
    } else {
        subproof(m - k, start + k, end, false, node, out)?;
        out.push(subtree_root(start, start + k, node)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.3.2: does `proof` show leaf `index` with hash `leaf` in the tree `root` of `size`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size || proof.len() > PROOF_HASHES_MAX {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree `old_root` of `old` leaves is a prefix of `new_root`?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new || proof.len() > PROOF_HASHES_MAX {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty() && *old_root == empty_root();
    }
    let mut hashes: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        hashes.push(*old_root);
    }
    hashes.extend_from_slice(proof);
    let Some((first, rest)) = hashes.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *old_root && sr == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::convert::Infallible;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&blake3::hash(&i.to_be_bytes()).into()))
            .collect()
    }

    /// MTH straight from RFC 6962's recursive definition, with no stored nodes.
    fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    fn grown(n: u64) -> (CompactRange, HashMap<NodeId, Hash>) {
        let mut range = CompactRange::default();
        let mut nodes = HashMap::new();
        for l in leaves(n) {
            range.push(l, |id, h| {
                nodes.insert(id, h);
            });
        }
        (range, nodes)
    }

    #[test]
    fn the_compact_range_root_is_the_rfc_root_at_every_size() {
        let all = leaves(300);
        let (_, nodes) = grown(300);
        let mut lookup = |id: NodeId| Ok::<_, Infallible>(nodes[&id]);
        for size in 0..=300u64 {
            let want = mth(&all[..size as usize]);
            assert_eq!(grown(size).0.root(), want, "size {size}");
            assert_eq!(subtree_root(0, size, &mut lookup).unwrap(), want);
            let border: Vec<Hash> = CompactRange::border_ids(size)
                .into_iter()
                .map(|id| nodes[&id])
                .collect();
            let range = CompactRange::from_border::<Infallible>(size, border).unwrap();
            assert_eq!(range.root(), want);
        }
    }

    #[test]
    fn every_proof_up_to_130_leaves_verifies_and_a_changed_one_does_not() {
        let all = leaves(130);
        let (_, nodes) = grown(130);
        let mut lookup = |id: NodeId| Ok::<_, Infallible>(nodes[&id]);
        for size in 1..=130u64 {
            let root = mth(&all[..size as usize]);
            for index in 0..size {
                let proof = inclusion_proof(index, size, &mut lookup).unwrap();
                let leaf = all[index as usize];
                assert!(verify_inclusion(index, size, &leaf, &proof, &root));
                assert!(!verify_inclusion(
                    index,
                    size,
                    &all[0].map(|b| !b),
                    &proof,
                    &root
                ));
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0] = first.map(|b| b ^ 1);
                    assert!(!verify_inclusion(index, size, &leaf, &bad, &root));
                }
            }
            for old in 0..=size {
                let old_root = mth(&all[..old as usize]);
                let proof = consistency_proof(old, size, &mut lookup).unwrap();
                assert!(verify_consistency(old, size, &old_root, &root, &proof));
                if old > 0 && old < size {
                    let other = old_root.map(|b| b ^ 0x80);
                    assert!(!verify_consistency(old, size, &other, &root, &proof));
                }
            }
        }
    }

    #[test]
    fn the_known_answers_of_docs_format_md_section_9() {
        let data: Vec<Hash> = (0..5u8).map(|i| [i; 32]).collect();
        let (mut range, mut nodes) = (CompactRange::default(), HashMap::new());
        let mut roots = Vec::new();
        for d in &data {
            range.push(leaf_hash(d), |id, h| {
                nodes.insert(id, h);
            });
            roots.push(crate::chain::hex(&range.root()));
        }
        assert_eq!(
            roots[0],
            "7f9c9e31ac8256ca2f258583df262dbc7d6f68f2a03043d5c99a4ae5a7396ce9"
        );
        assert_eq!(
            roots[2],
            "ba8d94b7fbcecae7b81c4c80574fe24734a6917bf9c1ecd66ff3e0c34ead4620"
        );
        assert_eq!(
            roots[4],
            "85e20cac1f02fda7bcdb2fc3f908568c57018c77815f1fa361acad13994f08bf"
        );
        let mut lookup = |id: NodeId| Ok::<_, Infallible>(nodes[&id]);
        let path: Vec<String> = inclusion_proof(2, 5, &mut lookup)
            .unwrap()
            .iter()
            .map(|h| crate::chain::hex(h))
            .collect();
        assert_eq!(
            path,
            [
                "acaa04663a8547a2f70c60cc18f9378796b13c4f9a08f70d6adae662365b30c6",
                "28fb81e496897e0ce886f08602392e9239b65c659041e5202163e58ad898f444",
                "1da033bf8927ed69376d91533748494f7f5e88c20603dede2afc9bfd43d46f17"
            ]
        );
        let consistency = consistency_proof(3, 5, &mut lookup).unwrap();
        assert_eq!(
            crate::chain::hex(&consistency[0]),
            "cba8c596120bdb69debbd923d92cba948bde7c7d06a465a1bb7d98d3116038fa"
        );
        assert_eq!(consistency.len(), 4);
        // From the empty tree, only the empty root is a consistent old root.
        assert!(verify_consistency(0, 5, &empty_root(), &range.root(), &[]));
        assert!(!verify_consistency(0, 5, &[0xab; 32], &range.root(), &[]));
    }

    #[test]
    fn out_of_range_requests_are_errors_not_panics() {
        let (_, nodes) = grown(4);
        let mut lookup = |id: NodeId| nodes.get(&id).copied().ok_or(());
        assert_eq!(
            inclusion_proof(4, 4, &mut lookup),
            Err(ProofError::IndexOutOfRange { index: 4, size: 4 })
        );
        assert_eq!(
            consistency_proof(5, 4, &mut lookup),
            Err(ProofError::OldAfterNew { old: 5, new: 4 })
        );
        // A node the store lacks is the source's error.
        assert_eq!(
            inclusion_proof(0, 8, &mut lookup),
            Err(ProofError::Source(()))
        );
        assert!(!verify_inclusion(0, 0, &[0; 32], &[], &[0; 32]));
        assert!(!verify_consistency(3, 2, &[0; 32], &[0; 32], &[]));
    }
}
