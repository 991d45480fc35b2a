//! A small YAML document tree that remembers where every node came from (line and column),
//! built from `saphyr-parser` events. Rules loading walks this tree itself so that every
//! error can name the file, line, column and field.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;

/// 1-based line and column of a node's first character.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A scalar and whether it was written plain (unquoted).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    /// An empty value, `~` or `null`.
    Null,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub pos: Pos,
}

impl Node {
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
            NodeKind::Null => "an empty value",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

/// An open sequence or mapping: its items so far, where it starts, its anchor id, and how many
/// nodes it holds so far (aliases counted as the nodes they copy).
enum Frame {
    Seq(Vec<Node>, Pos, usize, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Pos, usize, usize),
}

/// The most nodes a rules document's aliases may copy in all. Nodes written out are bounded by
/// the file's size; nested aliases can otherwise ask for billions from a few hundred bytes.
pub const MAX_NODES: usize = 100_000;

/// Parses a single YAML document. An empty input gives a `Null` node. Anchors and aliases
/// are resolved by copying the anchored node, up to [`MAX_NODES`] nodes in all.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    // Anchor id → the node and how many nodes it holds.
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    let mut documents = 0usize;
    let mut root: Option<Node> = None;
    let mut total = 0usize;

    // Places a finished node of `size` nodes into its parent (or makes it the root).
    fn place(stack: &mut [Frame], root: &mut Option<Node>, node: Node, size: usize) {
        match stack.last_mut() {
            Some(Frame::Seq(items, _, _, count)) => {
                *count += size;
                items.push(node)
            }
            Some(Frame::Map(entries, pending_key, _, _, count)) => {
                *count += size;
                match pending_key.take() {
                    Some(key) => entries.push((key, node)),
                    None => *pending_key = Some(node),
                }
            }
            None => *root = Some(node),
        }
    }
    let mut grow = |pos: Pos, size: usize| {
        total = total.saturating_add(size);
        if total > MAX_NODES {
            return Err(YamlError {
                pos,
                message: format!(
                    "the aliases copy more than {MAX_NODES} nodes in all; write the repeated parts out or use fewer, smaller aliases"
                ),
            });
        }
        Ok(())
    };

    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| YamlError {
            pos: Pos {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        let pos = pos_of(&span);
        match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        pos,
                        message: "a rules file holds one YAML document; split the `---` documents into separate files"
                            .into(),
                    });
                }
            }
            Event::Alias(id) => {
                let size = anchors.get(&id).map(|(_, size)| *size).ok_or_else(|| YamlError {
                    pos,
                    message: "alias refers to an unknown anchor".into(),
                })?;
                // Counted before it is copied: a bomb stops here, not after the copy.
                grow(pos, size)?;
                if let Some((node, _)) = anchors.get(&id) {
                    let node = Node { pos, ..node.clone() };
                    place(&mut stack, &mut root, node, size);
                }
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let plain = style == ScalarStyle::Plain;
                let kind = if plain && matches!(value.as_ref(), "" | "~" | "null" | "Null" | "NULL") {
                    NodeKind::Null
                } else {
                    NodeKind::Scalar {
                        text: value.into_owned(),
                        plain,
                    }
                };
                let node = Node { kind, pos };
                if anchor > 0 {
                    anchors.insert(anchor, (node.clone(), 1));
                }
                place(&mut stack, &mut root, node, 1);
            }
            Event::SequenceStart(anchor, _) => stack.push(Frame::Seq(Vec::new(), pos, anchor, 0)),
            Event::MappingStart(anchor, _) => stack.push(Frame::Map(Vec::new(), None, pos, anchor, 0)),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor, inner) = match stack.pop() {
                    Some(Frame::Seq(items, pos, anchor, count)) => (
                        Node {
                            kind: NodeKind::Seq(items),
                            pos,
                        },
                        anchor,
                        count,
                    ),
                    Some(Frame::Map(entries, _, pos, anchor, count)) => (
                        Node {
                            kind: NodeKind::Map(entries),
                            pos,
                        },
                        anchor,
                        count,
                    ),
                    None => {
                        return Err(YamlError {
                            pos,
                            message: "unbalanced YAML structure".into(),
                        })
                    }
                };
                let size = inner + 1;
                if anchor > 0 {
                    anchors.insert(anchor, (node.clone(), size));
                }
                place(&mut stack, &mut root, node, size);
            }
        }
    }
    Ok(root.unwrap_or(Node {
        kind: NodeKind::Null,
        pos: Pos { line: 1, col: 1 },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_bombs_stop_at_the_node_limit_quickly() {
        // a0 is 10 nodes; each level repeats the one below 10 times: 10^9 nodes if expanded.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..=9 {
            let prev = level - 1;
            let items = vec![format!("*a{prev}"); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        let started = std::time::Instant::now();
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("more than 100000 nodes"), "{err:?}");
        // A large file without aliases is not limited.
        let big: String = (0..60_000).map(|i| format!("k{i}: [a, b]\n")).collect();
        assert!(parse(&big).is_ok());
        assert!(err.pos.line >= 4, "names where it happened: {err:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Ordinary aliases still work.
        let doc = parse("base: &b {on: [insert]}\nother: *b\n").unwrap();
        assert!(matches!(doc.kind, NodeKind::Map(ref e) if e.len() == 2));
    }

    #[test]
    fn positions_are_one_based() {
        let doc = parse("version: 1\nrules:\n  - name: a\n    table: t\n").unwrap();
        let NodeKind::Map(entries) = &doc.kind else {
            panic!("expected map")
        };
        assert_eq!(entries[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(entries[1].0.pos, Pos { line: 2, col: 1 });
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!("expected seq")
        };
        let NodeKind::Map(rule) = &items[0].kind else {
            panic!("expected map")
        };
        assert_eq!(rule[1].0.pos, Pos { line: 4, col: 5 });
        assert_eq!(rule[1].1.as_str(), Some("t"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(err.message.contains("one YAML document"));
    }

    #[test]
    fn aliases_are_resolved_and_nulls_recognised() {
        let doc = parse("a: &x [1, 2]\nb: *x\nc:\nd: '~'\n").unwrap();
        let NodeKind::Map(entries) = &doc.kind else { panic!() };
        assert_eq!(entries[0].1.kind, entries[1].1.kind);
        assert_eq!(entries[2].1.kind, NodeKind::Null);
        assert_eq!(entries[3].1.as_str(), Some("~"));
        assert_eq!(parse("").unwrap().kind, NodeKind::Null);
    }
}
