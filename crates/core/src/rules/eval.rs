//! Rule evaluation: one change in, rendered keys / fallbacks / unrenderable notes out.
//!
//! Rules are compiled once per relation version (column names resolved to positions), so the
//! per-change work is template rendering and set insertion. The semantics are those of
//! `docs/rules.md`: INSERT renders from the new row, DELETE from the old row, UPDATE from the
//! new row and also from the old row when the old row carries every `{col}` a template uses;
//! NULL skips a key; a value the change does not carry makes the template unrenderable, which
//! adds the rule's fallback (or an unrenderable note) once for that change.

use super::actions::{FastState, Note, TxnPlan};
use super::template::{glob_escape_into, Image, Part};
use super::{ActionKind, Rule, RuleSet};
use crate::model::{Change, Datum, Op, Relation, RowChange};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

#[derive(Debug)]
enum CPart {
    Literal(String),
    Column {
        index: Option<usize>,
        image: Image,
        name: String,
    },
}

#[derive(Debug)]
struct CompiledTemplate {
    kind: ActionKind,
    /// Length of the rule prefix at the start of every rendering.
    prefix_len: usize,
    /// For tags: `<rule prefix><tag_prefix>`, the start of the tag's Redis set key.
    tag_key_prefix: String,
    /// The rule prefix, glob-escaped for delete_matching.
    prefix: String,
    parts: Vec<CPart>,
    /// Indices of `{col}` placeholders (None: column unknown to the relation).
    any_columns: Vec<Option<usize>>,
}

#[derive(Debug)]
struct CompiledRule {
    rule: usize,
    /// Column positions of `changed`, None when the relation has no such column.
    changed: Vec<Option<usize>>,
    templates: Vec<CompiledTemplate>,
    /// Fallback keys, prefixed (and escaped for patterns), with the set key for tags.
    fallback: Option<Vec<(ActionKind, String, String)>>,
}

/// What a template rendering came to.
enum Rendered {
    Key,
    /// A NULL value: no key for this rendering.
    Null,
    /// A value the change does not carry.
    Missing(String),
}

/// Settings the daemon and dry-run share, so both plan the same keys.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Prefix of tag set keys, after the rules prefix (`shop:` + `tag:` + `category:5`).
    pub tag_prefix: String,
    /// Fan-out breaker: a rule that renders more keys than this in one transaction applies its
    /// fallback instead (rules without a fallback keep rendering).
    pub max_keys_per_transaction: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            tag_prefix: "tag:".into(),
            max_keys_per_transaction: 10_000,
        }
    }
}

