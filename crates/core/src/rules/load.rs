//! Loading rules files (format v1) into a [`RuleSet`], with static validation.
//!
//! Every problem becomes a [`Diagnostic`] with file, line, column and field; errors make
//! loading fail, warnings are returned beside the rules.

use super::template::Template;
use super::yaml::{self, Node, NodeKind, Pos};
use super::{Actions, Diagnostic, OpSet, Rule, RuleSet, RulesError, Severity, TableName};
use crate::model::Op;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const TOP_FIELDS: &[&str] = &["version", "prefix", "rules"];
const RULE_FIELDS: &[&str] = &[
    "name",
    "description",
    "table",
    "on",
    "changed",
    "delete",
    "bump",
    "tags",
    "delete_matching",
    "publish",
    "fallback",
    "redelete_after",
];
const FALLBACK_FIELDS: &[&str] = &["delete", "bump", "tags", "delete_matching", "publish"];
const OPS: &[&str] = &["insert", "update", "delete", "truncate"];

/// Rules plus the warnings found while loading them.
#[derive(Debug)]
pub struct Loaded {
    pub rules: RuleSet,
    pub warnings: Vec<Diagnostic>,
}

/// The largest rules file read (a generated file of ten thousand rules is well under it).
pub const MAX_RULES_FILE_BYTES: u64 = 16 << 20;
/// The most rules in all files together.
pub const MAX_RULES: usize = 10_000;

/// Loads a rules file, or every `*.yaml` / `*.yml` file of a directory in name order.
pub fn load_path(path: &Path) -> Result<Loaded, RulesError> {
    let files = rule_files(path).map_err(|message| RulesError {
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            file: Some(path.to_path_buf()),
            pos: None,
            field: None,
            message,
        }],
    })?;
    let mut sources = Vec::new();
    let mut diagnostics = Vec::new();
    for file in files {
        if let Ok(meta) = std::fs::metadata(&file) {
            if meta.len() > MAX_RULES_FILE_BYTES {
                diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: Some(file.clone()),
                    pos: None,
                    field: None,
                    message: format!(
                        "the file has {} bytes, more than a rules file may ({MAX_RULES_FILE_BYTES}); split it into several files in one directory",
                        meta.len()
                    ),
                });
                continue;
            }
        }
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: Some(file.clone()),
                pos: None,
                field: None,
                message: format!("cannot read rules file: {e}"),
            }),
        }
    }
    if !diagnostics.is_empty() {
        return Err(RulesError { diagnostics });
    }
    load_sources(&sources)
}

/// Loads rules from in-memory sources (`(file name, text)`), e.g. embedded defaults or tests.
pub fn load_str(name: &str, text: &str) -> Result<Loaded, RulesError> {
    load_sources(&[(PathBuf::from(name), text.to_string())])
}

fn rule_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot open rules source: {e}"))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|e| format!("cannot list rules directory: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list rules directory: {e}"))?;
        let p = entry.path();
        let is_yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        if is_yaml && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(
            "no *.yaml or *.yml files in this directory; point --rules at a rules file or a directory of them".into(),
        );
    }
    Ok(files)
}

fn load_sources(sources: &[(PathBuf, String)]) -> Result<Loaded, RulesError> {
    let mut cx = Context::default();
    let mut rules = Vec::new();
    for (file, text) in sources {
        cx.file = Arc::new(file.clone());
        match yaml::parse(text) {
            Ok(doc) => rules.extend(cx.file_rules(&doc)),
            Err(e) => cx.error(e.pos, None, format!("invalid YAML: {}", e.message)),
        }
    }
    cx.cross_rule_checks(&rules);
    let (errors, warnings): (Vec<_>, Vec<_>) = cx.diagnostics.into_iter().partition(|d| d.severity == Severity::Error);
    if !errors.is_empty() {
        let mut diagnostics = errors;
        diagnostics.extend(warnings);
        return Err(RulesError { diagnostics });
    }
    let files = sources.iter().map(|(f, _)| f.clone()).collect();
    Ok(Loaded {
        rules: RuleSet::new(rules, files),
        warnings,
    })
}

#[derive(Default)]
struct Context {
    file: Arc<PathBuf>,
    diagnostics: Vec<Diagnostic>,
}

