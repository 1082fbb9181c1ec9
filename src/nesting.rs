//! Guards against deeply nested JSON.
//!
//! sonic-rs parses and skips nested values recursively, with no depth limit: a few
//! hundred KiB of `[` (in a client's request, or in an event any federated server can
//! send) would overflow the stack and abort the whole process. Both edges check depth
//! first, in one pass without recursion: client requests that nest too deep are refused;
//! homeserver data has its too-deep parts replaced, since refusing it would wedge the
//! device's poller on that response forever.

use std::borrow::Cow;

/// One step of a scan: the depth after `b`, tracking strings so brackets inside them do
/// not count.
struct Scanner {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Scanner {
    fn new() -> Self {
        Self {
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// Returns +1 when `b` opens an array or object, -1 when it closes one, else 0.
    fn step(&mut self, b: u8) -> i8 {
        if self.in_string {
            match b {
                _ if self.escaped => self.escaped = false,
                b'\\' => self.escaped = true,
                b'"' => self.in_string = false,
                _ => {}
            }
            return 0;
        }
        match b {
            b'"' => {
                self.in_string = true;
                0
            }
            b'[' | b'{' => {
                self.depth += 1;
                1
            }
            b']' | b'}' => {
                self.depth = self.depth.saturating_sub(1);
                -1
            }
            _ => 0,
        }
    }
}

/// Whether arrays and objects nest deeper than `max` anywhere in `json`.
pub fn nests_deeper_than(json: &[u8], max: usize) -> bool {
    let mut scan = Scanner::new();
    json.iter().any(|&b| scan.step(b) > 0 && scan.depth > max)
}

/// `json` with every array or object that would open below depth `max` replaced by
/// `null`; borrowed unchanged in the usual case where nothing nests that deep.
pub fn clamp_depth(json: &[u8], max: usize) -> Cow<'_, [u8]> {
    if !nests_deeper_than(json, max) {
        return Cow::Borrowed(json);
    }
    let mut out = Vec::with_capacity(json.len());
    let mut scan = Scanner::new();
    // While `Some(d)`, we are inside a cut value that opened at depth `d`.
    let mut cutting: Option<usize> = None;
    for &b in json {
        let opened = scan.step(b);
        match cutting {
            Some(d) => {
                if opened < 0 && scan.depth < d {
                    cutting = None;
                }
            }
            None if opened > 0 && scan.depth > max => {
                out.extend_from_slice(b"null");
                cutting = Some(scan.depth);
            }
            None => out.push(b),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_in_strings_do_not_count() {
        assert!(!nests_deeper_than(br#"{"a":"[[[[[[\"[[["}"#, 1));
        assert!(nests_deeper_than(br#"{"a":[[1]]}"#, 2));
        assert!(!nests_deeper_than(br#"{"a":[[1]]}"#, 3));
    }

    #[test]
    fn too_deep_values_become_null_and_the_rest_is_kept() {
        let json = br#"{"keep":[1,{"x":"]"}],"cut":[[[["deep",{"y":[]}]]]],"after":true}"#;
        let clamped = clamp_depth(json, 3);
        assert_eq!(
            String::from_utf8_lossy(&clamped),
            r#"{"keep":[1,{"x":"]"}],"cut":[[null]],"after":true}"#
        );
        let _: sonic_rs::Value = sonic_rs::from_slice(&clamped).unwrap();
        assert!(matches!(clamp_depth(br#"{"a":[1]}"#, 3), Cow::Borrowed(_)));
    }

    #[test]
    fn a_hostile_depth_is_clamped_without_recursion() {
        let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(500_000), "]".repeat(500_000));
        let clamped = clamp_depth(deep.as_bytes(), 8);
        let v: sonic_rs::Value = sonic_rs::from_slice(&clamped).unwrap();
        assert!(sonic_rs::JsonValueTrait::is_object(&v));
    }
}
