//! `walbust check`: static validation of rules (done by [`crate::rules::load`]) and, given the
//! schema facts the daemon reads from a database, validation against the live schema: tables and columns exist, replica identity
//! carries what UPDATE/DELETE templates need, TOAST-able key columns, publication coverage.

use crate::model::{Op, ReplicaIdentity};
use crate::rules::load::did_you_mean;
use crate::rules::template::Image;
use crate::rules::{Diagnostic, Rule, RuleSet, Severity, TableName};
use std::collections::{BTreeMap, BTreeSet};

/// What the database says about one table.
#[derive(Clone, Debug, Default)]
pub struct TableInfo {
    pub columns: Vec<ColumnInfo>,
    pub replica_identity: Option<ReplicaIdentity>,
    /// Columns carried in the old row of UPDATE/DELETE under the table's replica identity.
    pub identity_columns: BTreeSet<String>,
}

#[derive(Clone, Debug)]
pub struct ColumnInfo {
    pub name: String,
    pub type_name: String,
    /// Variable-length with a storage strategy that allows out-of-line TOAST.
    pub toastable: bool,
}

/// The publication's coverage, when one was named.
#[derive(Clone, Debug, Default)]
pub struct PublicationInfo {
    pub name: String,
    pub exists: bool,
    pub tables: BTreeSet<TableName>,
    pub publishes: BTreeSet<Op>,
}

/// A snapshot of the schema facts `check --db` needs.
#[derive(Clone, Debug, Default)]
pub struct SchemaInfo {
    pub wal_level: String,
    pub tables: BTreeMap<TableName, TableInfo>,
    pub publication: Option<PublicationInfo>,
}

fn diag(rule: &Rule, severity: Severity, field: String, message: String) -> Diagnostic {
    Diagnostic {
        severity,
        file: Some(rule.file.as_ref().clone()),
        pos: Some(rule.pos),
        field: Some(field),
        message,
    }
}

fn identity_name(ri: Option<ReplicaIdentity>) -> &'static str {
    match ri {
        Some(ReplicaIdentity::Default) => "DEFAULT (primary key)",
        Some(ReplicaIdentity::Full) => "FULL",
        Some(ReplicaIdentity::Index) => "USING INDEX",
        Some(ReplicaIdentity::Nothing) => "NOTHING",
        None => "unknown",
    }
}

