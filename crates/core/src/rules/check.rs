//! `walbust check`: static validation of rules (done by [`crate::rules::load`]) and, given the
//! schema facts the daemon reads from a database, validation against the live schema: tables and columns exist, replica identity
//! carries what UPDATE/DELETE templates need, TOAST-able key columns, publication coverage.

use crate::model::{Op, ReplicaIdentity};
use crate::rules::load::did_you_mean;
use crate::rules::template::Image;
use crate::rules::{quote_ident, Diagnostic, Rule, RuleSet, Severity, TableName};
use std::collections::{BTreeMap, BTreeSet};

/// What the database says about one table.
#[derive(Clone, Debug, Default)]
pub struct TableInfo {
    pub columns: Vec<ColumnInfo>,
    pub replica_identity: Option<ReplicaIdentity>,
    /// Columns carried in the old row of UPDATE/DELETE under the table's replica identity.
    pub identity_columns: BTreeSet<String>,
    /// A partitioned table: its partitions (at every level). Their changes reach walbust under
    /// their own names (unless the publication sets `publish_via_partition_root`), and the
    /// daemon applies this table's rules to them.
    pub partitions: Vec<TableName>,
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
    /// Every ordinary and partitioned table of the database (`schema.name`), for did-you-mean.
    pub all_tables: Vec<String>,
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
        out.push(global(
            Severity::Error,
            "wal_level",
            format!(
                "the server runs with wal_level = {}; logical decoding needs `ALTER SYSTEM SET wal_level = logical` and a restart",
                schema.wal_level
            ),
        ));
    }
    for rule in &rules.rules {
        match schema.tables.get(&rule.table) {
            Some(table) => RuleCheck::new(rule, table, &mut out).run(schema.publication.as_ref()),
            None => out.push(diag(
                rule,
                Severity::Error,
                format!("rule `{}`.table", rule.name),
                format!(
                    "table {} does not exist in the database (names are case-sensitive){}",
                    rule.table,
                    {
                        let names: Vec<&str> = schema.all_tables.iter().map(String::as_str).collect();
                        crate::rules::load::did_you_mean(&rule.table.to_string(), &names)
                            .map(|s| format!("; did you mean `{s}`?"))
                            .unwrap_or_default()
                    }
                ),
            )),
        }
    }
    if let Some(publication) = &schema.publication {
        let partitions_of: BTreeMap<&TableName, &Vec<TableName>> = schema
            .tables
            .iter()
            .map(|(name, info)| (name, &info.partitions))
            .collect();
        check_publication(rules, publication, &partitions_of, &mut out);
    }
    out
}

/// A finding that belongs to no rule (the server, the publication).
fn global(severity: Severity, field: &str, message: String) -> Diagnostic {
    Diagnostic {
        severity,
        file: None,
        pos: None,
        field: Some(field.into()),
        message,
    }
}

/// The publication exists, and every table it publishes has a rule.
fn check_publication(
    rules: &RuleSet,
    publication: &PublicationInfo,
    partitions_of: &BTreeMap<&TableName, &Vec<TableName>>,
    out: &mut Vec<Diagnostic>,
) {
    if !publication.exists {
        out.push(global(
            Severity::Error,
            "--publication",
            format!(
                "publication `{}` does not exist; create it with `CREATE PUBLICATION {} FOR TABLE ...` (before the slot)",
                publication.name,
                quote_ident(&publication.name)
            ),
        ));
    }
    let mut covered: BTreeSet<&TableName> = rules.rules.iter().map(|r| &r.table).collect();
    // Partitions of a table with rules are covered by its rules.
    for table in rules.rules.iter().map(|r| &r.table) {
        if let Some(info) = partitions_of.get(table) {
            covered.extend(info.iter());
        }
    }
    for table in publication.tables.iter().filter(|t| !covered.contains(t)) {
        out.push(global(
            Severity::Warning,
            "--publication",
            format!(
                "table {table} is published in `{}` but no rule covers it; its changes invalidate nothing (add a rule or drop it from the publication)",
                publication.name
            ),
        ));
    }
}

/// One rule against its table's facts.
struct RuleCheck<'a> {
    rule: &'a Rule,
    table: &'a TableInfo,
    out: &'a mut Vec<Diagnostic>,
    /// `rule `name``, the start of every field path.
    at: String,
    column_names: Vec<&'a str>,
    full: bool,
    ident: &'static str,
    /// Missing columns already reported (once per rule).
    reported: BTreeSet<String>,
}

