//! Label and field selectors in Kubernetes syntax, parsed and matched the same
//! way by the API server, the watch cache and clients.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::api::meta::v1 as meta;
use crate::names::{validate_label_key, validate_label_value};

/// Why a selector is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector text.
    pub selector: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Operator of a label requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key=value` or `key==value`.
    Equals,
    /// `key!=value`.
    NotEquals,
    /// `key in (a,b)`.
    In,
    /// `key notin (a,b)`.
    NotIn,
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key>3` (integer comparison).
    GreaterThan,
    /// `key<3` (integer comparison).
    LessThan,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values (one for Equals/NotEquals/Gt/Lt, several for In/NotIn).
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether a label set satisfies this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotEquals | Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(v), Some(bound)) = (value, self.values.first()) else {
                    return false;
                };
                let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }
}

/// A label selector: every requirement must hold. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Whether the selector selects everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// A selector from exact label matches.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Self {
        Self {
            requirements: labels
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    operator: Operator::Equals,
                    values: vec![v.clone()],
                })
                .collect(),
        }
    }

    /// Parses Kubernetes' selector syntax, e.g. `app=web,tier in (a,b),!legacy`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let err = |reason: String| SelectorError {
            selector: input.to_owned(),
            reason,
        };
        let mut requirements = Vec::new();
        for part in split_top_level(input).map_err(&err)? {
            let part = part.trim();
            if part.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(err("empty requirement".into()));
            }
            requirements.push(parse_requirement(part).map_err(&err)?);
        }
        Ok(Self { requirements })
    }

    /// Converts the structured form used in specs (`matchLabels`, `matchExpressions`).
    pub fn from_proto(selector: &meta::LabelSelector) -> Result<Self, SelectorError> {
        let mut s = Self::from_labels(&selector.match_labels);
        for expr in &selector.match_expressions {
            let err = |reason: String| SelectorError {
                selector: format!("{} {} {:?}", expr.key, expr.operator, expr.values),
                reason,
            };
            validate_label_key(&expr.key).map_err(&err)?;
            let operator = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return Err(err(format!("unknown operator {other:?}"))),
            };
            let needs_values = matches!(operator, Operator::In | Operator::NotIn);
            if needs_values == expr.values.is_empty() {
                return Err(err(if needs_values {
                    "values must be non-empty for In and NotIn".into()
                } else {
                    "values must be empty for Exists and DoesNotExist".into()
                }));
            }
            for v in &expr.values {
                validate_label_value(v).map_err(&err)?;
            }
            s.requirements.push(Requirement {
                key: expr.key.clone(),
                operator,
                values: expr.values.clone(),
            });
        }
        Ok(s)
    }

    /// Whether a label set matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r.operator {
                Operator::Equals => write!(f, "{}={}", r.key, r.values[0])?,
                Operator::NotEquals => write!(f, "{}!={}", r.key, r.values[0])?,
                Operator::In => write!(f, "{} in ({})", r.key, r.values.join(","))?,
                Operator::NotIn => write!(f, "{} notin ({})", r.key, r.values.join(","))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
                Operator::GreaterThan => write!(f, "{}>{}", r.key, r.values[0])?,
                Operator::LessThan => write!(f, "{}<{}", r.key, r.values[0])?,
            }
        }
        Ok(())
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        validate_label_key(key)?;
        return Ok(Requirement {
            key: key.into(),
            operator: Operator::DoesNotExist,
            values: vec![],
        });
    }
    for (token, operator) in [
        ("==", Operator::Equals),
        ("!=", Operator::NotEquals),
        ("=", Operator::Equals),
        (">", Operator::GreaterThan),
        ("<", Operator::LessThan),
    ] {
        if let Some((key, value)) = part.split_once(token) {
            let key = key.trim();
            let value = value.trim();
            validate_label_key(key)?;
            if matches!(operator, Operator::GreaterThan | Operator::LessThan) {
                value
                    .parse::<i64>()
                    .map_err(|_| format!("{value:?} is not an integer for {token}"))?;
            } else {
                validate_label_value(value)?;
            }
            return Ok(Requirement {
                key: key.into(),
                operator,
                values: vec![value.into()],
            });
        }
    }
    // Set-based: "key in (a,b)" / "key notin (a,b)" / "key".
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default().trim();
    let rest = words.next().unwrap_or_default().trim();
    validate_label_key(key)?;
    if rest.is_empty() {
        return Ok(Requirement {
            key: key.into(),
            operator: Operator::Exists,
            values: vec![],
        });
    }
    let (operator, list) = if let Some(list) = rest.strip_prefix("notin") {
        (Operator::NotIn, list)
    } else if let Some(list) = rest.strip_prefix("in") {
        (Operator::In, list)
    } else {
        return Err(format!("expected 'in', 'notin', '=', '!=' after {key:?}"));
    };
    let list = list.trim();
    let inner = list
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised value list after {key:?}"))?;
    let mut values = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        validate_label_value(v)?;
        values.push(v.to_owned());
    }
    if values.is_empty() || (values.len() == 1 && values[0].is_empty() && inner.trim().is_empty()) {
        return Err(format!("empty value list for {key:?}"));
    }
    Ok(Requirement {
        key: key.into(),
        operator,
        values,
    })
}

