//! Finding the ends of values in JSON text already known to be valid. No
//! allocation and no recursion: nesting is a depth count.

use std::ops::Range;

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
#[cfg(test)]
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

/// Whether `b` is one JSON value (whitespace around it allowed) nested at
/// most `max_depth` deep: RFC 8259's grammar, checked in one pass without
/// recursion. `b` is UTF-8 already; escapes are checked for their form
/// only, as `serde_json` checks what it skips.
#[cfg(test)]
pub fn valid(b: &[u8], max_depth: usize) -> bool {
    valid_fields(b, max_depth, |_| {})
}

/// Where a field of a top-level object lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its key, with the quotes.
    pub key: Range<usize>,
    /// Whether the key holds an escape (and may read as another key).
    pub escaped: bool,
    pub value: Range<usize>,
}

/// [`valid`], telling `field` where each field of the top-level object lies
/// as the pass meets it: the text is checked and its fields found in the
/// same pass. Nothing is told when the value is not an object; what was
/// told before a fault is to be ignored when the text turns out invalid.
pub fn valid_fields(b: &[u8], max_depth: usize, mut field: impl FnMut(Field)) -> bool {
    // The top-level field whose value is being read: its key, whether the
    // key holds an escape, and where its value starts.
    let mut top: Option<(Range<usize>, bool, usize)> = None;
    // Bit d-1 set: the container at depth d is an object. Depth is at most
    // 128, so one u128 holds every level.
    let max_depth = max_depth.min(128);
    let mut objects: u128 = 0;
    let mut depth = 0usize;
    let mut i = 0usize;
    'value: loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(&open @ (b'{' | b'[')) => {
                depth += 1;
                if depth > max_depth {
                    return false;
                }
                let bit = 1u128 << (depth - 1);
                i = skip_ws(b, i + 1);
                if open == b'{' {
                    objects |= bit;
                    if b.get(i) == Some(&b'}') {
                        i += 1;
                        depth -= 1;
                    } else {
                        match key(b, i) {
                            Some((key_end, escaped, next)) => {
                                if depth == 1 {
                                    top = Some((i..key_end, escaped, skip_ws(b, next)));
                                }
                                i = next;
                            }
                            None => return false,
                        }
                        continue 'value;
                    }
                } else {
                    objects &= !bit;
                    if b.get(i) == Some(&b']') {
                        i += 1;
                        depth -= 1;
                    } else {
                        continue 'value;
                    }
                }
            }
            Some(b'"') => match string(b, i) {
                Some((end, _)) => i = end,
                None => return false,
            },
            Some(b't') if b[i..].starts_with(b"true") => i += 4,
            Some(b'f') if b[i..].starts_with(b"false") => i += 5,
            Some(b'n') if b[i..].starts_with(b"null") => i += 4,
            Some(b'-' | b'0'..=b'9') => match number(b, i) {
                Some(end) => i = end,
                None => return false,
            },
            _ => return false,
        }
        // After a value: the next one of its container, or its end.
        loop {
            if depth == 1
                && let Some((key, escaped, start)) = top.take()
            {
                field(Field {
                    key,
                    escaped,
                    value: start..i,
                });
            }
            i = skip_ws(b, i);
            if depth == 0 {
                return i == b.len();
            }
            let in_object = objects & (1u128 << (depth - 1)) != 0;
            match b.get(i) {
                Some(b',') if in_object => {
                    let at = skip_ws(b, i + 1);
                    match key(b, at) {
                        Some((key_end, escaped, next)) => {
                            if depth == 1 {
                                top = Some((at..key_end, escaped, skip_ws(b, next)));
                            }
                            i = next;
                            continue 'value;
                        }
                        None => return false,
                    }
                }
                Some(b',') => {
                    i += 1;
                    continue 'value;
                }
                Some(b'}') if in_object => {
                    i += 1;
                    depth -= 1;
                }
                Some(b']') if !in_object => {
                    i += 1;
                    depth -= 1;
                }
                _ => return false,
            }
        }
    }
}

