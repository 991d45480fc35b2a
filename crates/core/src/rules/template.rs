//! Key templates: `product:{id}`, `{new.col}`, `{old.col}`, with `{{` / `}}` for literal braces.
//!
//! This module only parses templates; rendering against rows lives in [`super::eval`].

use std::fmt;

/// Which row image a placeholder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Image {
    /// `{col}`: the new row, and also the old row when it carries every such column.
    Any,
    /// `{new.col}`: only the new row.
    New,
    /// `{old.col}`: only the old row.
    Old,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Column { image: Image, name: String },
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub source: String,
    pub parts: Vec<Part>,
}

/// Why a template could not be parsed; `offset` is the character offset in the template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.offset + 1)
    }
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        let char_offset = |byte: usize| source[..byte].chars().count();
        while let Some((at, ch)) = chars.next() {
            match ch {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(TemplateError {
                        offset: char_offset(at),
                        message: "unmatched `}`; write `}}` for a literal brace".into(),
                    })
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (inner_at, inner) in chars.by_ref() {
                        match inner {
                            '}' => {
                                closed = true;
                                break;
                            }
                            '{' => {
                                return Err(TemplateError {
                                    offset: char_offset(inner_at),
                                    message: "`{` inside a placeholder; placeholders cannot nest".into(),
                                })
                            }
                            c => name.push(c),
                        }
                    }
                    if !closed {
                        return Err(TemplateError {
                            offset: char_offset(at),
                            message: "unclosed `{`; close the placeholder with `}` or write `{{` for a literal brace"
                                .into(),
                        });
                    }
                    let (image, column) = if let Some(rest) = name.strip_prefix("new.") {
                        (Image::New, rest.to_string())
                    } else if let Some(rest) = name.strip_prefix("old.") {
                        (Image::Old, rest.to_string())
                    } else {
                        (Image::Any, name)
                    };
                    if column.is_empty() {
                        return Err(TemplateError {
                            offset: char_offset(at),
                            message: "empty placeholder; name a column, e.g. `{id}`, `{new.id}` or `{old.id}`".into(),
                        });
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Column { image, name: column });
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    /// Column placeholders in order of appearance.
    pub fn columns(&self) -> impl Iterator<Item = (Image, &str)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column { image, name } => Some((*image, name.as_str())),
            Part::Literal(_) => None,
        })
    }

    pub fn has_placeholders(&self) -> bool {
        self.columns().next().is_some()
    }
}

/// Escapes Redis glob metacharacters (`*?[]\`) so a value matches only itself.
pub fn glob_escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(image: Image, name: &str) -> Part {
        Part::Column {
            image,
            name: name.into(),
        }
    }

    #[test]
    fn parses_placeholders_and_literals() {
        let t = Template::parse("product:{id}:{new.sku}/{old.category_id}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Literal("product:".into()),
                col(Image::Any, "id"),
                Part::Literal(":".into()),
                col(Image::New, "sku"),
                Part::Literal("/".into()),
                col(Image::Old, "category_id"),
            ]
        );
        assert!(t.has_placeholders());
        assert!(!Template::parse("ver:products").unwrap().has_placeholders());
    }

    #[test]
    fn doubled_braces_are_literal() {
        let t = Template::parse("{{x}}:{My Col}").unwrap();
        assert_eq!(t.parts, vec![Part::Literal("{x}:".into()), col(Image::Any, "My Col")]);
        let t = Template::parse("a{{{id}}}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Literal("a{".into()),
                col(Image::Any, "id"),
                Part::Literal("}".into())
            ]
        );
    }

    #[test]
    fn errors_say_what_to_fix() {
        assert!(Template::parse("a:{id").unwrap_err().message.contains("unclosed"));
        assert!(Template::parse("a:}").unwrap_err().message.contains("}}"));
        assert!(Template::parse("a:{}")
            .unwrap_err()
            .message
            .contains("empty placeholder"));
        assert!(Template::parse("a:{new.}")
            .unwrap_err()
            .message
            .contains("empty placeholder"));
        assert!(Template::parse("a:{x{y}}").unwrap_err().message.contains("nest"));
        assert_eq!(Template::parse("ab}").unwrap_err().offset, 2);
    }

    #[test]
    fn glob_escape_covers_metacharacters() {
        let mut out = String::new();
        glob_escape_into(&mut out, r"a*b?c[d]e\f");
        assert_eq!(out, r"a\*b\?c\[d\]e\\f");
    }
}