/// Operator of a field requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOperator {
    /// `field=value` or `field==value`.
    Equals,
    /// `field!=value`.
    NotEquals,
}

/// One requirement of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// JSON path, e.g. "spec.nodeName".
    pub field: String,
    /// Operator.
    pub operator: FieldOperator,
    /// Value to compare with.
    pub value: String,
}

/// A field selector: every requirement must hold. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses `spec.nodeName=n1,status.phase!=Running`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let err = |reason: String| SelectorError {
            selector: input.to_owned(),
            reason,
        };
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in input.split(',') {
            let part = part.trim();
            // The operator is the first one in the term (Kubernetes'
            // splitTerm): "a=b!=c" is a = "b!=c", not "a=b" != c.
            let Some(at) = part.char_indices().map(|(i, _)| i).find(|&i| {
                part.get(i..)
                    .is_some_and(|rest| rest.starts_with('=') || rest.starts_with("!="))
            }) else {
                return Err(err(format!(
                    "{part:?} is not of the form field=value or field!=value"
                )));
            };
            let (field, rest) = part.split_at(at);
            let (operator, value) = if let Some(v) = rest.strip_prefix("!=") {
                (FieldOperator::NotEquals, v)
            } else if let Some(v) = rest.strip_prefix("==") {
                (FieldOperator::Equals, v)
            } else {
                (
                    FieldOperator::Equals,
                    rest.strip_prefix('=').unwrap_or(rest),
                )
            };
            let field = field.trim();
            if field.is_empty() {
                return Err(err("empty field name".into()));
            }
            if !field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
            {
                return Err(err(format!(
                    "field name {field:?} may hold only letters, digits, '.', '_', '-' and '/'"
                )));
            }
            requirements.push(FieldRequirement {
                field: field.to_owned(),
                operator,
                value: value.trim().to_owned(),
            });
        }
        Ok(Self { requirements })
    }

    /// Whether the selector selects everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// The value `field` must equal, if the selector pins it (for indexes).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }

    /// The field paths it reads.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.requirements.iter().map(|r| r.field.as_str())
    }

    /// Whether an object matches, given a lookup of its fields by path.
    pub fn matches<'a>(&self, field: impl Fn(&str) -> Option<Cow<'a, str>>) -> bool {
        self.requirements.iter().all(|r| {
            let v = field(&r.field).unwrap_or(Cow::Borrowed(""));
            match r.operator {
                FieldOperator::Equals => v == r.value,
                FieldOperator::NotEquals => v != r.value,
            }
        })
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match r.operator {
                // "a==b" for a value starting with '=', which "a=" + "=b" would lose.
                FieldOperator::Equals if r.value.starts_with('=') => "==",
                FieldOperator::Equals => "=",
                FieldOperator::NotEquals => "!=",
            };
            write!(f, "{}{}{}", r.field, op, r.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_matches_each_operator() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("gen", "5")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "tier in (front,back)",
            "tier notin (db)",
            "app",
            "!missing",
            "gen>3",
            "gen<9",
            "app=web, tier in (front)",
            "example.com/role!=x",
        ];
        for s in yes {
            assert!(
                LabelSelector::parse(s).unwrap().matches(&l),
                "{s} should match"
            );
        }
        let no = [
            "app=db",
            "app!=web",
            "tier in (back)",
            "tier notin (front)",
            "missing",
            "!app",
            "gen>5",
            "gen<5",
        ];
        for s in no {
            assert!(
                !LabelSelector::parse(s).unwrap().matches(&l),
                "{s} should not match"
            );
        }
    }

    #[test]
    fn label_selector_rejects_bad_syntax() {
        for s in [
            "app=",
            "=web",
            "app in web",
            "app in (a",
            "a b c",
            "-bad=1",
            "app>x",
            "app=we b",
        ] {
            if s == "app=" {
                // An empty value is valid in Kubernetes.
                assert!(LabelSelector::parse(s).is_ok());
                continue;
            }
            assert!(LabelSelector::parse(s).is_err(), "{s} should fail");
        }
    }

    #[test]
    fn label_selector_round_trips_through_display() {
        let s = LabelSelector::parse("app=web,tier in (a,b),!x,y").unwrap();
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn field_selector_matches_and_exposes_exact_values() {
        let f = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap();
        assert_eq!(f.exact("spec.nodeName"), Some("n1"));
        let get = |p: &str| match p {
            "spec.nodeName" => Some(Cow::Borrowed("n1")),
            "status.phase" => Some(Cow::Borrowed("Running")),
            _ => None,
        };
        assert!(f.matches(get));
        assert!(FieldSelector::parse("nodename").is_err());
    }
}