/// Compares rules with the schema facts. Pure, so it is unit-tested without a database.
pub fn check_against_schema(rules: &RuleSet, schema: &SchemaInfo) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if schema.wal_level != "logical" {
        out.push(Diagnostic {
            severity: Severity::Error,
            file: None,
            pos: None,
            field: Some("wal_level".into()),
            message: format!(
                "the server runs with wal_level = {}; logical decoding needs `ALTER SYSTEM SET wal_level = logical` and a restart",
                schema.wal_level
            ),
        });
    }
    for rule in &rules.rules {
        let at = format!("rule `{}`", rule.name);
        let Some(table) = schema.tables.get(&rule.table) else {
            out.push(diag(
                rule,
                Severity::Error,
                format!("{at}.table"),
                format!(
                    "table {} does not exist in the database (names are case-sensitive)",
                    rule.table
                ),
            ));
            continue;
        };
        let column_names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let full = table.replica_identity == Some(ReplicaIdentity::Full);
        let ident = identity_name(table.replica_identity);
        let mut reported = BTreeSet::new();
        let mut check_column = |out: &mut Vec<Diagnostic>, field: &str, column: &str| -> bool {
            if column_names.contains(&column) {
                return true;
            }
            if reported.insert(column.to_string()) {
                let hint = did_you_mean(column, &column_names)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                out.push(diag(
                    rule,
                    Severity::Error,
                    format!("{at}.{field}"),
                    format!("column `{column}` does not exist in {}{hint}", rule.table),
                ));
            }
            false
        };
        for column in &rule.changed {
            check_column(&mut out, "changed", column);
        }
        if !rule.changed.is_empty() && !full && rule.on.contains(Op::Update) {
            let outside: Vec<&String> = rule
                .changed
                .iter()
                .filter(|c| !table.identity_columns.contains(*c))
                .collect();
            if !outside.is_empty() {
                out.push(diag(
                    rule,
                    Severity::Warning,
                    format!("{at}.changed"),
                    format!(
                        "{} has REPLICA IDENTITY {ident}, so updates carry no old value of {}; `changed` cannot compare and the rule fires on every update; set REPLICA IDENTITY FULL to filter",
                        rule.table,
                        outside.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        let has_fallback = rule.fallback.is_some();
        for (kind, template) in rule.actions.templates() {
            let field = kind.field();
            for (image, column) in template.columns() {
                if !check_column(&mut out, field, column) {
                    continue;
                }
                let in_identity = table.identity_columns.contains(column);
                if rule.on.contains(Op::Delete) && image != Image::New && !in_identity {
                    let (severity, tail) = if has_fallback {
                        (Severity::Warning, "the fallback will be applied on every delete")
                    } else {
                        (
                            Severity::Error,
                            "add a `fallback` to the rule or set REPLICA IDENTITY FULL",
                        )
                    };
                    out.push(diag(
                        rule,
                        severity,
                        format!("{at}.{field}"),
                        format!(
                            "`{}`: a DELETE on {} carries only its replica identity ({ident}), which does not include `{column}`; {tail}",
                            template.source, rule.table
                        ),
                    ));
                }
                if rule.on.contains(Op::Update) && !full && !in_identity {
                    match image {
                        Image::Any => out.push(diag(
                            rule,
                            Severity::Warning,
                            format!("{at}.{field}"),
                            format!(
                                "`{}`: updates of {} carry no old `{column}` (REPLICA IDENTITY {ident}), so old keys won't be invalidated when `{column}` changes (e.g. a move); set REPLICA IDENTITY FULL",
                                template.source, rule.table
                            ),
                        )),
                        Image::Old => out.push(diag(
                            rule,
                            if has_fallback { Severity::Warning } else { Severity::Error },
                            format!("{at}.{field}"),
                            format!(
                                "`{}`: `{{old.{column}}}` is not carried by updates of {} (REPLICA IDENTITY {ident}); set REPLICA IDENTITY FULL{}",
                                template.source,
                                rule.table,
                                if has_fallback { "" } else { " or add a `fallback`" }
                            ),
                        )),
                        Image::New => {}
                    }
                }
                let toastable = table.columns.iter().any(|c| c.name == column && c.toastable);
                // Identity (key) columns are always small enough for an index entry, so they are
                // never stored out of line; only other columns can arrive as unchanged TOAST.
                if toastable && !full && !in_identity && rule.on.contains(Op::Update) && image != Image::Old {
                    out.push(diag(
                        rule,
                        Severity::Warning,
                        format!("{at}.{field}"),
                        format!(
                            "`{}` uses TOAST-able column `{column}`: an UPDATE that leaves a large `{column}` unchanged does not carry it, so the key cannot be rendered ({}); set REPLICA IDENTITY FULL or key on another column",
                            template.source,
                            if has_fallback { "the fallback is used" } else { "reported as unrenderable" }
                        ),
                    ));
                }
            }
        }
        if let Some(publication) = &schema.publication {
            if publication.exists && !publication.tables.contains(&rule.table) {
                out.push(diag(
                    rule,
                    Severity::Error,
                    format!("{at}.table"),
                    format!(
                        "{} is not in publication `{}`, so its changes never reach walbust; run `ALTER PUBLICATION \"{}\" ADD TABLE {}`",
                        rule.table, publication.name, publication.name, rule.table
                    ),
                ));
            }
            if publication.exists {
                for op in rule.on.iter() {
                    if !publication.publishes.contains(&op) {
                        out.push(diag(
                            rule,
                            Severity::Warning,
                            format!("{at}.on"),
                            format!(
                                "publication `{}` does not publish {op}s, so this rule never sees them; set its `publish` option to include {op}",
                                publication.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    if let Some(publication) = &schema.publication {
        if !publication.exists {
            out.push(Diagnostic {
                severity: Severity::Error,
                file: None,
                pos: None,
                field: Some("--publication".into()),
                message: format!(
                    "publication `{}` does not exist; create it with `CREATE PUBLICATION \"{}\" FOR TABLE ...` (before the slot)",
                    publication.name, publication.name
                ),
            });
        }
        let covered: BTreeSet<&TableName> = rules.rules.iter().map(|r| &r.table).collect();
        for table in &publication.tables {
            if !covered.contains(table) {
                out.push(Diagnostic {
                    severity: Severity::Warning,
                    file: None,
                    pos: None,
                    field: Some("--publication".into()),
                    message: format!(
                        "table {table} is published in `{}` but no rule covers it; its changes invalidate nothing (add a rule or drop it from the publication)",
                        publication.name
                    ),
                });
            }
        }
    }
    out
}

/// Truncate warnings that do not need a database: rules on a table that don't list
/// `truncate` do nothing when it is truncated.
pub fn static_notes(rules: &RuleSet) -> Vec<Diagnostic> {
    let mut by_table: BTreeMap<&TableName, Vec<&Rule>> = BTreeMap::new();
    for rule in &rules.rules {
        by_table.entry(&rule.table).or_default().push(rule);
    }
    by_table
        .into_iter()
        .filter(|(_, rules)| !rules.iter().any(|r| r.on.contains(Op::Truncate)))
        .map(|(table, rules)| {
            let first = rules[0];
            diag(
                first,
                Severity::Warning,
                format!("rule `{}`.on", first.name),
                format!(
                    "no rule on {table} lists `truncate`: a TRUNCATE of {table} invalidates nothing; add `truncate` to `on` with a `fallback`"
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::load_str;

    fn schema(identity: ReplicaIdentity, identity_columns: &[&str]) -> SchemaInfo {
        let mut tables = BTreeMap::new();
        tables.insert(
            TableName {
                schema: "public".into(),
                name: "products".into(),
            },
            TableInfo {
                columns: ["id", "category_id", "description"]
                    .iter()
                    .map(|c| ColumnInfo {
                        name: c.to_string(),
                        type_name: "text".into(),
                        toastable: *c == "description",
                    })
                    .collect(),
                replica_identity: Some(identity),
                identity_columns: identity_columns.iter().map(|s| s.to_string()).collect(),
            },
        );
        SchemaInfo {
            wal_level: "logical".into(),
            tables,
            publication: None,
        }
    }

    fn messages(rules: &str, schema: &SchemaInfo) -> Vec<String> {
        let rules = load_str("r.yaml", rules).unwrap().rules;
        check_against_schema(&rules, schema)
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    const RULES: &str = "version: 1\nrules:\n  - name: p\n    table: products\n    delete: [\"p:{id}\"]\n    tags: [\"c:{category_id}\"]\n";

    #[test]
    fn delete_outside_identity_without_fallback_is_an_error() {
        let msgs = messages(RULES, &schema(ReplicaIdentity::Default, &["id"]));
        assert!(
            msgs.iter()
                .any(|m| m.contains("error:") && m.contains("DELETE") && m.contains("`category_id`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("warning:") && m.contains("old keys won't be invalidated")),
            "{msgs:?}"
        );
    }

    #[test]
    fn full_identity_is_clean() {
        let msgs = messages(
            RULES,
            &schema(ReplicaIdentity::Full, &["id", "category_id", "description"]),
        );
        assert!(msgs.is_empty(), "{msgs:?}");
    }

    #[test]
    fn missing_columns_and_tables() {
        let msgs = messages(
            "version: 1\nrules:\n  - name: p\n    table: products\n    delete: [\"p:{idd}\"]\n  - name: q\n    table: nope\n    delete: [x]\n",
            &schema(ReplicaIdentity::Full, &[]),
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("`idd` does not exist") && m.contains("did you mean `id`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("public.nope does not exist")),
            "{msgs:?}"
        );
    }

    #[test]
    fn toast_and_publication() {
        let mut s = schema(ReplicaIdentity::Default, &["id"]);
        s.publication = Some(PublicationInfo {
            name: "pub".into(),
            exists: true,
            tables: [TableName {
                schema: "public".into(),
                name: "other".into(),
            }]
            .into_iter()
            .collect(),
            publishes: [Op::Insert, Op::Update, Op::Delete].into_iter().collect(),
        });
        let msgs = messages(
            "version: 1\nrules:\n  - name: p\n    table: products\n    on: [update]\n    delete: [\"p:{description}\"]\n",
            &s,
        );
        assert!(msgs.iter().any(|m| m.contains("TOAST-able")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("not in publication")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("public.other is published")), "{msgs:?}");
    }
}
