//! Range arithmetic and the `DELETE`/`INSERT` ops that move a client's window from what
//! it has to what the list now holds.

use super::request::{Op, Range};
use crate::types::RoomId;

/// The parts of `a` not covered by any range in `b`.
pub fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    for &(start, end) in a {
        let mut pieces = vec![(start, end)];
        for &(bs, be) in b {
            pieces = pieces
                .into_iter()
                .flat_map(|(s, e)| {
                    let mut keep = Vec::with_capacity(2);
                    if be < s || bs > e {
                        keep.push((s, e));
                    } else {
                        if bs > s {
                            keep.push((s, bs - 1));
                        }
                        if be < e {
                            keep.push((be + 1, e));
                        }
                    }
                    keep
                })
                .collect();
        }
        out.extend(pieces);
    }
    out
}

/// Appends the ops that turn `old` (what the client holds at `start..`) into `new` (what
/// the list holds there now; both at most `len` long), and leaves `old` equal to `new`.
///
/// A single move, the common case, gives one `DELETE`+`INSERT` pair: up or down within
/// the window, in from outside (the room pushed off the end is deleted), or out of it
/// (the room that slides into the last slot is inserted). Several changes at once give
/// one pair per change.
pub fn diff(start: usize, len: usize, old: &mut Vec<RoomId>, new: &[RoomId], ops: &mut Vec<Op>) {
    // Each pass fixes the first differing slot; at most one pass per slot and room.
    for _ in 0..(2 * len + 2) {
        let Some(k) = (0..old.len().max(new.len())).find(|&i| old.get(i) != new.get(i)) else {
            return;
        };
        let departing = old.get(k).filter(|r| !new.contains(r)).cloned();
        if let Some(gone) = departing {
            ops.push(Op::Delete { index: start + k });
            old.retain(|r| *r != gone);
            // The slot freed at the end is taken by whatever the list now has there.
            if let Some(j) = (k..new.len()).find(|&j| old.get(j) != new.get(j)) {
                if !old.contains(&new[j]) {
                    ops.push(Op::Insert {
                        index: start + j,
                        room_id: new[j].clone(),
                    });
                    old.insert(j, new[j].clone());
                }
            }
            continue;
        }
        let Some(target) = new.get(k).cloned() else {
            ops.push(Op::Delete { index: start + k });
            old.remove(k);
            continue;
        };
        match old.iter().position(|r| *r == target) {
            Some(from) => {
                // Either `target` moved up to k, or old[k] moved down: emit the longer
                // move, which is the one that actually happened.
                let down_to = new.iter().position(|r| *r == old[k]).unwrap_or(k);
                if down_to - k > from - k {
                    let moved = old.remove(k);
                    ops.push(Op::Delete { index: start + k });
                    ops.push(Op::Insert {
                        index: start + down_to,
                        room_id: moved.clone(),
                    });
                    old.insert(down_to.min(old.len()), moved);
                } else {
                    old.remove(from);
                    ops.push(Op::Delete {
                        index: start + from,
                    });
                    ops.push(Op::Insert {
                        index: start + k,
                        room_id: target.clone(),
                    });
                    old.insert(k, target);
                }
            }
            None => {
                // A room new to the window takes the place of one that left it further
                // down (one pair for one move), else pushes the last one out (or fills
                // a gap).
                let from = old
                    .iter()
                    .skip(k)
                    .position(|r| !new.contains(r))
                    .map_or(old.len().min(len.saturating_sub(1)), |i| k + i);
                ops.push(Op::Delete {
                    index: start + from,
                });
                if from < old.len() {
                    old.remove(from);
                }
                ops.push(Op::Insert {
                    index: start + k,
                    room_id: target.clone(),
                });
                old.insert(k.min(old.len()), target);
            }
        }
        old.truncate(len);
    }
    debug_assert!(false, "window diff did not converge");
    old.clear();
    old.extend_from_slice(new);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<RoomId> {
        s.chars().map(|c| RoomId::from(c.to_string())).collect()
    }

    /// Applies ops the way a client does (DELETE then INSERT shifting toward the gap).
    fn apply(start: usize, client: &mut Vec<RoomId>, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Delete { index } => {
                    if index - start < client.len() {
                        client.remove(index - start);
                    }
                }
                Op::Insert { index, room_id } => client.insert(index - start, room_id.clone()),
                _ => unreachable!(),
            }
        }
    }

    fn check(start: usize, len: usize, before: &str, after: &str) -> Vec<Op> {
        let mut old = ids(before);
        let new = ids(after);
        let mut ops = Vec::new();
        diff(start, len, &mut old, &new, &mut ops);
        assert_eq!(old, new);
        let mut client = ids(before);
        apply(start, &mut client, &ops);
        client.truncate(len);
        assert_eq!(
            client, new,
            "a client applying {ops:?} ends where the server is"
        );
        ops
    }

    #[test]
    fn a_room_moving_to_the_top_is_one_delete_insert_pair() {
        let ops = check(0, 5, "abcde", "dabce");
        assert_eq!(
            ops,
            vec![
                Op::Delete { index: 3 },
                Op::Insert {
                    index: 0,
                    room_id: "d".into()
                }
            ]
        );
    }

    #[test]
    fn a_room_entering_from_below_pushes_the_last_one_out() {
        let ops = check(0, 5, "abcde", "xabcd");
        assert_eq!(
            ops,
            vec![
                Op::Delete { index: 4 },
                Op::Insert {
                    index: 0,
                    room_id: "x".into()
                }
            ]
        );
    }

    #[test]
    fn a_room_leaving_downwards_lets_the_next_one_slide_in() {
        let ops = check(10, 5, "abcde", "acdef");
        assert_eq!(
            ops,
            vec![
                Op::Delete { index: 11 },
                Op::Insert {
                    index: 14,
                    room_id: "f".into()
                }
            ]
        );
    }

    #[test]
    fn a_room_moving_down_within_the_window_is_one_pair() {
        let ops = check(0, 5, "abcde", "acdbe");
        assert_eq!(
            ops,
            vec![
                Op::Delete { index: 1 },
                Op::Insert {
                    index: 3,
                    room_id: "b".into()
                }
            ]
        );
    }

    #[test]
    fn first_room_of_an_empty_list_is_delete_zero_insert_zero() {
        let ops = check(0, 5, "", "a");
        assert_eq!(
            ops,
            vec![
                Op::Delete { index: 0 },
                Op::Insert {
                    index: 0,
                    room_id: "a".into()
                }
            ]
        );
        let ops = check(0, 5, "a", "");
        assert_eq!(ops, vec![Op::Delete { index: 0 }]);
    }

    /// The Go proxy's multiple-window case: the room at 18 moves to the top, and each
    /// window sees one room leave and one enter.
    #[test]
    fn a_room_leaving_further_down_makes_room_for_the_one_entering() {
        let ops = check(17, 3, "qrs", "pqs");
        assert_eq!(
            ops,
            vec![
                Op::Delete { index: 18 },
                Op::Insert {
                    index: 17,
                    room_id: "p".into()
                }
            ]
        );
    }

    #[test]
    fn several_changes_converge() {
        check(0, 6, "abcdef", "fxaybc");
        check(0, 4, "abcd", "dcba");
        check(3, 4, "abcd", "xyzw");
        check(0, 4, "ab", "cdab");
    }

    #[test]
    fn subtracting_ranges_leaves_the_uncovered_pieces() {
        assert_eq!(subtract(&[(0, 29)], &[(0, 19)]), vec![(20, 29)]);
        assert_eq!(subtract(&[(0, 19)], &[(5, 9)]), vec![(0, 4), (10, 19)]);
        assert_eq!(subtract(&[(0, 9)], &[(0, 9)]), vec![]);
        assert_eq!(
            subtract(&[(0, 9), (20, 29)], &[(25, 40)]),
            vec![(0, 9), (20, 24)]
        );
    }
}