impl<'a> RuleCheck<'a> {
    fn new(rule: &'a Rule, table: &'a TableInfo, out: &'a mut Vec<Diagnostic>) -> RuleCheck<'a> {
        RuleCheck {
            rule,
            table,
            out,
            at: format!("rule `{}`", rule.name),
            column_names: table.columns.iter().map(|c| c.name.as_str()).collect(),
            full: table.replica_identity == Some(ReplicaIdentity::Full),
            ident: identity_name(table.replica_identity),
            reported: BTreeSet::new(),
        }
    }

    fn push(&mut self, severity: Severity, field: &str, message: String) {
        let field = format!("{}.{field}", self.at);
        self.out.push(diag(self.rule, severity, field, message));
    }

    fn run(mut self, publication: Option<&PublicationInfo>) {
        self.changed();
        for (kind, template) in self.rule.actions.templates() {
            for (image, column) in template.columns() {
                if self.column_exists(kind.field(), column) {
                    self.template_column(kind.field(), &template.source, image, column);
                }
            }
        }
        if let Some(publication) = publication.filter(|p| p.exists) {
            self.publication(publication);
        }
    }

    /// Reports a missing column once; true when it exists.
    fn column_exists(&mut self, field: &str, column: &str) -> bool {
        if self.column_names.contains(&column) {
            return true;
        }
        if self.reported.insert(column.to_string()) {
            let hint = did_you_mean(column, &self.column_names)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            let message = format!("column `{column}` does not exist in {}{hint}", self.rule.table);
            self.push(Severity::Error, field, message);
        }
        false
    }

    /// `changed` columns exist, and updates carry their old values.
    fn changed(&mut self) {
        let rule = self.rule;
        for column in &rule.changed {
            self.column_exists("changed", column);
        }
        if rule.changed.is_empty() || self.full || !rule.on.contains(Op::Update) {
            return;
        }
        let outside: Vec<String> = rule
            .changed
            .iter()
            .filter(|c| !self.table.identity_columns.contains(*c))
            .map(|c| format!("`{c}`"))
            .collect();
        if !outside.is_empty() {
            let message = format!(
                "{} has REPLICA IDENTITY {}, so updates carry no old value of {}; `changed` cannot compare and the rule fires on every update; set REPLICA IDENTITY FULL to filter",
                rule.table,
                self.ident,
                outside.join(", ")
            );
            self.push(Severity::Warning, "changed", message);
        }
    }

    /// Whether the operations the rule listens to carry `column` in the image it reads.
    fn template_column(&mut self, field: &str, source: &str, image: Image, column: &str) {
        let (rule, ident) = (self.rule, self.ident);
        let has_fallback = rule.fallback.is_some();
        let in_identity = self.table.identity_columns.contains(column);
        if rule.on.contains(Op::Delete) && image != Image::New && !in_identity {
            let (severity, tail) = if has_fallback {
                (Severity::Warning, "the fallback will be applied on every delete")
            } else {
                (
                    Severity::Error,
                    "add a `fallback` to the rule or set REPLICA IDENTITY FULL",
                )
            };
            let message = format!(
                "`{source}`: a DELETE on {} carries only its replica identity ({ident}), which does not include `{column}`; {tail}",
                rule.table
            );
            self.push(severity, field, message);
        }
        if rule.on.contains(Op::Update) && !self.full && !in_identity {
            match image {
                Image::Any => {
                    let message = format!(
                        "`{source}`: updates of {} carry no old `{column}` (REPLICA IDENTITY {ident}), so old keys won't be invalidated when `{column}` changes (e.g. a move); set REPLICA IDENTITY FULL",
                        rule.table
                    );
                    self.push(Severity::Warning, field, message);
                }
                Image::Old => {
                    let severity = if has_fallback {
                        Severity::Warning
                    } else {
                        Severity::Error
                    };
                    let message = format!(
                        "`{source}`: `{{old.{column}}}` is not carried by updates of {} (REPLICA IDENTITY {ident}); set REPLICA IDENTITY FULL{}",
                        rule.table,
                        if has_fallback { "" } else { " or add a `fallback`" }
                    );
                    self.push(severity, field, message);
                }
                Image::New => {}
            }
        }
        let toastable = self.table.columns.iter().any(|c| c.name == column && c.toastable);
        // Identity (key) columns are always small enough for an index entry, so they are
        // never stored out of line; only other columns can arrive as unchanged TOAST.
        if toastable && !self.full && !in_identity && rule.on.contains(Op::Update) && image != Image::Old {
            let message = format!(
                "`{source}` uses TOAST-able column `{column}`: an UPDATE that leaves a large `{column}` unchanged does not carry it, so the key cannot be rendered ({}); set REPLICA IDENTITY FULL or key on another column",
                if has_fallback { "the fallback is used" } else { "reported as unrenderable" }
            );
            self.push(Severity::Warning, field, message);
        }
    }

    /// The rule's table is published, with every operation it listens to.
    fn publication(&mut self, publication: &PublicationInfo) {
        let rule = self.rule;
        // A partitioned table is published through its partitions (or as itself, with
        // publish_via_partition_root): either way its rows reach walbust.
        let via_partitions = self.table.partitions.iter().any(|p| publication.tables.contains(p));
        if !publication.tables.contains(&rule.table) && !via_partitions {
            let message = format!(
                "{} is not in publication `{}`, so its changes never reach walbust; run `ALTER PUBLICATION {} ADD TABLE {}`",
                rule.table,
                publication.name,
                quote_ident(&publication.name),
                rule.table.quoted()
            );
            self.push(Severity::Error, "table", message);
        }
        for op in rule.on.iter().filter(|op| !publication.publishes.contains(op)) {
            let message = format!(
                "publication `{}` does not publish {op}s, so this rule never sees them; set its `publish` option to include {op}",
                publication.name
            );
            self.push(Severity::Warning, "on", message);
        }
    }
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

/// What a target can hold besides plain keys (a memcached target holds neither).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetCapabilities {
    /// Tag sets (members to delete).
    pub tags: bool,
    /// `delete_matching` (a key scan).
    pub patterns: bool,
}

/// Errors for rules whose actions (or fallbacks) `target` cannot perform: such an action would
/// otherwise be skipped there — a lost invalidation — so the rules or the targets must change.
pub fn target_notes(rules: &RuleSet, target: &str, can: TargetCapabilities) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for rule in &rules.rules {
        let sets = std::iter::once(("", &rule.actions)).chain(rule.fallback.as_ref().map(|f| ("fallback.", f)));
        for (part, actions) in sets {
            if !can.tags && !actions.tags.is_empty() {
                out.push(diag(
                    rule,
                    Severity::Error,
                    format!("rule `{}`.{part}tags", rule.name),
                    format!(
                        "{target} cannot hold tags (no sets to find the tagged keys in); use version keys (`bump`) for this rule, or send it to a Redis target only"
                    ),
                ));
            }
            if !can.patterns && !actions.delete_matching.is_empty() {
                out.push(diag(
                    rule,
                    Severity::Error,
                    format!("rule `{}`.{part}delete_matching", rule.name),
                    format!("{target} cannot find keys by pattern (no scan); use version keys (`bump`) instead"),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::load_str;

    #[test]
    fn targets_without_tags_refuse_rules_with_tags_in_actions_or_fallbacks() {
        let text = "version: 1\nrules:\n  - name: p\n    table: products\n    on: [update, truncate]\n    delete: [\"p:{id}\"]\n    fallback:\n      tags: [\"all\"]\n  - name: q\n    table: products\n    on: [update]\n    bump: [\"v:{id}\"]\n";
        let rules = load_str("rules.yaml", text).unwrap().rules;
        let notes = target_notes(
            &rules,
            "memcached[0]",
            TargetCapabilities {
                tags: false,
                patterns: false,
            },
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        let text = notes[0].to_string();
        assert!(text.starts_with("rules.yaml:"), "{text}");
        assert!(
            text.contains("rule `p`.fallback.tags") && text.contains("memcached[0] cannot hold tags"),
            "{text}"
        );
        assert!(target_notes(
            &rules,
            "redis",
            TargetCapabilities {
                tags: true,
                patterns: true
            }
        )
        .is_empty());
    }

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
                partitions: Vec::new(),
            },
        );
        SchemaInfo {
            wal_level: "logical".into(),
            tables,
            publication: None,
            all_tables: Vec::new(),
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
        // Regression (issue: inputs, finding 11): a table name one letter off gets a suggestion.
        let mut s = schema(ReplicaIdentity::Full, &["id"]);
        s.all_tables = vec!["public.products".into(), "public.orders".into()];
        let msgs = messages(
            "version: 1\nrules:\n  - name: q\n    table: product\n    delete: [x]\n",
            &s,
        );
        assert!(
            msgs.iter().any(|m| m.contains("did you mean `public.products`")),
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
        // Suggested SQL runs as printed: identifiers quoted.
        assert!(
            msgs.iter()
                .any(|m| m.contains("`ALTER PUBLICATION \"pub\" ADD TABLE \"public\".\"products\"`")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("public.other is published")), "{msgs:?}");
    }

    /// Regression (issue: inputs, finding 8): a partitioned table is published through its
    /// partitions; check asked to add it (and asked again after it was added).
    #[test]
    fn a_partitioned_table_is_published_through_its_partitions() {
        let mut s = schema(ReplicaIdentity::Full, &["id", "category_id", "description"]);
        let partition = TableName {
            schema: "public".into(),
            name: "products_2026".into(),
        };
        if let Some(table) = s.tables.values_mut().next() {
            table.partitions = vec![partition.clone()];
        }
        s.publication = Some(PublicationInfo {
            name: "pub".into(),
            exists: true,
            tables: [partition].into_iter().collect(),
            publishes: [Op::Insert, Op::Update, Op::Delete].into_iter().collect(),
        });
        let msgs = messages(
            "version: 1\nrules:\n  - name: p\n    table: products\n    delete: [\"p:{id}\"]\n",
            &s,
        );
        assert!(!msgs.iter().any(|m| m.contains("not in publication")), "{msgs:?}");
        assert!(!msgs.iter().any(|m| m.contains("no rule covers it")), "{msgs:?}");
    }
}
