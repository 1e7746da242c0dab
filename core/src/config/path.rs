//! Dotted paths into a JSON tree.

use serde_json::{Map, Value};

use crate::{Error, Result};

/// Splits `"db.pool.max"` into segments; `""` is the root (no segments). Empty segments
/// (`"a..b"`, `".a"`) are an error naming the path.
pub fn split_path(path: &str) -> Result<Vec<&str>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(Error::invalid(
            "config path",
            format!("`{path}` has an empty segment"),
        ));
    }
    Ok(segments)
}

/// The value at `segments` under `root`.
pub fn get_path<'a>(root: &'a Value, segments: &[&str]) -> Option<&'a Value> {
    segments
        .iter()
        .try_fold(root, |node, segment| node.as_object()?.get(*segment))
}

/// Sets the value at `segments`, turning non-object parents into objects.
pub fn set_path(root: &mut Value, segments: &[&str], value: Value) {
    let Some((last, parents)) = segments.split_last() else {
        *root = value;
        return;
    };
    let mut node = root;
    for segment in parents {
        node = as_object(node)
            .entry(segment.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    as_object(node).insert(last.to_string(), value);
}

/// Removes the value at `segments` and every parent left empty; returns whether anything changed.
pub fn delete_path(root: &mut Value, segments: &[&str]) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        let changed = *root != Value::Object(Map::new());
        *root = Value::Object(Map::new());
        return changed;
    };
    let Some(object) = root.as_object_mut() else {
        return false;
    };
    if rest.is_empty() {
        object.remove(*first).is_some()
    } else {
        match object.get_mut(*first) {
            Some(child) => {
                let changed = delete_path(child, rest);
                if child.as_object().is_some_and(Map::is_empty) {
                    object.remove(*first);
                }
                changed
            }
            None => false,
        }
    }
}

fn as_object(node: &mut Value) -> &mut Map<String, Value> {
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    match node {
        Value::Object(map) => map,
        _ => unreachable!("replaced by an object just above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_get_delete_prunes_parents() {
        let mut tree = json!({});
        set_path(&mut tree, &["db", "pool", "max"], json!(10));
        set_path(&mut tree, &["db", "name"], json!("x"));
        assert_eq!(get_path(&tree, &["db", "pool", "max"]), Some(&json!(10)));
        assert!(delete_path(&mut tree, &["db", "pool", "max"]));
        assert_eq!(tree, json!({"db": {"name": "x"}}));
        assert!(delete_path(&mut tree, &["db", "name"]));
        assert_eq!(tree, json!({}));
        assert!(!delete_path(&mut tree, &["nope"]));
    }

    #[test]
    fn set_through_a_scalar_replaces_it() {
        let mut tree = json!({"a": 1});
        set_path(&mut tree, &["a", "b"], json!(true));
        assert_eq!(tree, json!({"a": {"b": true}}));
    }

    #[test]
    fn bad_paths_are_errors() {
        assert!(
            split_path("a..b")
                .unwrap_err()
                .to_string()
                .contains("`a..b`")
        );
        assert!(split_path(".a").is_err());
        assert_eq!(split_path("").unwrap(), Vec::<&str>::new());
    }
}
