//! A value tree and its leaves: how a backend with one key per leaf (etcd, Consul KV) stores a
//! tree, and reads it back.
//!
//! A leaf is a scalar, an array, `null` or an empty object, at the path segments leading to it.
//! Non-empty objects have no leaf of their own: they are what the leaves under them assemble
//! into, so deleting the last leaf under an object removes the object too.

use serde_json::{Map, Value};

use super::set_path;
use crate::{Error, Result};

/// The leaves `Config::set(path, value)` writes at `at` (the segments of `path`), as [`flatten`]
/// cuts them. Refuses what a key-per-leaf backend cannot hold: a root that is not an object, an
/// empty object key.
pub fn set_leaves(path: &str, at: &[&str], value: Value) -> Result<Vec<(Vec<String>, Value)>> {
    if at.is_empty() && !value.is_object() {
        return Err(Error::invalid(
            "config value",
            "the root of the tree must be an object",
        ));
    }
    let leaves = flatten(at, value);
    if leaves
        .iter()
        .any(|(leaf, _)| leaf.iter().any(String::is_empty))
    {
        return Err(Error::invalid(
            "config value",
            format!("an object key under `{path}` is empty"),
        ));
    }
    Ok(leaves)
}

/// The leaves of `value` placed at `at`: one `(segments, leaf)` per scalar, array, `null` or
/// empty object, in object key order. An empty object at `at` itself is a leaf, except at the
/// root (`at` empty), where it is the empty tree and has none.
///
/// [`assemble`] of the leaves gives back `value` at `at`.
pub fn flatten(at: &[&str], value: Value) -> Vec<(Vec<String>, Value)> {
    let mut out = Vec::new();
    if at.is_empty() && value.as_object().is_some_and(Map::is_empty) {
        return out;
    }
    let mut segments: Vec<String> = at.iter().map(|s| s.to_string()).collect();
    flatten_into(&mut segments, value, &mut out);
    out
}

fn flatten_into(segments: &mut Vec<String>, value: Value, out: &mut Vec<(Vec<String>, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (name, child) in map {
                segments.push(name);
                flatten_into(segments, child, out);
                segments.pop();
            }
        }
        leaf => out.push((segments.clone(), leaf)),
    }
}

/// The tree the leaves make, starting from an empty object. Leaves are set in the order given,
/// so a later leaf wins where two overlap (a leaf at `a` and another at `a.b`: whichever comes
/// last).
pub fn assemble<S: AsRef<str>>(leaves: impl IntoIterator<Item = (Vec<S>, Value)>) -> Value {
    let mut root = Value::Object(Map::new());
    for (segments, value) in leaves {
        let segments: Vec<&str> = segments.iter().map(AsRef::as_ref).collect();
        set_path(&mut root, &segments, value);
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_to_leaves_in_key_order() {
        let leaves = flatten(&["a"], json!({"b": {"c": 1, "d": [1, 2]}, "e": {}}));
        let keys: Vec<String> = leaves.iter().map(|(s, _)| s.join("/")).collect();
        assert_eq!(keys, ["a/b/c", "a/b/d", "a/e"]);
        assert_eq!(leaves[1].1, json!([1, 2]));
        assert_eq!(leaves[2].1, json!({}), "an empty object is a leaf");
    }

    #[test]
    fn the_empty_tree_has_no_leaves() {
        assert!(flatten(&[], json!({})).is_empty());
        assert_eq!(
            flatten(&["a"], json!({})),
            [(vec!["a".to_string()], json!({}))]
        );
        assert_eq!(flatten(&[], json!(5)), [(Vec::<String>::new(), json!(5))]);
    }

    #[test]
    fn assembles_what_it_flattened() {
        for value in [
            json!({}),
            json!({"a": {"b": 1, "c": "x"}, "d": null, "e": {}, "f": [{"g": 1}]}),
        ] {
            assert_eq!(assemble(flatten(&[], value.clone())), value);
        }
        assert_eq!(
            assemble(flatten(&["x", "y"], json!({"z": true}))),
            json!({"x": {"y": {"z": true}}})
        );
    }

    #[test]
    fn later_leaves_win() {
        let tree = assemble([(vec!["a"], json!(1)), (vec!["a", "b"], json!(2))]);
        assert_eq!(tree, json!({"a": {"b": 2}}));
        let tree = assemble([(vec!["a", "b"], json!(2)), (vec!["a"], json!(1))]);
        assert_eq!(tree, json!({"a": 1}));
    }
}
