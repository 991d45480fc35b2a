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

enum Frame {
    Seq(Vec<Node>, Pos, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Pos, usize),
}

/// Parses a single YAML document. An empty input gives a `Null` node. Anchors and aliases
/// are resolved by copying the anchored node.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut documents = 0usize;
    let mut root: Option<Node> = None;

    // Places a finished node into its parent (or makes it the root); returns the node's
    // anchor bookkeeping to the caller through `anchors`.
    fn place(stack: &mut [Frame], root: &mut Option<Node>, node: Node) {
        match stack.last_mut() {
            Some(Frame::Seq(items, _, _)) => items.push(node),
            Some(Frame::Map(entries, pending_key, _, _)) => match pending_key.take() {
                Some(key) => entries.push((key, node)),
                None => *pending_key = Some(node),
            },
            None => *root = Some(node),
        }
    }

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
                let node = anchors.get(&id).cloned().ok_or_else(|| YamlError {
                    pos,
                    message: "alias refers to an unknown anchor".into(),
                })?;
                place(&mut stack, &mut root, Node { pos, ..node });
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
                    anchors.insert(anchor, node.clone());
                }
                place(&mut stack, &mut root, node);
            }
            Event::SequenceStart(anchor, _) => stack.push(Frame::Seq(Vec::new(), pos, anchor)),
            Event::MappingStart(anchor, _) => stack.push(Frame::Map(Vec::new(), None, pos, anchor)),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq(items, pos, anchor)) => (
                        Node {
                            kind: NodeKind::Seq(items),
                            pos,
                        },
                        anchor,
                    ),
                    Some(Frame::Map(entries, _, pos, anchor)) => (
                        Node {
                            kind: NodeKind::Map(entries),
                            pos,
                        },
                        anchor,
                    ),
                    None => {
                        return Err(YamlError {
                            pos,
                            message: "unbalanced YAML structure".into(),
                        })
                    }
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                place(&mut stack, &mut root, node);
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
