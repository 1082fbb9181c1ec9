//! A small JSON writer for responses: pre-serialized fragments (event bytes, invite
//! state) are copied in as they are, so an event is never parsed or re-serialized on the
//! way out.

#[derive(Default)]
pub struct JsonWriter {
    out: Vec<u8>,
    /// Per open object or array: whether it already holds an item.
    has_items: Vec<bool>,
    /// A key was just written: the next value is its value, not a new item.
    after_key: bool,
}

impl JsonWriter {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            out: Vec::with_capacity(n),
            ..Self::default()
        }
    }

    pub fn finish(self) -> Vec<u8> {
        debug_assert!(self.has_items.is_empty(), "unbalanced JSON writer");
        self.out
    }

    fn item(&mut self) {
        if std::mem::take(&mut self.after_key) {
            return;
        }
        if let Some(has) = self.has_items.last_mut() {
            if *has {
                self.out.push(b',');
            }
            *has = true;
        }
    }

    pub fn begin_object(&mut self) -> &mut Self {
        self.item();
        self.out.push(b'{');
        self.has_items.push(false);
        self
    }

    pub fn begin_array(&mut self) -> &mut Self {
        self.item();
        self.out.push(b'[');
        self.has_items.push(false);
        self
    }

    pub fn end_object(&mut self) -> &mut Self {
        self.has_items.pop();
        self.out.push(b'}');
        self
    }

    pub fn end_array(&mut self) -> &mut Self {
        self.has_items.pop();
        self.out.push(b']');
        self
    }

    /// An object key; the value written next belongs to it.
    pub fn key(&mut self, k: &str) -> &mut Self {
        self.item();
        self.escaped(k);
        self.out.push(b':');
        self.after_key = true;
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.item();
        self.escaped(s);
        self
    }

    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.item();
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.item();
        self.out
            .extend_from_slice(if b { b"true" } else { b"false" });
        self
    }

    /// A fragment that is already valid JSON.
    pub fn raw(&mut self, json: &[u8]) -> &mut Self {
        self.item();
        self.out.extend_from_slice(json);
        self
    }

    fn escaped(&mut self, s: &str) {
        self.out.push(b'"');
        let bytes = s.as_bytes();
        // Room IDs, names and keys rarely need escaping: copy them whole.
        if !bytes.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
            self.out.extend_from_slice(bytes);
            self.out.push(b'"');
            return;
        }
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => {
                    self.out.extend_from_slice(&bytes[start..i]);
                    self.out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                    start = i + 1;
                    continue;
                }
                _ => continue,
            };
            self.out.extend_from_slice(&bytes[start..i]);
            self.out.extend_from_slice(esc);
            start = i + 1;
        }
        self.out.extend_from_slice(&bytes[start..]);
        self.out.push(b'"');
    }
}

/// The event with `unsigned.transaction_id` set, for the device that sent it: the one
/// event a response rewrites, since the stored copy is shared by every reader. An event
/// that is not an object (never stored) is returned as it is.
pub fn with_transaction_id(event: &[u8], txn_id: &str) -> Vec<u8> {
    use sonic_rs::{JsonValueMutTrait, JsonValueTrait};
    let Ok(mut v) = sonic_rs::from_slice::<sonic_rs::Value>(event) else {
        return event.to_vec();
    };
    let Some(obj) = v.as_object_mut() else {
        return event.to_vec();
    };
    if !obj.get(&"unsigned").is_some_and(|u| u.is_object()) {
        obj.insert(&"unsigned", sonic_rs::Value::new_object());
    }
    if let Some(unsigned) = obj.get_mut(&"unsigned").and_then(|u| u.as_object_mut()) {
        unsigned.insert(&"transaction_id", sonic_rs::Value::from(txn_id));
    }
    sonic_rs::to_vec(&v).unwrap_or_else(|_| event.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_id_joins_what_unsigned_holds() {
        let out = with_transaction_id(br#"{"event_id":"$1","unsigned":{"age":3}}"#, "t\"1");
        let v: sonic_rs::Value = sonic_rs::from_slice(&out).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(v["unsigned"]["transaction_id"].as_str(), Some("t\"1"));
        assert_eq!(v["unsigned"]["age"].as_u64(), Some(3));
        let out = with_transaction_id(br#"{"event_id":"$1"}"#, "t");
        let v: sonic_rs::Value = sonic_rs::from_slice(&out).unwrap();
        assert_eq!(v["unsigned"]["transaction_id"].as_str(), Some("t"));
    }

    #[test]
    fn nested_values_get_commas_only_between_items() {
        let mut w = JsonWriter::default();
        w.begin_object();
        w.key("a").u64(1);
        w.key("b")
            .begin_array()
            .str("x\"y\n")
            .raw(b"{\"k\":true}")
            .end_array();
        w.key("c").begin_object().end_object();
        w.key("d").bool(false);
        w.end_object();
        let out = String::from_utf8(w.finish()).unwrap();
        assert_eq!(out, r#"{"a":1,"b":["x\"y\n",{"k":true}],"c":{},"d":false}"#);
        let _: sonic_rs::Value = sonic_rs::from_str(&out).unwrap();
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut w = JsonWriter::default();
        w.str("a\u{1}b");
        assert_eq!(w.finish(), br#""a\u0001b""#);
    }
}