/// For `"key":` at `i` (no whitespace before it): just past the key's
/// closing quote, whether the key holds an escape, and just past the
/// colon; or `None`.
fn key(b: &[u8], i: usize) -> Option<(usize, bool, usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let (key_end, escaped) = string(b, i)?;
    let colon = skip_ws(b, key_end);
    (b.get(colon) == Some(&b':')).then_some((key_end, escaped, colon + 1))
}

/// Past the closing quote of the well-formed string at `i`, and whether it
/// holds an escape; or `None`.
fn string(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        let k = special(b, j)?;
        match b[k] {
            b'"' => return Some((k + 1, escaped)),
            b'\\' => {}
            // A control character, which a string must escape.
            _ => return None,
        }
        escaped = true;
        match b.get(k + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j = k + 2,
            b'u' => {
                let hex = b.get(k + 2..k + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                j = k + 6;
            }
            _ => return None,
        }
    }
}

/// The first byte at or after `from` that a string's plain run stops at: a
/// quote, a backslash or a control character. Eight bytes at a time, with
/// integer arithmetic: strings are mostly short, where a vector search's
/// setup costs more than the search.
fn special(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let rest = b.get(from..)?;
    let mut words = rest.chunks_exact(8);
    let mut at = from;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        // A byte's high bit is set where it is zero (a quote or a
        // backslash after the xor) or below 0x20. Bits above the first
        // such byte may be set by a borrow; the lowest is exact.
        let stops = (quote.wrapping_sub(ONES) & !quote
            | slash.wrapping_sub(ONES) & !slash
            | x.wrapping_sub(ONES * 0x20) & !x)
            & HIGH;
        if stops != 0 {
            return Some(at + (stops.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|k| at + k)
}

/// Past the well-formed number at `i`, or `None`.
fn number(b: &[u8], i: usize) -> Option<usize> {
    let digits = |from: usize| {
        let mut j = from;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        (j > from).then_some(j)
    };
    let mut j = i + usize::from(b[i] == b'-');
    j = match b.get(j)? {
        b'0' => j + 1,
        b'1'..=b'9' => digits(j)?,
        _ => return None,
    };
    if b.get(j) == Some(&b'.') {
        j = digits(j + 1)?;
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        j = digits(j)?;
    }
    Some(j)
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

    /// What `serde_json` (and the depth limit) says of `text`.
    fn serde_says(text: &str, max_depth: usize) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
            && depth(text.as_bytes()) <= max_depth
    }

    #[test]
    fn valid_agrees_with_serde_json() {
        let cases = [
            "",
            " ",
            "{}",
            "[]",
            " {} ",
            "{} x",
            "{}{}",
            "{,}",
            "[,]",
            "[1,]",
            "[1 2]",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":}"#,
            r#"{1:2}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":[1,{"b":null}],"c":"\u00e9\n"}"#,
            "\"\\u12G4\"",
            "\"\\u12\"",
            "\"\\x\"",
            "\"a\tb\"",
            "\"a\u{1}b\"",
            "\"\\ud800\"",
            "\"unterminated",
            "0",
            "-0",
            "01",
            "-",
            "1.",
            "1.5",
            ".5",
            "1e",
            "1e+",
            "1e+5",
            "1E-5",
            "-1.5e3",
            "2.e3",
            "true",
            "tru",
            "truex",
            "false",
            "null",
            "nul",
            "[true,false,null]",
            "[[[]]]",
            "[[[]]",
            "[]]",
            "{\"a\":{\"b\":{}}}",
            "\u{feff}{}",
            "\t\n\r {}\n",
        ];
        for text in cases {
            assert_eq!(
                valid(text.as_bytes(), 128),
                serde_says(text, 128),
                "{text:?}"
            );
        }
        let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(valid(deep(128).as_bytes(), 128));
        assert!(!valid(deep(129).as_bytes(), 128));
        let objects = |n: usize| "{\"a\":".repeat(n) + "1" + &"}".repeat(n);
        assert!(valid(objects(3).as_bytes(), 3) && !valid(objects(4).as_bytes(), 3));
        // Mutations of a document with every kind of value: each byte
        // replaced by, or followed by, one that matters to the grammar.
        let base = r#"{"k":[1,-2.5e-3,"s\"\u0041",true,false,null,{"x":{}}],"e":[]}"#;
        let bytes = b" {}[],:\"\\0-+.eEtfnu1a\t\x01";
        for at in 0..base.len() {
            for &c in bytes {
                for text in [
                    format!("{}{}{}", &base[..at], c as char, &base[at + 1..]),
                    format!("{}{}{}", &base[..at], c as char, &base[at..]),
                    base[..at].to_string(),
                ] {
                    assert_eq!(valid(text.as_bytes(), 4), serde_says(&text, 4), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn the_fields_told_are_the_top_level_objects_fields_as_serde_json_reads_them() {
        // Every valid mutation of a document with nested and empty values,
        // spaces, and an escaped key: the fields told, read by serde_json,
        // are the object's own, in order (duplicates included).
        let base = r#" { "k" : [1,{"x":{}}] , "e":[],"\u0061":"s\"", "n":-2.5e-3 ,"o":{"p":[]}} "#;
        let bytes = b" {}[],:\"\\0-.e1a";
        let mut checked = 0;
        for at in 0..base.len() {
            for &c in bytes {
                for text in [
                    format!("{}{}{}", &base[..at], c as char, &base[at + 1..]),
                    format!("{}{}{}", &base[..at], c as char, &base[at..]),
                    base.to_string(),
                ] {
                    let mut told = Vec::new();
                    let ok = valid_fields(text.as_bytes(), 8, |f| {
                        let key = text[f.key].to_string();
                        assert_eq!(f.escaped, key.contains('\\'), "{text:?}: {key}");
                        told.push((key, text[f.value].to_string()));
                    });
                    assert_eq!(ok, serde_says(&text, 8), "{text:?}");
                    if !ok {
                        continue;
                    }
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let Some(object) = value.as_object() else {
                        assert!(told.is_empty(), "{text:?}: {told:?}");
                        continue;
                    };
                    // serde_json keeps the last of equal keys; the pass tells
                    // each.
                    let mut last = serde_json::Map::new();
                    for (k, v) in &told {
                        let key: String = serde_json::from_str(k).unwrap();
                        let value: serde_json::Value = serde_json::from_str(v).unwrap();
                        assert_eq!(v.trim(), v, "{text:?}: a value told with spaces");
                        last.insert(key, value);
                    }
                    assert_eq!(&last, object, "{text:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "only {checked} valid mutations");
    }

    #[test]
    fn a_strings_stops_are_found_where_a_byte_by_byte_search_finds_them() {
        // Bytes around each stop's value (a borrow or a carry would show
        // there), and runs long enough to be read eight bytes at a time,
        // the stop at every offset of a word or in the tail.
        let near = [
            0x00u8, 0x01, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7f, 0x80, 0x9c, 0xa2,
            0xdc, 0xff, b'a',
        ];
        let naive = |b: &[u8], from: usize| {
            (from..b.len()).find(|&k| b[k] == b'"' || b[k] == b'\\' || b[k] < 0x20)
        };
        for len in 0..40 {
            for at in 0..=len {
                for &fill in &[b'a', 0x80, 0xff, 0x21, 0x23, 0x5d] {
                    for &stop in &near {
                        let mut b = vec![fill; len];
                        if at < len {
                            b[at] = stop;
                        }
                        for from in [0, 1, 3, 8, 9].into_iter().filter(|f| *f <= len) {
                            assert_eq!(special(&b, from), naive(&b, from), "{b:?} from {from}");
                        }
                    }
                }
            }
        }
        assert_eq!(special(b"abc", 4), None);
    }
}
