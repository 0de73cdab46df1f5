//! protovalidate's CEL rules (`(buf.validate.field).cel`,
//! `cel_expression`, `(buf.validate.message).cel`), evaluated with the
//! `cel-interpreter` crate.
//!
//! Their cost is bounded when the definition is registered, as Kubernetes
//! bounds CRD validation rules: each expression is walked with the types of
//! what it reads, every list, map and string sized by its own rules
//! (`max_items`, `max_pairs`, `max_len`) or, without one, by the largest
//! object the server stores; a comprehension (`all`, `exists`, `map`,
//! `filter`, …) costs its body once per element. An expression whose
//! worst case exceeds [`COST_LIMIT`] is refused, naming the cost, so no
//! request ever runs an unbounded one. An expression sees only `this` (the
//! field's value, or the message). Rules run only on objects that pass the
//! other rules, so the bounds they assume hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cel_interpreter::objects::{Key, Map};
use cel_interpreter::{Context, Program, Value as Cel};
use cel_parser::ast::{Expr, IdedExpr};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};

use crate::registry::MAX_OBJECT_BYTES;

/// The largest estimated cost of one expression (Kubernetes' per-call limit).
pub const COST_LIMIT: u64 = 1_000_000;

/// What a list, map or string without a bound of its own may hold at most.
const UNBOUNDED: u64 = MAX_OBJECT_BYTES as u64;

/// One CEL rule.
#[derive(Debug, Clone, PartialEq)]
pub struct CelRule {
    /// The rule's id (the expression itself for `cel_expression`).
    pub id: String,
    /// The message of a violation, if the expression gives none.
    pub message: String,
    /// The expression.
    pub expression: String,
}

/// The CEL rules among `rules` (a `FieldRules` or `MessageRules`).
pub fn rules_in(rules: &DynamicMessage) -> Vec<CelRule> {
    let mut out = Vec::new();
    if let Some(Value::List(list)) = rules.get_field_by_name("cel").map(|v| v.into_owned()) {
        for r in list.iter().filter_map(Value::as_message) {
            let text = |name: &str| {
                r.get_field_by_name(name)
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            };
            out.push(CelRule {
                id: text("id"),
                message: text("message"),
                expression: text("expression"),
            });
        }
    }
    if let Some(Value::List(list)) = rules
        .get_field_by_name("cel_expression")
        .map(|v| v.into_owned())
    {
        for e in list.iter().filter_map(Value::as_str) {
            out.push(CelRule {
                id: e.to_owned(),
                message: String::new(),
                expression: e.to_owned(),
            });
        }
    }
    out
}

/// What an expression reads, as far as its cost goes.
#[derive(Debug, Clone)]
pub enum Ty {
    /// A message: its fields can be selected.
    Message(MessageDescriptor),
    /// A list of at most `max` items.
    List {
        /// The items.
        item: Box<Ty>,
        /// Most items.
        max: u64,
    },
    /// A map of at most `max` entries.
    Map {
        /// The keys.
        key: Box<Ty>,
        /// The values.
        value: Box<Ty>,
        /// Most entries.
        max: u64,
    },
    /// A string or bytes of at most `max` bytes.
    Text {
        /// Longest.
        max: u64,
    },
    /// A number, bool or null.
    Scalar,
    /// Anything, of size at most `max`.
    Unknown {
        /// Largest.
        max: u64,
    },
}

impl Ty {
    fn size(&self) -> u64 {
        match self {
            Ty::List { max, .. } | Ty::Map { max, .. } | Ty::Text { max } | Ty::Unknown { max } => {
                *max
            }
            Ty::Message(_) => UNBOUNDED,
            Ty::Scalar => 1,
        }
    }
}

/// A bound set on `field` by its rules (`group.rule`), if any.
fn bound(field: &FieldDescriptor, group: &str, names: &[&str]) -> Option<u64> {
    let rules = super::validate::rules_of(field)?;
    let group = rules.get_field_by_name(group)?.as_message()?.clone();
    names
        .iter()
        .filter(|n| group.has_field_by_name(n))
        .filter_map(|n| group.get_field_by_name(n)?.as_u64())
        .min()
}

fn ty_of_kind(kind: &Kind, text_max: Option<u64>) -> Ty {
    match kind {
        Kind::String | Kind::Bytes => Ty::Text {
            max: text_max.map_or(UNBOUNDED, |m| m.saturating_mul(4)),
        },
        Kind::Message(m) => Ty::Message(m.clone()),
        _ => Ty::Scalar,
    }
}

