//! Common CEL shapes compiled to native code over the decoded record: comparisons (`==`, `!=`,
//! `<`, `<=`, `>`, `>=`) of `record` fields and literals, `&&`, `||`, `!` and `has(record.f)`.
//! The interpreter converts the whole record to CEL values per record; this reads the fields it
//! needs in place. Evaluation mirrors the interpreter's semantics exactly (its ordering across
//! numeric types, `&&`/`||` short-circuits) and answers `None` wherever it cannot tell (a missing
//! field, a list or map, equality across types, any other pairing the interpreter treats
//! specially): the caller then asks the interpreter, which also gives the error message. A
//! differential property test (50,000 cases when run with `PROPTEST_CASES=50000`) checks that
//! both agree.

use std::cmp::Ordering;

use cel::{
    IdedExpr,
    common::ast::{Expr, LiteralValue, operators},
};
use serde_json::Value;

/// A compiled expression.
#[derive(Clone, Debug)]
pub enum Native {
    /// A literal.
    Literal(Scalar),
    /// `record.a.b`.
    Field(Vec<String>),
    /// `has(record.a.b)`.
    Has(Vec<String>),
    /// `!x`.
    Not(Box<Native>),
    /// `x && y`.
    And(Box<Native>, Box<Native>),
    /// `x || y`.
    Or(Box<Native>, Box<Native>),
    /// A comparison.
    Compare(Comparison, Box<Native>, Box<Native>),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A scalar as the interpreter types it (JSON numbers: negative integers are `Int`, other
/// integers `UInt`, the rest `Double`).
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// `null`
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A double.
    Double(f64),
    /// A string.
    Str(String),
}

impl Native {
    /// Compiles `expr`, or `None` when it has a shape this does not handle.
    pub fn compile(expr: &IdedExpr) -> Option<Self> {
        match &expr.expr {
            Expr::Literal(literal) => Some(Self::Literal(match literal {
                LiteralValue::Null => Scalar::Null,
                LiteralValue::Boolean(b) => Scalar::Bool(*b.inner()),
                LiteralValue::Int(i) => Scalar::Int(*i.inner()),
                LiteralValue::UInt(u) => Scalar::UInt(*u.inner()),
                LiteralValue::Double(d) => Scalar::Double(*d.inner()),
                LiteralValue::String(s) => Scalar::Str(s.inner().to_owned()),
                LiteralValue::Bytes(_) => return None,
            })),
            Expr::Select(select) => {
                let path = record_path(&select.operand)?;
                let path = [path, vec![select.field.clone()]].concat();
                Some(if select.test {
                    Self::Has(path)
                } else {
                    Self::Field(path)
                })
            }
            Expr::Call(call) if call.target.is_none() => {
                let arg = |i: usize| call.args.get(i).and_then(Self::compile).map(Box::new);
                match (call.func_name.as_str(), call.args.len()) {
                    (operators::LOGICAL_NOT, 1) => Some(Self::Not(arg(0)?)),
                    (operators::LOGICAL_AND, 2) => Some(Self::And(arg(0)?, arg(1)?)),
                    (operators::LOGICAL_OR, 2) => Some(Self::Or(arg(0)?, arg(1)?)),
                    (name, 2) => {
                        let op = match name {
                            operators::EQUALS => Comparison::Eq,
                            operators::NOT_EQUALS => Comparison::Ne,
                            operators::LESS => Comparison::Lt,
                            operators::LESS_EQUALS => Comparison::Le,
                            operators::GREATER => Comparison::Gt,
                            operators::GREATER_EQUALS => Comparison::Ge,
                            _ => return None,
                        };
                        Some(Self::Compare(op, arg(0)?, arg(1)?))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Evaluates to a scalar; `None` when the interpreter must decide.
    pub fn eval(&self, record: &Value) -> Option<Scalar> {
        match self {
            Self::Literal(s) => Some(s.clone()),
            Self::Field(path) => scalar(lookup(record, path)?),
            Self::Has(path) => {
                let (last, parents) = path.split_last()?;
                let parent = lookup(record, parents)?.as_object()?;
                Some(Scalar::Bool(parent.contains_key(last)))
            }
            Self::Not(x) => match x.eval(record)? {
                Scalar::Bool(b) => Some(Scalar::Bool(!b)),
                _ => None,
            },
            Self::And(x, y) => match x.eval(record)? {
                Scalar::Bool(false) => Some(Scalar::Bool(false)),
                Scalar::Bool(true) => match y.eval(record)? {
                    b @ Scalar::Bool(_) => Some(b),
                    _ => None,
                },
                _ => None,
            },
            Self::Or(x, y) => match x.eval(record)? {
                Scalar::Bool(true) => Some(Scalar::Bool(true)),
                Scalar::Bool(false) => match y.eval(record)? {
                    b @ Scalar::Bool(_) => Some(b),
                    _ => None,
                },
                _ => None,
            },
            Self::Compare(op, x, y) => {
                let (a, b) = (x.eval(record)?, y.eval(record)?);
                let result = match op {
                    Comparison::Eq => equal(&a, &b)?,
                    Comparison::Ne => !equal(&a, &b)?,
                    _ => {
                        let order = compare(&a, &b)?;
                        match op {
                            Comparison::Lt => order == Ordering::Less,
                            Comparison::Le => order != Ordering::Greater,
                            Comparison::Gt => order == Ordering::Greater,
                            _ => order != Ordering::Less,
                        }
                    }
                };
                Some(Scalar::Bool(result))
            }
        }
    }
}

/// The field path of `record.a.b`, or `None` when `expr` is not rooted at `record`.
fn record_path(expr: &IdedExpr) -> Option<Vec<String>> {
    match &expr.expr {
        Expr::Ident(name) if name == "record" => Some(Vec::new()),
        Expr::Select(select) if !select.test => {
            let mut path = record_path(&select.operand)?;
            path.push(select.field.clone());
            Some(path)
        }
        _ => None,
    }
}

fn lookup<'a>(record: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(record, |v, segment| v.as_object()?.get(segment))
}

fn scalar(value: &Value) -> Option<Scalar> {
    Some(match value {
        Value::Null => Scalar::Null,
        Value::Bool(b) => Scalar::Bool(*b),
        Value::String(s) => Scalar::Str(s.clone()),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Scalar::UInt(u),
            (None, Some(i)) => Scalar::Int(i),
            _ => Scalar::Double(n.as_f64()?),
        },
        _ => return None,
    })
}

/// Equality of two values of one type, as the interpreter's.
fn equal(a: &Scalar, b: &Scalar) -> Option<bool> {
    use Scalar::*;
    Some(match (a, b) {
        (Null, Null) => true,
        (Bool(x), Bool(y)) => x == y,
        (Str(x), Str(y)) => x == y,
        (Int(x), Int(y)) => x == y,
        (UInt(x), UInt(y)) => x == y,
        (Double(x), Double(y)) => x == y,
        // Across types the interpreter's rules are its own: it decides.
        _ => return None,
    })
}

/// Ordering as the interpreter's; `None` where it has none (the interpreter then errors).
fn compare(a: &Scalar, b: &Scalar) -> Option<Ordering> {
    use Scalar::*;
    match (a, b) {
        (Bool(x), Bool(y)) => Some(x.cmp(y)),
        (Str(x), Str(y)) => Some(x.cmp(y)),
        (Int(x), Int(y)) => Some(x.cmp(y)),
        (UInt(x), UInt(y)) => Some(x.cmp(y)),
        (Double(x), Double(y)) => x.partial_cmp(y),
        (Int(x), UInt(y)) => Some(i128::from(*x).cmp(&i128::from(*y))),
        (UInt(x), Int(y)) => Some(i128::from(*x).cmp(&i128::from(*y))),
        (Int(x), Double(y)) => (*x as f64).partial_cmp(y),
        (UInt(x), Double(y)) => (*x as f64).partial_cmp(y),
        (Double(x), Int(y)) => x.partial_cmp(&(*y as f64)),
        (Double(x), UInt(y)) => x.partial_cmp(&(*y as f64)),
        _ => None,
    }
}
