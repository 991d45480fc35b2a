//! The JSON Schema of rules format v1 (`walbust schema`), for editors and CI, and a small
//! validator for the subset of JSON Schema it uses, so the tests can check every example rules
//! file against it without another dependency.

use super::yaml::{Node, NodeKind};
use serde_json::{json, Map, Value};

/// The JSON Schema (draft 2020-12) of a rules file.
pub fn rules_schema() -> Value {
    let keys = json!({"type": "array", "items": {"type": "string", "minLength": 1}});
    let fixed = json!({
        "type": "array",
        "items": {"type": "string", "minLength": 1, "pattern": "^([^{}]|\\{\\{|\\}\\})*$"},
        "description": "Fixed keys: no {placeholders} (fallbacks run when row values are unknown)"
    });
    let fallback = json!({
        "type": "object",
        "additionalProperties": false,
        "minProperties": 1,
        "properties": {
            "delete": {"$ref": "#/$defs/fixed"},
            "bump": {"$ref": "#/$defs/fixed"},
            "tags": {"$ref": "#/$defs/fixed"},
            "delete_matching": {"$ref": "#/$defs/fixed"},
            "publish": {"type": "array", "items": {"type": "string", "minLength": 1}}
        }
    });
    let properties = json!({
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "table": {"type": "string", "minLength": 1, "description": "schema.table or table (schema public); case-sensitive"},
        "on": {"type": "array", "minItems": 1, "items": {"enum": ["insert", "update", "delete", "truncate"]}, "description": "operations the rule listens to (default: all but truncate). walbust reads YAML 1.2; YAML 1.1 tools (PyYAML, some linters) read an unquoted `on:` key as the boolean true — quote it (\"on\":) if such a tool processes your rules"},
        "changed": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "delete": {"$ref": "#/$defs/keys"},
        "bump": {"$ref": "#/$defs/keys"},
        "tags": {"$ref": "#/$defs/keys"},
        "delete_matching": {"$ref": "#/$defs/keys"},
        "publish": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "redelete_after": {"type": "string", "pattern": "^[0-9.]+ *(ms|s|m|min|h)$"},
        "fallback": fallback
    });
    let rule = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "table"],
        "properties": properties
    });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:walbust:rules:v1",
        "title": "walbust rules (format v1)",
        "description": "Cache keys, tags and version keys invalidated by committed row changes. See docs/rules.md.",
        "type": "object",
        "additionalProperties": false,
        "required": ["version", "rules"],
        "properties": {
            "version": {"const": 1},
            "prefix": {"type": "string", "description": "Prepended to every key, tag and version key (not to channels)"},
            "rules": {"type": "array", "items": {"$ref": "#/$defs/rule"}}
        },
        "$defs": {
            "keys": keys,
            "fixed": fixed,
            "rule": rule,
        }
    })
}

/// A YAML node as JSON (plain integers and booleans typed, everything else a string).
pub fn yaml_to_json(node: &Node) -> Value {
    match &node.kind {
        NodeKind::Null => Value::Null,
        NodeKind::Scalar { text, plain } => {
            if *plain {
                if let Ok(i) = text.parse::<i64>() {
                    return json!(i);
                }
                if text == "true" || text == "false" {
                    return json!(text == "true");
                }
            }
            json!(text)
        }
        NodeKind::Seq(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        NodeKind::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                map.insert(k.as_str().unwrap_or_default().to_string(), yaml_to_json(v));
            }
            Value::Object(map)
        }
    }
}

/// Validates `value` against the subset of JSON Schema [`rules_schema`] uses (type, const,
/// enum, properties, required, additionalProperties: false, items, minItems, minLength,
/// minProperties, local `$ref`; `pattern` is checked by walbust's own loader). Returns
/// `path: problem` messages.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, schema, value, "$", &mut errors);
    errors
}

fn check(root: &Value, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix("#/")
            .map(|p| p.split('/').fold(root, |node, part| &node[part]))
            .unwrap_or(&Value::Null);
        return check(root, target, value, path, errors);
    }
    if let Some(c) = schema.get("const") {
        if c != value {
            errors.push(format!("{path}: must be {c}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            errors.push(format!("{path}: must be one of {}", Value::Array(options.clone())));
        }
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            errors.push(format!("{path}: must be of type {t}"));
            return;
        }
    }
    if let (Some(min), Some(s)) = (schema.get("minLength").and_then(Value::as_u64), value.as_str()) {
        if (s.chars().count() as u64) < min {
            errors.push(format!("{path}: must not be empty"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                errors.push(format!("{path}: needs at least {min} item(s)"));
            }
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(root, item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(r) {
                    errors.push(format!("{path}: missing required `{r}`"));
                }
            }
        }
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64) {
            if (object.len() as u64) < min {
                errors.push(format!("{path}: needs at least {min} field(s)"));
            }
        }
        for (key, v) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(s) => check(root, s, v, &format!("{path}.{key}"), errors),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{path}: unknown field `{key}`"))
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::yaml;

    fn validate_yaml(text: &str) -> Vec<String> {
        validate(&rules_schema(), &yaml_to_json(&yaml::parse(text).unwrap()))
    }

    #[test]
    fn bundled_rules_validate() {
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../rules")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(validate_yaml(&text), Vec::<String>::new(), "{}", path.display());
        }
    }

    #[test]
    fn schema_catches_what_the_loader_rejects() {
        let errs = validate_yaml("version: 2\nrules:\n  - name: a\n    tabel: t\n    on: [upsert]\n");
        assert!(errs.iter().any(|e| e.contains("$.version")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("unknown field `tabel`")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("missing required `table`")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("$.rules[0].on[0]")), "{errs:?}");
        let errs = validate_yaml("version: 1\nrules:\n  - name: a\n    table: t\n    fallback: {}\n");
        assert!(
            errs.iter().any(|e| e.contains("fallback: needs at least 1")),
            "{errs:?}"
        );
    }

    #[test]
    fn committed_schema_file_is_current() {
        let committed = include_str!("../../../../docs/rules.schema.json");
        let generated = serde_json::to_string_pretty(&rules_schema()).unwrap() + "\n";
        assert_eq!(
            committed, generated,
            "regenerate with `walbust schema > docs/rules.schema.json`"
        );
    }
}
