//! Rules: the YAML rules format v1 (see `docs/rules.md`), its loading and static validation
//! ([`load`]), and evaluation of row changes against it ([`eval`]).
//!
//! Loading collects every problem it finds as a [`Diagnostic`] naming file, line, column
//! and field, instead of stopping at the first one.

pub mod actions;
pub mod check;
pub mod eval;
pub mod load;
pub mod schema;
pub mod template;
pub mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use load::{load_path, load_str};
use template::Template;
pub use yaml::Pos;

use crate::model::Op;

/// A relation name: schema and table, both exact (case-sensitive).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

/// A partition and its ancestors, nearest first (from `pg_partition_ancestors`): a capture
/// records them, and `dry-run --db` looks them up, so rules on a partitioned table apply to
/// changes that name its partitions, as in the daemon.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionOf {
    pub partition: TableName,
    pub ancestors: Vec<TableName>,
}

impl TableName {
    /// Parses `table`, `schema.table`, with optional double quotes around either part
    /// (`forum."Tags"`). Unquoted names are *not* case-folded.
    pub fn parse(text: &str) -> Result<TableName, String> {
        let mut parts = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    if c == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            part.push('"');
                        } else {
                            closed = true;
                            break;
                        }
                    } else {
                        part.push(c);
                    }
                }
                if !closed {
                    return Err(format!("unclosed `\"` in table name `{text}`"));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '"' {
                        return Err(format!(
                            "unexpected `\"` in table name `{text}`; quote a whole part, e.g. forum.\"Tags\""
                        ));
                    }
                    part.push(c);
                    chars.next();
                }
            }
            if part.is_empty() {
                return Err(format!(
                    "empty name part in table `{text}`; write `schema.table` or `table`"
                ));
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(c) => return Err(format!("unexpected `{c}` after a quoted name in table `{text}`")),
            }
        }
        match parts.len() {
            1 => Ok(TableName {
                schema: "public".into(),
                name: parts.pop().unwrap_or_default(),
            }),
            2 => {
                let name = parts.pop().unwrap_or_default();
                let schema = parts.pop().unwrap_or_default();
                Ok(TableName { schema, name })
            }
            _ => Err(format!(
                "too many dots in table `{text}`; write `schema.table` (quote names containing dots)"
            )),
        }
    }
}

impl TableName {
    /// `"schema"."name"`: the name as SQL, runnable as printed whatever its case or characters.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Double-quotes an SQL identifier (doubling any `"` inside).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// The operations a rule listens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OpSet(u8);

impl OpSet {
    pub fn default_ops() -> OpSet {
        let mut set = OpSet::default();
        set.insert(Op::Insert);
        set.insert(Op::Update);
        set.insert(Op::Delete);
        set
    }
    fn bit(op: Op) -> u8 {
        match op {
            Op::Insert => 1,
            Op::Update => 2,
            Op::Delete => 4,
            Op::Truncate => 8,
        }
    }
    pub fn insert(&mut self, op: Op) {
        self.0 |= Self::bit(op);
    }
    pub fn contains(self, op: Op) -> bool {
        self.0 & Self::bit(op) != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Op> {
        [Op::Insert, Op::Update, Op::Delete, Op::Truncate]
            .into_iter()
            .filter(move |op| self.contains(*op))
    }
}

/// The kinds of action a rule can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionKind {
    Delete,
    Bump,
    Tags,
    DeleteMatching,
}

impl ActionKind {
    pub const ALL: [ActionKind; 4] = [
        ActionKind::Delete,
        ActionKind::Bump,
        ActionKind::Tags,
        ActionKind::DeleteMatching,
    ];
    pub fn field(self) -> &'static str {
        match self {
            ActionKind::Delete => "delete",
            ActionKind::Bump => "bump",
            ActionKind::Tags => "tags",
            ActionKind::DeleteMatching => "delete_matching",
        }
    }
}

