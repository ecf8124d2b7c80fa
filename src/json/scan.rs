//! Finding the ends of values in JSON text already known to be valid. No
//! allocation and no recursion: nesting is a depth count.

/// The first byte at or after `i` that is not JSON whitespace.
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Just past the closing quote of the string opening at `i`.
pub fn string_end(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while let Some(k) = memchr::memchr2(b'"', b'\\', &b[j..]) {
        let at = j + k;
        if b[at] == b'\\' {
            j = at + 2;
        } else {
            return at + 1;
        }
    }
    b.len()
}

/// Just past the value starting at `i`.
pub fn value_end(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        Some(b'"') => string_end(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            b.len()
        }
        // A number or a literal: up to the next delimiter.
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            j
        }
    }
}

/// The deepest nesting of arrays and objects in valid JSON text.
pub fn depth(b: &[u8]) -> usize {
    let (mut depth, mut deepest, mut j) = (0usize, 0usize, 0usize);
    while j < b.len() {
        match b[j] {
            b'"' => {
                j = string_end(b, j);
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        j += 1;
    }
    deepest
}

/// Whether valid JSON text has whitespace outside its strings.
pub fn has_spaces(b: &[u8]) -> bool {
    let mut j = 0;
    while j < b.len() {
        match b[j] {
            b'"' => {
                j = string_end(b, j);
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' => return true,
            _ => {}
        }
        j += 1;
    }
    false
}

/// Valid JSON text without the whitespace outside its strings.
pub fn compact(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut j, mut from) = (0, 0);
    while j < b.len() {
        match b[j] {
            b'"' => {
                j = string_end(b, j);
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.push_str(&text[from..j]);
                from = j + 1;
            }
            _ => {}
        }
        j += 1;
    }
    out.push_str(&text[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_of_every_kind_of_value() {
        let text = br#"{"a\"}":[1,{"b":"]"}],"c":-1.5e3} tail"#;
        assert_eq!(value_end(text, 0), text.len() - 5);
        assert_eq!(value_end(b"\"x\\\\\" rest", 0), 5);
        assert_eq!(value_end(b"12.5,", 0), 4);
        assert_eq!(value_end(b"true]", 0), 4);
        assert_eq!(depth(br#"[[{"[[[":1}]]"#), 3);
        assert!(!has_spaces(br#"{"a b":1}"#));
        assert!(has_spaces(b"{\"a\": 1}"));
        assert_eq!(
            compact("{ \"a b\" : [1, 2],\n\"c\":\"\\\" \" }"),
            "{\"a b\":[1,2],\"c\":\"\\\" \"}"
        );
    }
}