/// Evaluates changes against a rule set; caches compiled rules per relation version.
pub struct Engine {
    rules: Arc<RuleSet>,
    options: EngineOptions,
    /// By relation version id (process-made, not input): the fast hasher, looked up per change.
    compiled: HashMap<u64, Arc<Vec<CompiledRule>>, FastState>,
    /// Partition (schema, name) → the partitioned table whose rules apply to it.
    partition_parents: HashMap<(String, String), super::TableName>,
    buf: String,
    tag_buf: String,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>) -> Engine {
        Engine::with_options(rules, EngineOptions::default())
    }

    pub fn with_options(rules: Arc<RuleSet>, options: EngineOptions) -> Engine {
        Engine {
            rules,
            options,
            compiled: HashMap::default(),
            partition_parents: HashMap::new(),
            buf: String::with_capacity(128),
            tag_buf: String::with_capacity(128),
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Whether any rule names this table (or, for a partition, its partitioned parent).
    pub fn has_rules_for(&self, relation: &Relation) -> bool {
        !self.rules.rules_for(&relation.schema, &relation.name).is_empty()
            || self
                .partition_parents
                .contains_key(&(relation.schema.clone(), relation.name.clone()))
    }

    /// Changes of the partition `partition` are evaluated with the rules of `parent` (a
    /// partitioned table; pgoutput names the partition unless the publication sets
    /// `publish_via_partition_root`).
    pub fn set_partition_parent(&mut self, partition: super::TableName, parent: super::TableName) {
        self.partition_parents
            .insert((partition.schema, partition.name), parent);
        self.compiled.clear();
    }

    /// Maps every partition that has no rules of its own to its nearest ancestor with rules;
    /// returns the pairs mapped.
    pub fn map_partitions(&mut self, partitions: &[super::PartitionOf]) -> Vec<(super::TableName, super::TableName)> {
        let mut mapped = Vec::new();
        for p in partitions {
            if !self
                .rules()
                .rules_for(&p.partition.schema, &p.partition.name)
                .is_empty()
            {
                continue;
            }
            let parent = p
                .ancestors
                .iter()
                .find(|a| !self.rules().rules_for(&a.schema, &a.name).is_empty());
            if let Some(parent) = parent.cloned() {
                self.set_partition_parent(p.partition.clone(), parent.clone());
                mapped.push((p.partition.clone(), parent));
            }
        }
        mapped
    }

    /// Adds the actions of one change to `plan`.
    pub fn evaluate(&mut self, change: &Change, plan: &mut TxnPlan) {
        plan.changes += 1;
        match change {
            Change::Row(row) => self.evaluate_row(row, plan),
            Change::Truncate(truncate) => {
                for relation in &truncate.relations {
                    let compiled = self.compiled_for(relation);
                    for cr in compiled.iter() {
                        let rule = &self.rules.rules[cr.rule];
                        if !rule.on.contains(Op::Truncate) {
                            continue;
                        }
                        apply_fallback(
                            rule,
                            cr,
                            relation,
                            Op::Truncate,
                            "TRUNCATE names no rows; every row of the table is gone".into(),
                            plan,
                        );
                    }
                }
            }
        }
    }

    fn compiled_for(&mut self, relation: &Relation) -> Arc<Vec<CompiledRule>> {
        if let Some(c) = self.compiled.get(&relation.id) {
            return c.clone();
        }
        let mut rules = self.rules.rules_for(&relation.schema, &relation.name);
        if rules.is_empty() {
            if let Some(parent) = self
                .partition_parents
                .get(&(relation.schema.clone(), relation.name.clone()))
            {
                rules = self.rules.rules_for(&parent.schema, &parent.name);
            }
        }
        let compiled: Vec<CompiledRule> = rules
            .iter()
            .map(|&idx| compile(idx, &self.rules.rules[idx], relation, &self.options.tag_prefix))
            .collect();
        let compiled = Arc::new(compiled);
        // Relation versions are few; a stream that keeps making new ones (ALTER TABLE in a
        // loop) must not grow this map without bound.
        if self.compiled.len() > 10_000 {
            self.compiled.clear();
        }
        self.compiled.insert(relation.id, compiled.clone());
        compiled
    }

    fn evaluate_row(&mut self, row: &RowChange, plan: &mut TxnPlan) {
        let compiled = self.compiled_for(&row.relation);
        for cr in compiled.iter() {
            let rule = &self.rules.rules[cr.rule];
            if !rule.on.contains(row.op) {
                continue;
            }
            if row.op == Op::Update && !cr.changed.is_empty() && !changed_fires(cr, row) {
                continue;
            }
            if plan.is_escalated(cr.rule) {
                // Past the fan-out limit in this transaction: its fallback already applies.
                continue;
            }
            let mut missing: Option<String> = None;
            let mut rendered = 0usize;
            for template in &cr.templates {
                let passes: &[Image] = match row.op {
                    Op::Insert => &[Image::New],
                    Op::Delete => &[Image::Old],
                    Op::Update => {
                        if old_pass_applies(template, row) {
                            &[Image::New, Image::Old]
                        } else {
                            &[Image::New]
                        }
                    }
                    Op::Truncate => &[],
                };
                for &pass in passes {
                    match render(template, row, pass, &mut self.buf) {
                        Rendered::Key => {
                            let new = if template.kind == ActionKind::Tags {
                                self.tag_buf.clear();
                                self.tag_buf.push_str(&template.tag_key_prefix);
                                self.tag_buf.push_str(&self.buf[template.prefix_len..]);
                                plan.add_tag(&self.buf, &self.tag_buf, cr.rule)
                            } else {
                                plan.add(template.kind, &self.buf, cr.rule)
                            };
                            if let (ActionKind::Delete, Some(delay)) = (template.kind, rule.redelete_after) {
                                let entry = plan.redelete.entry(self.buf.clone()).or_default();
                                *entry = (*entry).max(delay);
                            }
                            rendered += usize::from(new);
                        }
                        Rendered::Null => {}
                        Rendered::Missing(reason) => {
                            if missing.is_none() {
                                missing = Some(reason);
                            }
                        }
                    }
                }
            }
            let limit = self.options.max_keys_per_transaction;
            if plan.count_keys(cr.rule, rendered) > limit && cr.fallback.is_some() {
                plan.escalate(cr.rule);
                apply_fallback(
                    rule,
                    cr,
                    &row.relation,
                    row.op,
                    format!("fan-out: more than {limit} keys in one transaction (max_keys_per_transaction); the fallback replaces the rest"),
                    plan,
                );
            }
            for channel in &rule.actions.publish {
                plan.add_publish(channel);
            }
            if let Some(reason) = missing {
                if cr.fallback.is_some() {
                    apply_fallback(rule, cr, &row.relation, row.op, reason, plan);
                } else {
                    plan.unrenderable.insert(Note {
                        rule: rule.name.clone(),
                        table: row.relation.qualified_name(),
                        op: row.op,
                        reason,
                    });
                }
            }
        }
    }
}

fn apply_fallback(rule: &Rule, cr: &CompiledRule, relation: &Relation, op: Op, reason: String, plan: &mut TxnPlan) {
    if let Some(keys) = &cr.fallback {
        for (kind, key, tag_key) in keys {
            if *kind == ActionKind::Tags {
                plan.add_tag(key, tag_key, cr.rule);
            } else {
                plan.add(*kind, key, cr.rule);
            }
        }
    }
    if let Some(fb) = &rule.fallback {
        for channel in &fb.publish {
            plan.add_publish(channel);
        }
    }
    plan.fallbacks.insert(Note {
        rule: rule.name.clone(),
        table: relation.qualified_name(),
        op,
        reason,
    });
}

fn compile(idx: usize, rule: &Rule, relation: &Relation, tag_prefix: &str) -> CompiledRule {
    let templates = rule
        .actions
        .templates()
        .map(|(kind, template)| {
            let mut prefix = String::new();
            if kind == ActionKind::DeleteMatching {
                glob_escape_into(&mut prefix, &rule.prefix);
            } else {
                prefix.push_str(&rule.prefix);
            }
            let parts: Vec<CPart> = template
                .parts
                .iter()
                .map(|p| match p {
                    Part::Literal(s) => CPart::Literal(s.clone()),
                    Part::Column { image, name } => CPart::Column {
                        index: relation.column_index(name),
                        image: *image,
                        name: name.clone(),
                    },
                })
                .collect();
            let any_columns = parts
                .iter()
                .filter_map(|p| match p {
                    CPart::Column {
                        index,
                        image: Image::Any,
                        ..
                    } => Some(*index),
                    _ => None,
                })
                .collect();
            CompiledTemplate {
                kind,
                prefix_len: prefix.len(),
                tag_key_prefix: format!("{}{tag_prefix}", rule.prefix),
                prefix,
                parts,
                any_columns,
            }
        })
        .collect();
    let fallback = rule.fallback.as_ref().map(|fb| {
        fb.templates()
            .map(|(kind, template)| {
                let mut key = String::new();
                if kind == ActionKind::DeleteMatching {
                    glob_escape_into(&mut key, &rule.prefix);
                } else {
                    key.push_str(&rule.prefix);
                }
                let literal = template.source.replace("{{", "{").replace("}}", "}");
                key.push_str(&literal);
                (kind, key, format!("{}{tag_prefix}{literal}", rule.prefix))
            })
            .collect()
    });
    CompiledRule {
        rule: idx,
        changed: rule.changed.iter().map(|c| relation.column_index(c)).collect(),
        templates,
        fallback,
    }
}

/// `changed`: fire when any listed column differs, or when its old value is unknown. A TOASTed
/// value the UPDATE did not change (pgoutput 'u') counts as unchanged, with or without an old
/// image: PostgreSQL leaves it out exactly because it did not change.
fn changed_fires(cr: &CompiledRule, row: &RowChange) -> bool {
    let Some(new) = &row.new else {
        return true;
    };
    cr.changed.iter().any(|index| {
        let Some(i) = *index else { return true };
        match (&new[i], row.old.as_ref().map(|old| &old[i])) {
            (Datum::UnchangedToast, _) => false,
            (Datum::Absent, _) | (_, None | Some(Datum::Absent | Datum::UnchangedToast)) => true,
            (n, Some(o)) => n != o,
        }
    })
}

/// UPDATE also renders from the old row when it carries every `{col}` of the template.
fn old_pass_applies(template: &CompiledTemplate, row: &RowChange) -> bool {
    let Some(old) = &row.old else { return false };
    !template.any_columns.is_empty()
        && template
            .any_columns
            .iter()
            .all(|i| i.is_some_and(|i| old[i].is_known()))
}

fn render(template: &CompiledTemplate, row: &RowChange, pass: Image, out: &mut String) -> Rendered {
    out.clear();
    out.push_str(&template.prefix);
    let escape = template.kind == ActionKind::DeleteMatching;
    // A NULL anywhere means the key does not exist, whatever the other columns hold, so it wins
    // over a column the WAL does not carry, in whichever order they appear.
    let mut missing = None;
    for part in &template.parts {
        match part {
            CPart::Literal(s) => out.push_str(s),
            CPart::Column { index, image, name } => {
                let image = if *image == Image::Any { pass } else { *image };
                let Some(index) = *index else {
                    missing.get_or_insert_with(|| {
                        if row.relation.columns_inferred {
                            format!(
                                "`{name}` is not carried by the changes of {} in this sample so far (a sample lists only the columns a change carries: a key-only DELETE, or an UPDATE that left a TOASTed value out); the daemon sees the table's columns",
                                row.relation.qualified_name()
                            )
                        } else {
                            format!(
                                "`{name}` is not a column of {} as the WAL describes it; fix the rule or the schema",
                                row.relation.qualified_name()
                            )
                        }
                    });
                    continue;
                };
                match lookup(row, image, index, name) {
                    Ok(Some(value)) => {
                        if escape {
                            glob_escape_into(out, value);
                        } else {
                            out.push_str(value);
                        }
                    }
                    Ok(None) => return Rendered::Null,
                    Err(reason) => {
                        missing.get_or_insert(reason);
                    }
                }
            }
        }
    }
    match missing {
        Some(reason) => Rendered::Missing(reason),
        None => Rendered::Key,
    }
}

/// The value of one column in one image: `Ok(None)` for NULL, `Err` when not carried.
fn lookup<'r>(row: &'r RowChange, image: Image, index: usize, name: &str) -> Result<Option<&'r str>, String> {
    let known = |d: &'r Datum| match d {
        Datum::Text(s) => Some(Some(s.as_str())),
        Datum::Null => Some(None),
        _ => None,
    };
    match image {
        Image::New | Image::Any => {
            let Some(new) = &row.new else {
                return Err(format!("`{{new.{name}}}`: a {} has no new row", row.op));
            };
            match &new[index] {
                Datum::UnchangedToast => row
                    .old
                    .as_ref()
                    .and_then(|old| known(&old[index]))
                    .ok_or_else(|| {
                        format!(
                            "`{name}` is an unchanged TOAST value the WAL does not carry; set REPLICA IDENTITY FULL on {} or avoid this column in keys",
                            row.relation.qualified_name()
                        )
                    }),
                d => known(d).ok_or_else(|| format!("`{name}` is not in the new row of this {}", row.op)),
            }
        }
        Image::Old => {
            let Some(old) = &row.old else {
                // An update without an old key tuple left its replica identity unchanged: a key
                // column's old value is its new one (pgoutput marks key columns; so does
                // wal2json's `identity`).
                if row.op == Op::Update && row.relation.columns.get(index).is_some_and(|c| c.is_key) {
                    if let Some(value) = row.new.as_ref().and_then(|new| known(&new[index])) {
                        return Ok(value);
                    }
                }
                return Err(match row.op {
                    Op::Insert => format!("`{{old.{name}}}`: an insert has no old row"),
                    Op::Update => format!(
                        "`{name}` needs the old row, which the WAL does not carry for this update (key unchanged, replica identity not FULL); set REPLICA IDENTITY FULL on {}",
                        row.relation.qualified_name()
                    ),
                    _ => format!(
                        "`{name}` needs the old row, which the WAL does not carry (REPLICA IDENTITY NOTHING on {})",
                        row.relation.qualified_name()
                    ),
                });
            };
            match &old[index] {
                Datum::Text(s) => Ok(Some(s.as_str())),
                Datum::Null => Ok(None),
                Datum::UnchangedToast => Err(format!(
                    "old `{name}` is a TOAST value the WAL does not carry; set REPLICA IDENTITY FULL on {}",
                    row.relation.qualified_name()
                )),
                Datum::Absent => {
                    let mut reason = String::new();
                    let _ = write!(
                        reason,
                        "`{name}` is not in the old row of this {} (the WAL carries only replica identity columns; REPLICA IDENTITY FULL on {} would carry it)",
                        row.op,
                        row.relation.qualified_name()
                    );
                    Err(reason)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Column, Truncate};
    use crate::plan::PlannedTxn;
    use crate::rules::load_str;

    const RULES: &str = r#"
version: 1
prefix: "shop:"
rules:
  - name: product-detail
    table: public.products
    on: [insert, update, delete, truncate]
    delete: ["product:{id}", "product:{id}:json"]
    bump: ["ver:product:{id}"]
    tags: ["category:{category_id}"]
    publish: ["inval"]
    fallback:
      bump: ["ver:products"]
  - name: price-watch
    table: products
    on: [update]
    changed: [price_cents]
    delete: ["price:{id}"]
  - name: old-new
    table: products
    on: [update]
    delete: ["move:{old.category_id}->{new.category_id}"]
  - name: search
    table: products
    on: [insert]
    delete_matching: ["search:{name}:*"]
  - name: no-fallback
    table: reviews
    delete: ["reviews:{product_id}"]
"#;

    fn relation(name: &str, cols: &[&str]) -> Arc<Relation> {
        Arc::new(Relation::new(
            "public",
            name,
            cols.iter().map(|c| Column::named(*c)).collect(),
        ))
    }

    fn products() -> Arc<Relation> {
        relation("products", &["id", "category_id", "name", "price_cents", "description"])
    }

    fn t(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    fn plan_of(changes: Vec<Change>) -> PlannedTxn {
        let rules = Arc::new(load_str("r.yaml", RULES).unwrap().rules);
        let mut planner = crate::plan::Planner::new(rules, false);
        planner.push(&crate::model::Event::Begin {
            xid: Some(1),
            final_lsn: None,
        });
        for c in changes {
            planner.push(&crate::model::Event::Change(c));
        }
        planner.push(&crate::model::Event::Commit(Default::default())).unwrap()
    }

    fn row(rel: &Arc<Relation>, op: Op, old: Option<Vec<Datum>>, new: Option<Vec<Datum>>) -> Change {
        Change::Row(RowChange {
            relation: rel.clone(),
            op,
            old,
            new,
        })
    }

    #[test]
    fn insert_renders_from_new_row() {
        let p = products();
        let txn = plan_of(vec![row(
            &p,
            Op::Insert,
            None,
            Some(vec![t("1"), t("5"), t("Mug"), t("100"), t("d")]),
        )]);
        assert_eq!(txn.delete, vec!["shop:product:1", "shop:product:1:json"]);
        assert_eq!(txn.bump, vec!["shop:ver:product:1"]);
        assert_eq!(txn.tags, vec!["shop:category:5"]);
        assert_eq!(txn.delete_matching, vec!["shop:search:Mug:*"]);
        assert_eq!(txn.publish, vec!["inval"]);
        assert!(txn.fallbacks.is_empty() && txn.unrenderable.is_empty());
    }

    #[test]
    fn update_with_full_old_row_invalidates_both_categories() {
        let p = products();
        let old = vec![t("1"), t("5"), t("Mug"), t("100"), t("d")];
        let new = vec![t("1"), t("7"), t("Mug"), t("100"), Datum::UnchangedToast];
        let txn = plan_of(vec![row(&p, Op::Update, Some(old), Some(new))]);
        assert_eq!(txn.tags, vec!["shop:category:5", "shop:category:7"]);
        assert_eq!(
            txn.delete,
            vec!["shop:move:5->7", "shop:product:1", "shop:product:1:json"]
        );
        // price unchanged → price-watch does not fire
        assert!(!txn.delete.iter().any(|k| k.contains("price:")));
    }

    #[test]
    fn update_without_old_row_renders_new_only_and_changed_fires() {
        let p = products();
        let new = vec![t("1"), t("7"), t("Mug"), t("100"), Datum::UnchangedToast];
        let txn = plan_of(vec![row(&p, Op::Update, None, Some(new))]);
        assert_eq!(txn.tags, vec!["shop:category:7"]);
        // changed: old value unknown → fires
        assert!(txn.delete.contains(&"shop:price:1".to_string()));
        // {old.category_id} cannot render, old-new has no fallback → unrenderable
        assert_eq!(txn.unrenderable.len(), 1);
        assert_eq!(txn.unrenderable[0].rule, "old-new");
    }

    /// Regression (found by the cross-format property test): an UPDATE that sends no old key
    /// kept its replica identity, so `{old.<key column>}` is the new value — wal2json (whose
    /// `identity` always carries it) rendered it, pgoutput said "needs the old row".
    #[test]
    fn an_update_without_an_old_key_renders_old_key_columns_from_the_new_row() {
        let mut columns: Vec<Column> = ["id", "category_id", "name", "price_cents", "description"]
            .iter()
            .map(|c| Column::named(*c))
            .collect();
        columns[0].is_key = true;
        let keyed = Arc::new(Relation::new("public", "products", columns));
        let rules = r#"
version: 1
rules:
  - name: old-key
    table: products
    on: [update]
    delete: ["old:{old.id}"]
  - name: old-other
    table: products
    on: [update]
    delete: ["cat:{old.category_id}"]
"#;
        let rules = Arc::new(load_str("r.yaml", rules).unwrap().rules);
        let mut planner = crate::plan::Planner::new(rules, false);
        planner.push(&crate::model::Event::Begin {
            xid: Some(1),
            final_lsn: None,
        });
        let new = vec![t("1"), t("7"), t("Mug"), t("100"), t("d")];
        planner.push(&crate::model::Event::Change(row(&keyed, Op::Update, None, Some(new))));
        let txn = planner.push(&crate::model::Event::Commit(Default::default())).unwrap();
        assert_eq!(txn.delete, vec!["old:1"]);
        // A column outside the identity still needs the old row.
        assert_eq!(txn.unrenderable.len(), 1);
        assert_eq!(txn.unrenderable[0].rule, "old-other");
    }

    /// Regression (issue: inputs, finding 6): an UPDATE of another column on a row whose
    /// watched value is stored out of line (TOAST, not sent: unchanged) and no old image
    /// (default replica identity) fired `changed`.
    #[test]
    fn an_unchanged_toast_value_is_unchanged_without_an_old_image() {
        let p = products();
        let new = vec![t("1"), t("7"), t("Mug"), Datum::UnchangedToast, t("d")];
        let txn = plan_of(vec![row(&p, Op::Update, None, Some(new))]);
        assert!(!txn.delete.iter().any(|k| k.contains("price:")), "{:?}", txn.delete);
    }

    /// Regression (issue: inputs, finding 13): in a sample whose first change of a table was a
    /// key-only DELETE, a later reference to another column was reported as "not a column …
    /// fix the rule or the schema".
    #[test]
    fn a_column_a_sample_has_not_shown_is_not_called_missing_from_the_schema() {
        let mut rel = Relation::new("public", "reviews", vec![Column::named("id")]);
        rel.columns_inferred = true;
        let rel = Arc::new(rel);
        let txn = plan_of(vec![row(&rel, Op::Delete, Some(vec![t("3")]), None)]);
        let reason = &txn.unrenderable[0].reason;
        assert!(reason.contains("not carried by the changes"), "{reason}");
        assert!(!reason.contains("fix the rule or the schema"), "{reason}");
    }

    #[test]
    fn changed_is_null_aware() {
        let p = products();
        let old = vec![t("1"), t("5"), t("Mug"), Datum::Null, t("d")];
        let new = vec![t("1"), t("5"), t("Mug"), Datum::Null, t("d")];
        let txn = plan_of(vec![row(&p, Op::Update, Some(old.clone()), Some(new))]);
        assert!(!txn.delete.iter().any(|k| k.contains("price:")));
        let new = vec![t("1"), t("5"), t("Mug"), t("1"), t("d")];
        let txn = plan_of(vec![row(&p, Op::Update, Some(old), Some(new))]);
        assert!(txn.delete.contains(&"shop:price:1".to_string()));
    }

    #[test]
    fn delete_with_key_only_old_row_uses_fallback() {
        let p = products();
        let old = vec![t("9"), Datum::Absent, Datum::Absent, Datum::Absent, Datum::Absent];
        let txn = plan_of(vec![row(&p, Op::Delete, Some(old), None)]);
        assert_eq!(txn.delete, vec!["shop:product:9", "shop:product:9:json"]);
        assert_eq!(txn.bump, vec!["shop:ver:product:9", "shop:ver:products"]);
        assert!(txn.tags.is_empty());
        assert_eq!(txn.fallbacks.len(), 1);
        assert!(txn.fallbacks[0].reason.contains("category_id"), "{:?}", txn.fallbacks);
    }

    #[test]
    fn delete_without_fallback_is_reported_unrenderable() {
        let r = relation("reviews", &["id", "product_id"]);
        let txn = plan_of(vec![row(&r, Op::Delete, Some(vec![t("3"), Datum::Absent]), None)]);
        assert!(txn.delete.is_empty());
        assert_eq!(txn.unrenderable.len(), 1);
        assert_eq!(txn.unrenderable[0].table, "public.reviews");
        assert!(txn.has_output());
    }

    #[test]
    fn null_skips_one_key_only() {
        let p = products();
        let txn = plan_of(vec![row(
            &p,
            Op::Insert,
            None,
            Some(vec![t("1"), Datum::Null, t("x"), t("1"), t("d")]),
        )]);
        assert!(txn.tags.is_empty());
        assert_eq!(txn.delete.len(), 2);
        assert!(txn.fallbacks.is_empty() && txn.unrenderable.is_empty());
    }

    #[test]
    fn null_wins_over_not_carried_in_either_order() {
        let rules = "version: 1\nrules:\n  - name: a\n    table: products\n    on: [update]\n    delete: [\"k:{category_id}:{description}\"]\n  - name: b\n    table: products\n    on: [update]\n    delete: [\"k:{description}:{category_id}\"]\n";
        let rules = Arc::new(load_str("r.yaml", rules).unwrap().rules);
        let mut planner = crate::plan::Planner::new(rules, false);
        planner.push(&crate::model::Event::Begin {
            xid: Some(1),
            final_lsn: None,
        });
        // category_id is NULL; description is an unchanged TOAST value the WAL does not carry.
        planner.push(&crate::model::Event::Change(row(
            &products(),
            Op::Update,
            None,
            Some(vec![t("1"), Datum::Null, t("x"), t("1"), Datum::UnchangedToast]),
        )));
        let txn = planner.push(&crate::model::Event::Commit(Default::default())).unwrap();
        assert!(txn.delete.is_empty(), "{:?}", txn.delete);
        assert!(txn.unrenderable.is_empty(), "{:?}", txn.unrenderable);
    }

    #[test]
    fn glob_values_are_escaped_in_patterns() {
        let p = products();
        let txn = plan_of(vec![row(
            &p,
            Op::Insert,
            None,
            Some(vec![t("1"), t("5"), t("*"), t("1"), t("d")]),
        )]);
        assert_eq!(txn.delete_matching, vec![r"shop:search:\*:*"]);
    }

    #[test]
    fn truncate_applies_fallback_of_rules_listing_it() {
        let p = products();
        let r = relation("reviews", &["id", "product_id"]);
        let txn = plan_of(vec![Change::Truncate(Truncate {
            relations: vec![p, r],
            cascade: false,
            restart_identity: false,
        })]);
        assert_eq!(txn.bump, vec!["shop:ver:products"]);
        assert_eq!(txn.fallbacks.len(), 1);
        assert_eq!(txn.fallbacks[0].op, Op::Truncate);
        assert!(txn.unrenderable.is_empty());
    }

    #[test]
    fn dedup_across_changes_in_a_transaction() {
        let p = products();
        let ins = |id: &str| row(&p, Op::Insert, None, Some(vec![t(id), t("5"), t("x"), t("1"), t("d")]));
        let txn = plan_of(vec![ins("1"), ins("1"), ins("2")]);
        assert_eq!(txn.changes, 3);
        assert_eq!(txn.tags, vec!["shop:category:5"]);
        assert_eq!(txn.bump.len(), 2);
    }

    #[test]
    fn tag_keys_put_the_tag_prefix_after_the_rules_prefix() {
        let p = products();
        let txn = plan_of(vec![row(
            &p,
            Op::Insert,
            None,
            Some(vec![t("1"), t("5"), t("x"), t("1"), t("d")]),
        )]);
        assert_eq!(txn.tags, vec!["shop:category:5"]);
        assert_eq!(txn.tag_keys, vec!["shop:tag:category:5"]);
    }

    #[test]
    fn fan_out_breaker_escalates_to_the_fallback() {
        let rules = Arc::new(load_str("r.yaml", RULES).unwrap().rules);
        let options = EngineOptions {
            max_keys_per_transaction: 10,
            ..EngineOptions::default()
        };
        let mut planner = crate::plan::Planner::with_options(rules, false, options);
        let p = products();
        planner.push(&crate::model::Event::Begin {
            xid: Some(1),
            final_lsn: None,
        });
        for i in 0..100 {
            let id = i.to_string();
            let change = row(&p, Op::Insert, None, Some(vec![t(&id), t("5"), t("x"), t("1"), t("d")]));
            planner.push(&crate::model::Event::Change(change));
        }
        let txn = planner.push(&crate::model::Event::Commit(Default::default())).unwrap();
        assert!(txn.delete.len() <= 12, "{}", txn.delete.len());
        assert!(txn.bump.contains(&"shop:ver:products".to_string()));
        assert!(
            txn.fallbacks.iter().any(|f| f.reason.contains("fan-out")),
            "{:?}",
            txn.fallbacks
        );
    }

    #[test]
    fn missing_column_in_relation_is_unrenderable_with_reason() {
        let p = relation("products", &["id", "name"]);
        let txn = plan_of(vec![row(&p, Op::Insert, None, Some(vec![t("1"), t("x")]))]);
        assert!(
            txn.fallbacks.iter().any(|n| n.reason.contains("not a column")),
            "{:?}",
            txn.fallbacks
        );
    }

    /// A large transaction goes out in parts: every key of every part, bumps at the commit LSN
    /// BEGIN announced, no position in a part; the commit brings the rest.
    #[test]
    fn a_transaction_is_taken_in_parts_with_the_commit_lsn_from_begin() {
        let rules = Arc::new(load_str("r.yaml", RULES).unwrap().rules);
        let mut planner = crate::plan::Planner::new(rules, false);
        let p = products();
        let insert = |id: u32| {
            crate::model::Event::Change(row(
                &p,
                Op::Insert,
                None,
                Some(vec![t(&id.to_string()), t("5"), t("n"), t("1"), t("d")]),
            ))
        };
        assert!(planner.take_part().is_none(), "outside a transaction");
        planner.push(&crate::model::Event::Begin {
            xid: Some(1),
            final_lsn: Some(crate::model::Lsn(900)),
        });
        for id in 0..10 {
            planner.push(&insert(id));
        }
        assert!(planner.pending_keys() >= 30);
        let part = planner.take_part().unwrap();
        assert_eq!(part.commit.lsn, Some(crate::model::Lsn(900)));
        assert_eq!(part.commit.end_lsn, None, "a part carries no position");
        assert_eq!(part.bump.len(), 10);
        assert_eq!(planner.pending_keys(), 0);
        for id in 10..15 {
            planner.push(&insert(id));
        }
        let commit = crate::model::CommitInfo {
            lsn: Some(crate::model::Lsn(900)),
            end_lsn: Some(crate::model::Lsn(950)),
            ..Default::default()
        };
        let rest = planner.push(&crate::model::Event::Commit(commit)).unwrap();
        assert_eq!(rest.bump.len(), 5);
        assert_eq!(rest.changes, 5);
        assert!(
            rest.publish.contains(&"inval".to_string()),
            "the commit still announces"
        );
        let mut batch = crate::plan::Batch::default();
        batch.add_part(part);
        assert!(!batch.is_empty() && batch.last_end.is_none());
        batch.add_owned(rest);
        assert_eq!(batch.merged().bump.len(), 15);
        assert!(batch.merged().bump.values().all(|v| *v == 900));
        assert_eq!(batch.last_end, Some(crate::model::Lsn(950)));
        // Without a commit LSN at BEGIN (sample formats) there are no parts.
        planner.push(&crate::model::Event::Begin {
            xid: None,
            final_lsn: None,
        });
        planner.push(&insert(1));
        assert!(planner.take_part().is_none());
    }
}