/// A rule's templated actions (or, for fallbacks, fixed keys parsed as templates without
/// placeholders).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    pub delete: Vec<Template>,
    pub bump: Vec<Template>,
    pub tags: Vec<Template>,
    pub delete_matching: Vec<Template>,
    /// Channel names (literal, never prefixed).
    pub publish: Vec<String>,
}

impl Actions {
    pub fn of(&self, kind: ActionKind) -> &[Template] {
        match kind {
            ActionKind::Delete => &self.delete,
            ActionKind::Bump => &self.bump,
            ActionKind::Tags => &self.tags,
            ActionKind::DeleteMatching => &self.delete_matching,
        }
    }
    pub fn is_empty(&self) -> bool {
        ActionKind::ALL.iter().all(|k| self.of(*k).is_empty()) && self.publish.is_empty()
    }
    pub fn templates(&self) -> impl Iterator<Item = (ActionKind, &Template)> {
        ActionKind::ALL
            .into_iter()
            .flat_map(move |k| self.of(k).iter().map(move |t| (k, t)))
    }
}

/// One rule as loaded and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub file: Arc<PathBuf>,
    pub pos: Pos,
    pub table: TableName,
    /// The table exactly as written in the file.
    pub table_spelling: String,
    pub on: OpSet,
    pub changed: Vec<String>,
    pub actions: Actions,
    pub fallback: Option<Actions>,
    /// The file's `prefix`, prepended to rendered keys, tags and version keys.
    pub prefix: String,
    /// Optional delay for a second delete (used by the daemon).
    pub redelete_after: Option<std::time::Duration>,
}

/// All rules of a rules source, indexed by table.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub files: Vec<PathBuf>,
    by_table: HashMap<TableName, Vec<usize>>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>, files: Vec<PathBuf>) -> RuleSet {
        let mut by_table: HashMap<TableName, Vec<usize>> = HashMap::new();
        for (idx, rule) in rules.iter().enumerate() {
            by_table.entry(rule.table.clone()).or_default().push(idx);
        }
        RuleSet { rules, files, by_table }
    }

    /// Indices of the rules on `schema.name`, in load order.
    pub fn rules_for(&self, schema: &str, name: &str) -> &[usize] {
        // Avoid allocating a TableName on the hot path for the common miss/hit.
        self.by_table
            .iter()
            .find(|(t, _)| t.schema == schema && t.name == name)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableName> {
        self.by_table.keys()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// A problem found in a rules source (or, for `check --db`, against the live schema).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: Option<PathBuf>,
    pub pos: Option<Pos>,
    /// The field the problem is in, e.g. `rules[2].delete[0]`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.pos) {
            (Some(file), Some(pos)) => write!(f, "{}:{}:{}: ", file.display(), pos.line, pos.col)?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            _ => {}
        }
        f.write_str(match self.severity {
            Severity::Error => "error: ",
            Severity::Warning => "warning: ",
        })?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Loading failed; every error found is listed.
#[derive(Debug, thiserror::Error)]
#[error("{}", .diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct RulesError {
    pub diagnostics: Vec<Diagnostic>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(schema: &str, name: &str) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    #[test]
    fn table_names_follow_the_spec() {
        assert_eq!(TableName::parse("products"), Ok(table("public", "products")));
        assert_eq!(TableName::parse("public.products"), Ok(table("public", "products")));
        assert_eq!(TableName::parse("forum.\"Tags\""), Ok(table("forum", "Tags")));
        assert_eq!(TableName::parse("forum.Tags"), Ok(table("forum", "Tags")));
        assert_eq!(TableName::parse("\"a.b\".\"x\"\"y\""), Ok(table("a.b", "x\"y")));
        assert!(TableName::parse("a.b.c").is_err());
        assert!(TableName::parse("a.").is_err());
        assert!(TableName::parse("\"abc").is_err());
        assert!(TableName::parse("ab\"c\"").is_err());
    }

    #[test]
    fn op_sets() {
        let set = OpSet::default_ops();
        assert!(set.contains(Op::Insert) && set.contains(Op::Delete));
        assert!(!set.contains(Op::Truncate));
        assert_eq!(set.iter().count(), 3);
    }
}