impl Context {
    fn push(&mut self, severity: Severity, pos: Pos, field: Option<&str>, message: String) {
        self.diagnostics.push(Diagnostic {
            severity,
            file: Some(self.file.as_ref().clone()),
            pos: Some(pos),
            field: field.map(str::to_string),
            message,
        });
    }
    fn error(&mut self, pos: Pos, field: Option<&str>, message: String) {
        self.push(Severity::Error, pos, field, message);
    }
    fn warn(&mut self, pos: Pos, field: Option<&str>, message: String) {
        self.push(Severity::Warning, pos, field, message);
    }

    /// Checks a mapping's keys against the allowed set; returns `(key, key_pos, value)`.
    fn fields<'a>(
        &mut self,
        node: &'a Node,
        allowed: &[&str],
        what: &str,
        field: &str,
    ) -> Option<Vec<(&'a str, Pos, &'a Node)>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                Some(field),
                format!("expected a mapping ({what}) but found {}", node.describe()),
            );
            return None;
        };
        let mut out: Vec<(&str, Pos, &Node)> = Vec::new();
        for (key, value) in entries {
            let Some(name) = key.as_str() else {
                self.error(
                    key.pos,
                    Some(field),
                    format!("expected a field name but found {}", key.describe()),
                );
                continue;
            };
            if name == "<<" {
                self.error(
                    key.pos,
                    Some(field),
                    format!("YAML merge keys (`<<: *anchor`) are not supported in {what}; write the fields out (anchors and aliases of whole values do work)"),
                );
                continue;
            }
            if !allowed.contains(&name) {
                let hint = match did_you_mean(name, allowed) {
                    Some(s) => format!("; did you mean `{s}`?"),
                    None => format!("; allowed fields: {}", allowed.join(", ")),
                };
                self.error(key.pos, Some(field), format!("unknown field `{name}` in {what}{hint}"));
                continue;
            }
            if out.iter().any(|(n, _, _)| *n == name) {
                self.error(key.pos, Some(field), format!("field `{name}` is given twice in {what}"));
                continue;
            }
            out.push((name, key.pos, value));
        }
        Some(out)
    }

    fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        match &node.kind {
            NodeKind::Scalar { text, .. } => Some(text.clone()),
            NodeKind::Map(_) => {
                self.error(
                    node.pos,
                    Some(field),
                    "expected a string but found a mapping: YAML reads an unquoted `{…}` as a mapping; quote the template, e.g. \"product:{id}\"".into(),
                );
                None
            }
            _ => {
                self.error(
                    node.pos,
                    Some(field),
                    format!("expected a string but found {}", node.describe()),
                );
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, field: &str) -> Vec<(String, Pos)> {
        match &node.kind {
            NodeKind::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let f = format!("{field}[{i}]");
                    self.string(item, &f).map(|s| (s, item.pos))
                })
                .collect(),
            NodeKind::Null => Vec::new(),
            _ => {
                let example = node.as_str().unwrap_or("...");
                self.error(
                    node.pos,
                    Some(field),
                    format!(
                        "expected a list but found {}; write `{}: [\"{example}\"]`",
                        node.describe(),
                        field.rsplit('.').next().unwrap_or(field)
                    ),
                );
                Vec::new()
            }
        }
    }

    fn file_rules(&mut self, doc: &Node) -> Vec<Rule> {
        if doc.kind == NodeKind::Null {
            self.error(
                doc.pos,
                None,
                "empty rules file; expected `version: 1` and `rules:`".into(),
            );
            return Vec::new();
        }
        let Some(fields) = self.fields(doc, TOP_FIELDS, "the rules file", "(top level)") else {
            return Vec::new();
        };
        let get = |name: &str| fields.iter().find(|(n, _, _)| *n == name).map(|(_, p, v)| (*p, *v));
        match get("version") {
            None => self.error(
                doc.pos,
                Some("version"),
                "missing `version: 1` at the top of the file".into(),
            ),
            Some((_, v)) if v.as_str() == Some("1") => {}
            Some((_, v)) => self.error(
                v.pos,
                Some("version"),
                format!(
                    "unsupported rules format version `{}`; this walbust reads `version: 1`",
                    v.as_str().unwrap_or(v.describe())
                ),
            ),
        }
        let prefix = match get("prefix") {
            Some((_, v)) if v.kind == NodeKind::Null => String::new(),
            Some((_, v)) => self.string(v, "prefix").unwrap_or_default(),
            None => String::new(),
        };
        if prefix.contains(['{', '}']) {
            let pos = get("prefix").map(|(_, v)| v.pos).unwrap_or_default();
            self.error(
                pos,
                Some("prefix"),
                "the prefix is literal text; remove `{` and `}`".into(),
            );
        }
        let Some((_, rules_node)) = get("rules") else {
            self.error(doc.pos, Some("rules"), "missing `rules:` list".into());
            return Vec::new();
        };
        let NodeKind::Seq(items) = &rules_node.kind else {
            self.error(
                rules_node.pos,
                Some("rules"),
                format!("expected a list of rules but found {}", rules_node.describe()),
            );
            return Vec::new();
        };
        if items.len() > MAX_RULES {
            self.error(
                rules_node.pos,
                Some("rules"),
                format!(
                    "{} rules, more than walbust takes ({MAX_RULES}); a rule per table with several keys, tags and version keys covers most needs",
                    items.len()
                ),
            );
            return Vec::new();
        }
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.rule(item, i, &prefix))
            .collect()
    }

    fn rule(&mut self, node: &Node, index: usize, prefix: &str) -> Option<Rule> {
        let at = format!("rules[{index}]");
        let fields = self.fields(node, RULE_FIELDS, "a rule", &at)?;
        let errors_before = self.error_count();
        let get = |name: &str| fields.iter().find(|(n, _, _)| *n == name).map(|(_, _, v)| *v);
        let name = match get("name") {
            Some(v) => self.string(v, &format!("{at}.name")),
            None => {
                self.error(
                    node.pos,
                    Some(&at),
                    "missing `name`; every rule needs a unique name".into(),
                );
                None
            }
        };
        let at = match &name {
            Some(n) => format!("rule `{n}`"),
            None => at,
        };
        if name.as_deref() == Some("") {
            self.error(
                get("name").map(|n| n.pos).unwrap_or(node.pos),
                Some(&at),
                "`name` is empty".into(),
            );
        }
        let description = get("description").and_then(|v| match v.kind {
            NodeKind::Null => None,
            _ => self.string(v, &format!("{at}.description")),
        });
        let (table, table_spelling) = match get("table") {
            Some(v) => match self.string(v, &format!("{at}.table")) {
                Some(text) => match TableName::parse(&text) {
                    Ok(t) => (Some(t), text),
                    Err(e) => {
                        self.error(v.pos, Some(&format!("{at}.table")), e);
                        (None, text)
                    }
                },
                None => (None, String::new()),
            },
            None => {
                self.error(
                    node.pos,
                    Some(&at),
                    "missing `table`, e.g. `table: public.products`".into(),
                );
                (None, String::new())
            }
        };
        let on = match get("on") {
            None => OpSet::default_ops(),
            Some(v) => {
                let mut set = OpSet::default();
                let field = format!("{at}.on");
                let listed = self.string_list(v, &field);
                for (op, pos) in &listed {
                    match op.as_str() {
                        "insert" => set.insert(Op::Insert),
                        "update" => set.insert(Op::Update),
                        "delete" => set.insert(Op::Delete),
                        "truncate" => set.insert(Op::Truncate),
                        other => {
                            let hint = did_you_mean(&other.to_lowercase(), OPS)
                                .map(|s| format!("; did you mean `{s}`?"))
                                .unwrap_or_default();
                            self.error(
                                *pos,
                                Some(&field),
                                format!("unknown operation `{other}`; use insert, update, delete or truncate{hint}"),
                            );
                        }
                    }
                }
                if listed.is_empty() {
                    self.error(
                        v.pos,
                        Some(&field),
                        "empty `on` list; leave it out for [insert, update, delete]".into(),
                    );
                }
                set
            }
        };
        let changed: Vec<String> = match get("changed") {
            None => Vec::new(),
            Some(v) => {
                let list = self.string_list(v, &format!("{at}.changed"));
                if !on.contains(Op::Update) {
                    self.warn(
                        v.pos,
                        Some(&format!("{at}.changed")),
                        "`changed` only filters updates, and this rule does not listen to update".into(),
                    );
                }
                list.into_iter().map(|(s, _)| s).collect()
            }
        };
        let actions = self.actions(&fields, &at, false);
        let fallback = match get("fallback") {
            None => None,
            Some(v) => {
                let field = format!("{at}.fallback");
                self.fields(v, FALLBACK_FIELDS, "a fallback", &field).map(|fb_fields| {
                    let errors = self.error_count();
                    let fb = self.actions(&fb_fields, &field, true);
                    if fb.is_empty() && self.error_count() == errors {
                        self.error(
                            v.pos,
                            Some(&field),
                            "empty fallback; give at least one of delete, bump, tags, delete_matching, publish".into(),
                        );
                    }
                    fb
                })
            }
        };
        let redelete_after = get("redelete_after").and_then(|v| {
            let field = format!("{at}.redelete_after");
            let text = self.string(v, &field)?;
            match parse_duration(&text) {
                Some(d) => Some(d),
                None => {
                    self.error(
                        v.pos,
                        Some(&field),
                        format!("cannot read duration `{text}`; write e.g. `500ms`, `2s` or `1m`"),
                    );
                    None
                }
            }
        });
        let only_truncate = on.iter().all(|op| op == Op::Truncate);
        // After an error in the rule's actions, "no action" would only repeat it.
        if actions.is_empty() && !(only_truncate && fallback.is_some()) && self.error_count() == errors_before {
            self.error(
                node.pos,
                Some(&at),
                "the rule has no action; give at least one of delete, bump, tags, delete_matching, publish".into(),
            );
        }
        if on.contains(Op::Truncate) && fallback.is_none() {
            self.error(
                get("on").map(|v| v.pos).unwrap_or(node.pos),
                Some(&format!("{at}.on")),
                "`truncate` needs a `fallback`: a TRUNCATE names no rows, so only fixed keys can be invalidated".into(),
            );
        }
        self.semantic_warnings(&fields, &at, on, &actions, fallback.is_some());
        if self.error_count() > errors_before {
            return None;
        }
        Some(Rule {
            name: name?,
            description,
            file: self.file.clone(),
            pos: node.pos,
            table: table?,
            table_spelling,
            on,
            changed,
            actions,
            fallback,
            prefix: prefix.to_string(),
            redelete_after,
        })
    }

    fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    fn actions(&mut self, fields: &[(&str, Pos, &Node)], at: &str, is_fallback: bool) -> Actions {
        let mut actions = Actions::default();
        for (name, _, node) in fields {
            let field = format!("{at}.{name}");
            let target = match *name {
                "delete" => &mut actions.delete,
                "bump" => &mut actions.bump,
                "tags" => &mut actions.tags,
                "delete_matching" => &mut actions.delete_matching,
                "publish" => {
                    for (i, (channel, pos)) in self.string_list(node, &field).into_iter().enumerate() {
                        if channel.contains(['{', '}']) {
                            self.error(
                                pos,
                                Some(&format!("{field}[{i}]")),
                                format!("channel `{channel}` has braces; channel names are literal"),
                            );
                        } else if channel.is_empty() {
                            self.error(pos, Some(&format!("{field}[{i}]")), "empty channel name".into());
                        } else if !actions.publish.contains(&channel) {
                            actions.publish.push(channel);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let mut parsed = Vec::new();
            for (i, (text, pos)) in self.string_list(node, &field).into_iter().enumerate() {
                let item = format!("{field}[{i}]");
                if text.is_empty() {
                    self.error(pos, Some(&item), "empty key template".into());
                    continue;
                }
                match Template::parse(&text) {
                    Ok(t) if is_fallback && t.has_placeholders() => self.error(
                        pos,
                        Some(&item),
                        format!(
                            "fallback `{text}` has a placeholder; fallbacks run when row values are unknown, so they must be fixed keys (e.g. `ver:products`)"
                        ),
                    ),
                    Ok(t) => parsed.push(t),
                    Err(e) => self.error(pos, Some(&item), format!("bad template `{text}`: {e}")),
                }
            }
            *target = parsed;
        }
        actions
    }

    fn semantic_warnings(
        &mut self,
        fields: &[(&str, Pos, &Node)],
        at: &str,
        on: OpSet,
        actions: &Actions,
        has_fallback: bool,
    ) {
        let pos_of = |name: &str| fields.iter().find(|(n, _, _)| *n == name).map(|(_, p, _)| *p);
        if !actions.delete_matching.is_empty() {
            self.warn(
                pos_of("delete_matching").unwrap_or_default(),
                Some(&format!("{at}.delete_matching")),
                "delete_matching scans the keyspace (SCAN MATCH) on every matching change; prefer tags or version keys for hot tables".into(),
            );
        }
        for (kind, template) in actions.templates() {
            for (image, column) in template.columns() {
                let never = match image {
                    super::template::Image::Old if !on.contains(Op::Update) && !on.contains(Op::Delete) => {
                        Some("insert has no old row")
                    }
                    super::template::Image::New if !on.contains(Op::Update) && !on.contains(Op::Insert) => {
                        Some("delete has no new row")
                    }
                    _ => None,
                };
                if let Some(why) = never {
                    self.warn(
                        pos_of(kind.field()).unwrap_or_default(),
                        Some(&format!("{at}.{}", kind.field())),
                        format!(
                            "`{}` can never render `{column}` ({why}); the fallback will be used",
                            template.source
                        ),
                    );
                } else {
                    // Renders on some of the operations listened to, not all.
                    let missing = match image {
                        super::template::Image::Old if on.contains(Op::Insert) => {
                            Some(("INSERT", "an insert has no old row", "insert"))
                        }
                        super::template::Image::New if on.contains(Op::Delete) => {
                            Some(("DELETE", "a delete has no new row", "delete"))
                        }
                        _ => None,
                    };
                    if let Some((op, why, name)) = missing {
                        let then = if has_fallback {
                            "the fallback is applied for every such change"
                        } else {
                            "with no fallback every such change is reported unrenderable"
                        };
                        self.warn(
                            pos_of(kind.field()).unwrap_or_default(),
                            Some(&format!("{at}.{}", kind.field())),
                            format!(
                                "`{}` cannot render `{column}` on {op} ({why}) and `on` includes `{name}`: {then}; list `on` without `{name}`, or use `{{{column}}}` (new row, or old row when the change carries it)",
                                template.source
                            ),
                        );
                    }
                }
                if column.trim() != column {
                    self.warn(
                        pos_of(kind.field()).unwrap_or_default(),
                        Some(&format!("{at}.{}", kind.field())),
                        format!(
                            "column `{column}` in `{}` has surrounding spaces; column names are exact",
                            template.source
                        ),
                    );
                }
            }
        }
    }

    fn cross_rule_checks(&mut self, rules: &[Rule]) {
        let mut names: HashMap<&str, &Rule> = HashMap::new();
        let mut spellings: HashMap<&TableName, &Rule> = HashMap::new();
        for rule in rules {
            if let Some(first) = names.get(rule.name.as_str()) {
                self.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: Some(rule.file.as_ref().clone()),
                    pos: Some(rule.pos),
                    field: Some(format!("rule `{}`", rule.name)),
                    message: format!(
                        "duplicate rule name; first defined at {}:{}:{}; rule names must be unique across all files",
                        first.file.display(),
                        first.pos.line,
                        first.pos.col
                    ),
                });
            } else {
                names.insert(&rule.name, rule);
            }
            match spellings.get(&rule.table) {
                Some(first) if first.table_spelling != rule.table_spelling => {
                    self.diagnostics.push(Diagnostic {
                        severity: Severity::Warning,
                        file: Some(rule.file.as_ref().clone()),
                        pos: Some(rule.pos),
                        field: Some(format!("rule `{}`.table", rule.name)),
                        message: format!(
                            "table `{}` is written `{}` in rule `{}` ({}:{}); both name {}; spell it one way",
                            rule.table_spelling,
                            first.table_spelling,
                            first.name,
                            first.file.display(),
                            first.pos.line,
                            rule.table
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    spellings.insert(&rule.table, rule);
                }
            }
        }
        // Relations whose names differ only by case are distinct in PostgreSQL but usually a typo.
        let mut tables: Vec<&TableName> = spellings.keys().copied().collect();
        tables.sort();
        for (i, a) in tables.iter().enumerate() {
            for b in &tables[i + 1..] {
                if a.schema.eq_ignore_ascii_case(&b.schema) && a.name.eq_ignore_ascii_case(&b.name) {
                    let rule = spellings[*b];
                    self.diagnostics.push(Diagnostic {
                        severity: Severity::Warning,
                        file: Some(rule.file.as_ref().clone()),
                        pos: Some(rule.pos),
                        field: Some(format!("rule `{}`.table", rule.name)),
                        message: format!(
                            "tables {a} and {b} differ only by case; names are case-sensitive, so these are two relations"
                        ),
                    });
                }
            }
        }
    }
}

/// Parses `500ms`, `2s`, `1.5s`, `1m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

/// The closest allowed word within a small edit distance — and closer than rewriting the word
/// entirely (`x` is not a typo of `on`).
pub fn did_you_mean<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let length = word.chars().count();
    allowed
        .iter()
        .map(|candidate| (levenshtein(word, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 4) && *distance < length)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match load_str("rules.yaml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
        }
    }

    const GOOD: &str = r#"
version: 1
prefix: "shop:"
rules:
  - name: product-detail
    description: Product page
    table: public.products
    on: [insert, update, delete, truncate]
    changed: [name, price_cents]
    delete: ["product:{id}", "product:{id}:json"]
    bump: ["ver:product:{id}"]
    tags: ["category:{category_id}"]
    publish: ["cache-invalidations"]
    fallback:
      bump: ["ver:products"]
"#;

    #[test]
    fn loads_the_spec_example() {
        let loaded = load_str("rules.yaml", GOOD).unwrap();
        let rule = &loaded.rules.rules[0];
        assert_eq!(rule.name, "product-detail");
        assert_eq!(rule.prefix, "shop:");
        assert_eq!(rule.table.to_string(), "public.products");
        assert!(rule.on.contains(Op::Truncate));
        assert_eq!(rule.changed, vec!["name", "price_cents"]);
        assert_eq!(rule.actions.delete.len(), 2);
        assert_eq!(rule.actions.publish, vec!["cache-invalidations"]);
        assert_eq!(rule.fallback.as_ref().unwrap().bump[0].source, "ver:products");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.rules.rules_for("public", "products"), &[0]);
    }

    #[test]
    fn unknown_fields_name_line_column_and_suggestion() {
        let errs = errors("version: 1\nrules:\n  - name: a\n    tabel: t\n    delete: [x]\n");
        assert!(
            errs.iter().any(|e| e.starts_with("rules.yaml:4:5: error:")
                && e.contains("`tabel`")
                && e.contains("did you mean `table`")),
            "{errs:?}"
        );
        let errs = errors("version: 1\nrulez: []\n");
        assert!(errs.iter().any(|e| e.contains("did you mean `rules`")), "{errs:?}");
        let errs = errors("version: 1\nrules:\n  - name: a\n    table: t\n    on: [insrt]\n    delete: [x]\n");
        assert!(errs.iter().any(|e| e.contains("did you mean `insert`")), "{errs:?}");
    }

    /// Regression (issue: inputs, finding 11): no suggestion that rewrites the whole word, a
    /// clear word on merge keys and unquoted templates, and no follow-on errors.
    #[test]
    fn suggestions_merge_keys_and_unquoted_templates() {
        let errs = errors("version: 1\nrules:\n  - name: a\n    table: t\n    x: 1\n    delete: [k]\n");
        assert!(
            errs.iter()
                .any(|e| e.contains("unknown field `x`") && !e.contains("did you mean")),
            "{errs:?}"
        );
        let errs = errors("version: 1\nbase: &b\n  table: t\nrules:\n  - name: a\n    <<: *b\n    delete: [k]\n");
        assert!(errs.iter().any(|e| e.contains("merge keys")), "{errs:?}");
        let errs = errors("version: 1\nrules:\n  - name: a\n    table: t\n    delete: [{id}]\n");
        assert_eq!(errs.len(), 1, "one error, no follow-on: {errs:?}");
        assert!(errs[0].contains("quote the template"), "{errs:?}");
    }

    /// Regression (issue: inputs, finding 9): `{old.col}` with the default `on` cannot render on
    /// INSERT; check said "ok".
    #[test]
    fn templates_that_cannot_render_on_some_listened_operations_are_warned_about() {
        let loaded = load_str(
            "rules.yaml",
            "version: 1\nrules:\n  - name: a\n    table: t\n    delete: [\"k:{old.c}\", \"n:{new.c}\"]\n",
        )
        .unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
        assert!(warnings.iter().any(|w| w.contains("on INSERT")), "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("on DELETE")), "{warnings:?}");
        let loaded = load_str(
            "rules.yaml",
            "version: 1\nrules:\n  - name: a\n    table: t\n    on: [update, delete]\n    delete: [\"k:{old.c}\"]\n",
        )
        .unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    proptest::proptest! {
        /// Whatever the text, the loader answers with rules or diagnostics: never a panic.
        #[test]
        fn arbitrary_rules_text_never_panics(text in "(version: 1\n)?(rules:\n)?([ -~\n]|  - |\\{|\\}|&a|\\*a|<<: ){0,200}") {
            let _ = load_str("fuzz.yaml", &text);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = load_str("fuzz.yaml", &String::from_utf8_lossy(&bytes));
        }
    }

    /// Limits on what a rules source may hold, each with a clear error.
    #[test]
    fn too_many_rules_is_an_error() {
        let mut text = String::from("version: 1\nrules:\n");
        for i in 0..=MAX_RULES {
            text.push_str(&format!("  - {{name: r{i}, table: t, delete: [k]}}\n"));
        }
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.contains("more than walbust takes")),
            "{:?}",
            &errs[..errs.len().min(3)]
        );
    }

    #[test]
    fn structural_errors() {
        let errs = errors("version: 2\nrules: []\n");
        assert!(errs.iter().any(|e| e.contains("version `2`")), "{errs:?}");
        let errs = errors("rules: []\n");
        assert!(errs.iter().any(|e| e.contains("missing `version: 1`")), "{errs:?}");
        let errs = errors("version: 1\nrules:\n  - name: a\n    table: t\n");
        assert!(errs.iter().any(|e| e.contains("no action")), "{errs:?}");
        let errs = errors("version: 1\nrules:\n  - name: a\n    table: t\n    on: [truncate]\n    delete: [x]\n");
        assert!(
            errs.iter().any(|e| e.contains("`truncate` needs a `fallback`")),
            "{errs:?}"
        );
        let errs = errors(
            "version: 1\nrules:\n  - name: a\n    table: t\n    delete: [x]\n    fallback:\n      bump: [\"v:{id}\"]\n",
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("rules.yaml:7:14") && e.contains("placeholder")),
            "{errs:?}"
        );
        let errs = errors("version: 1\nrules:\n  - name: a\n    table: t\n    delete: [\"p:{id\"]\n");
        assert!(
            errs.iter()
                .any(|e| e.contains("bad template") && e.contains("unclosed")),
            "{errs:?}"
        );
        let errs = errors("version: 1\nrules:\n  - name: a\n    table: t\n    delete: \"p:{id}\"\n");
        assert!(errs.iter().any(|e| e.contains("expected a list")), "{errs:?}");
        let errs = errors("version: 1\nrules:\n  - name: a\n    table: t\n    delete: [x]\n  - name: a\n    table: u\n    delete: [y]\n");
        assert!(
            errs.iter()
                .any(|e| e.contains("duplicate rule name") && e.contains("rules.yaml:3:5")),
            "{errs:?}"
        );
        let errs = errors("version: 1\nrules: [\n");
        assert!(errs.iter().any(|e| e.contains("invalid YAML")), "{errs:?}");
    }

    #[test]
    fn warnings_for_spellings_and_scans() {
        let loaded = load_str(
            "r.yaml",
            "version: 1\nrules:\n  - name: a\n    table: products\n    delete: [x]\n  - name: b\n    table: public.\"products\"\n    delete_matching: [\"s:{id}:*\"]\n",
        )
        .unwrap();
        let text: Vec<String> = loaded.warnings.iter().map(|d| d.to_string()).collect();
        assert!(text.iter().any(|w| w.contains("spell it one way")), "{text:?}");
        assert!(text.iter().any(|w| w.contains("SCAN")), "{text:?}");
    }

    #[test]
    fn durations_and_suggestions() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(did_you_mean("delet", RULE_FIELDS), Some("delete"));
        assert_eq!(did_you_mean("zzzzzz", RULE_FIELDS), None);
    }
}