/// The type of `field`'s value, sized by its rules.
pub fn ty_of_field(field: &FieldDescriptor) -> Ty {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return Ty::Unknown { max: UNBOUNDED };
        };
        let part = |n| {
            entry
                .get_field(n)
                .map_or(Ty::Unknown { max: UNBOUNDED }, |f| {
                    ty_of_kind(&f.kind(), None)
                })
        };
        return Ty::Map {
            key: Box::new(part(1)),
            value: Box::new(part(2)),
            max: bound(field, "map", &["max_pairs"]).unwrap_or(UNBOUNDED),
        };
    }
    let text_max = match field.kind() {
        Kind::String => bound(field, "string", &["max_len", "len"]),
        Kind::Bytes => bound(field, "bytes", &["max_len", "len"]),
        _ => None,
    };
    if field.is_list() {
        return Ty::List {
            item: Box::new(ty_of_kind(&field.kind(), None)),
            max: bound(field, "repeated", &["max_items"]).unwrap_or(UNBOUNDED),
        };
    }
    ty_of_kind(&field.kind(), text_max)
}

/// Parses `rule` and bounds its cost with `this` of type `this`; the
/// estimated cost, or why it is refused.
pub fn check(rule: &CelRule, this: Ty) -> Result<u64, String> {
    if rule.expression.trim().is_empty() {
        return Err(format!("CEL rule {:?} has no expression", rule.id));
    }
    let source = rule.expression.clone();
    let parsed = std::panic::catch_unwind(move || cel_parser::Parser::default().parse(&source))
        .map_err(|_| format!("CEL rule {:?} does not parse", rule.id))?
        .map_err(|e| format!("CEL rule {:?} does not parse: {e}", rule.id))?;
    let env = HashMap::from([("this".to_owned(), this)]);
    let (cost, _) = estimate(&parsed, &env).map_err(|e| format!("CEL rule {:?}: {e}", rule.id))?;
    if cost > COST_LIMIT {
        return Err(format!(
            "CEL rule {:?}: its estimated cost {cost} exceeds the limit {COST_LIMIT}; bound what it walks with repeated.max_items, map.max_pairs or string.max_len",
            rule.id
        ));
    }
    program(&rule.expression).map_err(|e| format!("CEL rule {:?}: {e}", rule.id))?;
    Ok(cost)
}

fn sum(costs: impl IntoIterator<Item = u64>) -> u64 {
    costs.into_iter().fold(0, u64::saturating_add)
}

/// The worst-case cost of `e` and the type of its value.
fn estimate(e: &IdedExpr, env: &HashMap<String, Ty>) -> Result<(u64, Ty), String> {
    Ok(match &e.expr {
        Expr::Unspecified => (1, Ty::Scalar),
        Expr::Literal(v) => {
            let ty = match v {
                cel_parser::reference::Val::String(s) => Ty::Text {
                    max: s.len() as u64,
                },
                cel_parser::reference::Val::Bytes(b) => Ty::Text {
                    max: b.len() as u64,
                },
                _ => Ty::Scalar,
            };
            (1, ty)
        }
        Expr::Ident(name) => match env.get(name) {
            Some(ty) => (1, ty.clone()),
            None => {
                return Err(format!(
                    "unknown name {name:?}: an expression sees only `this`"
                ));
            }
        },
        Expr::Select(s) => {
            let (cost, ty) = estimate(&s.operand, env)?;
            if s.test {
                return Ok((cost.saturating_add(1), Ty::Scalar));
            }
            let ty = match ty {
                Ty::Message(m) => match m.get_field_by_name(&s.field) {
                    Some(f) => ty_of_field(&f),
                    None => {
                        return Err(format!("{} has no field {:?}", m.full_name(), s.field));
                    }
                },
                Ty::Map { value, .. } => *value,
                Ty::Unknown { max } => Ty::Unknown { max },
                _ => return Err(format!("cannot select {:?} there", s.field)),
            };
            (cost.saturating_add(1), ty)
        }
        Expr::Call(call) => {
            let mut cost = 1u64;
            let mut sizes = Vec::new();
            let mut types = Vec::new();
            for part in call.target.iter().map(|t| &**t).chain(&call.args) {
                let (c, t) = estimate(part, env)?;
                cost = cost.saturating_add(c);
                sizes.push(t.size());
                types.push(t);
            }
            let total: u64 = sum(sizes.iter().copied());
            let ty = match call.func_name.as_str() {
                // Walks of strings (matching is linear in Rust's regex).
                "contains" | "startsWith" | "endsWith" | "matches" => {
                    cost = cost.saturating_add(total / 10);
                    Ty::Scalar
                }
                "@in" => {
                    cost = cost.saturating_add(sizes.last().copied().unwrap_or(1));
                    Ty::Scalar
                }
                "_==_" | "_!=_" => {
                    cost = cost.saturating_add(total / 10);
                    Ty::Scalar
                }
                "_+_" => {
                    cost = cost.saturating_add(total / 10);
                    match types.first() {
                        Some(Ty::Text { .. }) => Ty::Text { max: total },
                        Some(Ty::List { item, .. }) => Ty::List {
                            item: item.clone(),
                            max: total,
                        },
                        _ => Ty::Scalar,
                    }
                }
                "_[_]" | "_[?_]" => match types.first() {
                    Some(Ty::List { item, .. }) => (**item).clone(),
                    Some(Ty::Map { value, .. }) => (**value).clone(),
                    _ => Ty::Unknown { max: UNBOUNDED },
                },
                "_?_:_" => types
                    .into_iter()
                    .skip(1)
                    .max_by_key(Ty::size)
                    .unwrap_or(Ty::Scalar),
                "string" | "bytes" => Ty::Text { max: total.max(32) },
                _ => Ty::Scalar,
            };
            (cost, ty)
        }
        Expr::Comprehension(c) => {
            let (range_cost, range) = estimate(&c.iter_range, env)?;
            let (n, item, value) = match range {
                Ty::List { item, max } => (max, *item, None),
                Ty::Map { key, value, max } => (max, *key, Some(*value)),
                Ty::Unknown { max } => (max, Ty::Unknown { max }, None),
                _ => return Err("a comprehension needs a list or a map".to_owned()),
            };
            let (init_cost, init) = estimate(&c.accu_init, env)?;
            let mut inner = env.clone();
            inner.insert(c.iter_var.clone(), item.clone());
            if let Some(v) = &c.iter_var2 {
                inner.insert(v.clone(), value.unwrap_or(item));
            }
            // What the accumulator may grow to (map/filter build a list).
            let accu = match init {
                Ty::List { .. } => Ty::List {
                    item: Box::new(Ty::Unknown { max: UNBOUNDED }),
                    max: n,
                },
                other => other,
            };
            inner.insert(c.accu_var.clone(), accu.clone());
            let (cond_cost, _) = estimate(&c.loop_cond, &inner)?;
            let (step_cost, _) = estimate(&c.loop_step, &inner)?;
            let (result_cost, result) = estimate(&c.result, &inner)?;
            let per_item = cond_cost.saturating_add(step_cost);
            (
                sum([
                    range_cost,
                    init_cost,
                    n.saturating_mul(per_item),
                    result_cost,
                ]),
                result,
            )
        }
        Expr::List(l) => {
            let mut cost = 1u64;
            for item in &l.elements {
                cost = cost.saturating_add(estimate(item, env)?.0);
            }
            let ty = Ty::List {
                item: Box::new(Ty::Unknown { max: UNBOUNDED }),
                max: l.elements.len() as u64,
            };
            (cost, ty)
        }
        Expr::Map(m) => {
            let mut cost = 1u64;
            for entry in &m.entries {
                if let cel_parser::ast::EntryExpr::MapEntry(e) = &entry.expr {
                    cost = cost.saturating_add(estimate(&e.key, env)?.0);
                    cost = cost.saturating_add(estimate(&e.value, env)?.0);
                }
            }
            let ty = Ty::Map {
                key: Box::new(Ty::Unknown { max: UNBOUNDED }),
                value: Box::new(Ty::Unknown { max: UNBOUNDED }),
                max: m.entries.len() as u64,
            };
            (cost, ty)
        }
        Expr::Struct(_) => return Err("message literals are not supported".to_owned()),
    })
}

/// Compiled programs by expression: compiled once, at registration.
static PROGRAMS: Mutex<Option<HashMap<String, Arc<Program>>>> = Mutex::new(None);

fn program(expression: &str) -> Result<Arc<Program>, String> {
    let mut guard = PROGRAMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let programs = guard.get_or_insert_with(HashMap::new);
    if let Some(p) = programs.get(expression) {
        return Ok(p.clone());
    }
    let source = expression.to_owned();
    let compiled = std::panic::catch_unwind(move || Program::compile(&source))
        .map_err(|_| "does not parse".to_owned())?
        .map_err(|e| format!("does not parse: {e}"))?;
    let compiled = Arc::new(compiled);
    programs.insert(expression.to_owned(), compiled.clone());
    Ok(compiled)
}

/// Runs `rule` on `this`: `None` if it holds, else the violation's message.
pub fn evaluate(rule: &CelRule, this: &Cel) -> Option<String> {
    let program = match program(&rule.expression) {
        Ok(p) => p,
        Err(e) => return Some(format!("the rule {e}")),
    };
    let mut context = Context::default();
    context.add_variable_from_value("this", this.clone());
    let failed = |default: String| {
        if rule.message.is_empty() {
            default
        } else {
            rule.message.clone()
        }
    };
    match program.execute(&context) {
        Ok(Cel::Bool(true)) => None,
        Ok(Cel::String(s)) if s.is_empty() => None,
        Ok(Cel::String(s)) => Some((*s).clone()),
        Ok(Cel::Bool(false)) => Some(failed(format!("{:?} is false", rule.expression))),
        Ok(other) => Some(format!(
            "{:?} gave {:?}, not a bool or a string",
            rule.expression,
            other.type_of()
        )),
        Err(e) => Some(format!("{:?} cannot be evaluated: {e}", rule.expression)),
    }
}

/// `value` as CEL sees it: messages as maps of their proto field names
/// (unset message fields absent, so `has()` tells), enums as ints.
pub fn to_cel(value: &Value) -> Cel {
    match value {
        Value::Bool(b) => Cel::Bool(*b),
        Value::I32(n) => Cel::Int(i64::from(*n)),
        Value::I64(n) => Cel::Int(*n),
        Value::U32(n) => Cel::UInt(u64::from(*n)),
        Value::U64(n) => Cel::UInt(*n),
        Value::F32(n) => Cel::Float(f64::from(*n)),
        Value::F64(n) => Cel::Float(*n),
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Bytes(b) => Cel::Bytes(Arc::new(b.to_vec())),
        Value::EnumNumber(n) => Cel::Int(i64::from(*n)),
        Value::Message(m) => message_to_cel(m),
        Value::List(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Map(entries) => {
            let map = entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        MapKey::Bool(b) => Key::Bool(*b),
                        MapKey::I32(n) => Key::Int(i64::from(*n)),
                        MapKey::I64(n) => Key::Int(*n),
                        MapKey::U32(n) => Key::Uint(u64::from(*n)),
                        MapKey::U64(n) => Key::Uint(*n),
                        MapKey::String(s) => Key::String(Arc::new(s.clone())),
                    };
                    (key, to_cel(v))
                })
                .collect();
            Cel::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A message as a CEL map.
pub fn message_to_cel(m: &DynamicMessage) -> Cel {
    let mut map = HashMap::new();
    for field in m.descriptor().fields() {
        let singular_message =
            matches!(field.kind(), Kind::Message(_)) && !field.is_list() && !field.is_map();
        if singular_message && !m.has_field(&field) {
            continue;
        }
        map.insert(
            Key::String(Arc::new(field.name().to_owned())),
            to_cel(&m.get_field(&field)),
        );
    }
    Cel::Map(Map { map: Arc::new(map) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(expression: &str) -> CelRule {
        CelRule {
            id: "r".into(),
            message: String::new(),
            expression: expression.into(),
        }
    }

    fn list(max: u64) -> Ty {
        Ty::List {
            item: Box::new(Ty::Text { max: 16 }),
            max,
        }
    }

    #[test]
    fn a_walk_of_a_bounded_list_is_accepted_and_of_an_unbounded_one_refused() {
        let walk = rule("this.all(x, x.startsWith('a'))");
        assert!(check(&walk, list(100)).unwrap() < 1000);
        let e = check(&walk, list(UNBOUNDED)).unwrap_err();
        assert!(e.contains("exceeds the limit"), "{e}");
        // Nested walks multiply.
        let nested = rule("this.all(x, this.exists(y, x == y))");
        assert!(check(&nested, list(100)).is_ok());
        assert!(check(&nested, list(10_000)).is_err());
    }

    #[test]
    fn names_other_than_this_and_bad_syntax_are_refused() {
        assert!(
            check(&rule("now > 3"), Ty::Scalar)
                .unwrap_err()
                .contains("only `this`")
        );
        assert!(
            check(&rule("this >"), Ty::Scalar)
                .unwrap_err()
                .contains("parse")
        );
        assert!(check(&rule(" "), Ty::Scalar).is_err());
    }

    #[test]
    fn rules_hold_fail_with_their_message_or_the_string_they_give() {
        let even = rule("this % 2 == 0");
        assert_eq!(evaluate(&even, &Cel::Int(4)), None);
        assert!(evaluate(&even, &Cel::Int(3)).unwrap().contains("is false"));
        let said = CelRule {
            message: "must be even".into(),
            ..even
        };
        assert_eq!(
            evaluate(&said, &Cel::Int(3)).as_deref(),
            Some("must be even")
        );
        let text = rule("this == 'a' ? '' : 'only a'");
        assert_eq!(evaluate(&text, &to_cel(&Value::String("a".into()))), None);
        assert_eq!(
            evaluate(&text, &to_cel(&Value::String("b".into()))).as_deref(),
            Some("only a")
        );
    }
}
