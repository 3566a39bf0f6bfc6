//! The CEL filter: compiled once, evaluated per record with the record bound as `record`.

use cel::{Context, Program};
use serde_json::Value;

/// Why a filter could not be compiled or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The expression does not parse.
    #[error("spec.transform.filter: invalid CEL: {0}")]
    Compile(String),
    /// Evaluation failed for this record (missing field, type mismatch).
    #[error("filter evaluation failed: {0}")]
    Evaluate(String),
    /// The expression gave something other than a boolean.
    #[error("filter returned {0}, expected a boolean")]
    NotBoolean(String),
}

mod native;

/// A compiled filter with its evaluation context (one per slot): common shapes run natively
/// (`native`), the rest, and every record the native form cannot decide, in the interpreter.
pub struct Filter {
    program: Program,
    native: Option<native::Native>,
    root: Context<'static>,
}

impl Filter {
    /// Compiles `expression`.
    pub fn compile(expression: &str) -> Result<Self, FilterError> {
        let program =
            Program::compile(expression).map_err(|e| FilterError::Compile(e.to_string()))?;
        let native = native::Native::compile(program.expression());
        Ok(Self {
            program,
            native,
            root: Context::default(),
        })
    }

    /// Whether the expression runs natively (else always in the interpreter).
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// Whether `record` passes.
    pub fn matches(&self, record: &Value) -> Result<bool, FilterError> {
        if let Some(native::Scalar::Bool(pass)) = self.native.as_ref().and_then(|n| n.eval(record))
        {
            return Ok(pass);
        }
        self.interpret(record)
    }

    /// Whether `record` passes, by the interpreter alone.
    pub fn interpret(&self, record: &Value) -> Result<bool, FilterError> {
        let value = cel::to_value(record).map_err(|e| FilterError::Evaluate(e.to_string()))?;
        let mut scope = self.root.new_inner_scope();
        scope.add_variable_from_value("record", value);
        match self.program.execute(&scope) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(FilterError::NotBoolean(format!("{other:?}"))),
            Err(e) => Err(FilterError::Evaluate(e.to_string())),
        }
    }
}

/// The top-level fields of `record` that `expression` reads (`record.a`, `record.b.c`,
/// `has(record.d)`), so a decoder may skip the others; `None` when the expression uses `record`
/// in a way this cannot tell (indexing, passing it whole), and every field must be kept.
/// An over-estimate (a name inside a string literal) only keeps a field needlessly.
pub fn record_fields(expression: &str) -> Option<std::collections::BTreeSet<String>> {
    let bytes = expression.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut fields = std::collections::BTreeSet::new();
    let mut from = 0;
    while let Some(at) = expression[from..].find("record").map(|i| i + from) {
        let end = at + "record".len();
        from = end;
        let standalone = (at == 0 || !(word(bytes[at - 1]) || bytes[at - 1] == b'.'))
            && (end == bytes.len() || !word(bytes[end]));
        if !standalone {
            continue;
        }
        let rest = &expression[end..];
        let name: String = rest
            .strip_prefix('.')?
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            return None;
        }
        fields.insert(name);
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn evaluates_comparisons_and_logic_over_nested_fields() {
        let f = Filter::compile(r#"record.temperature > -50.0 && record.site.name == "north""#)
            .unwrap();
        assert!(
            f.matches(&json!({"temperature": 20.5, "site": {"name": "north"}}))
                .unwrap()
        );
        assert!(
            !f.matches(&json!({"temperature": -60.0, "site": {"name": "north"}}))
                .unwrap()
        );
    }

    #[test]
    fn a_missing_field_is_an_evaluation_error_not_false() {
        let f = Filter::compile("record.temperature > 0.0").unwrap();
        assert!(matches!(
            f.matches(&json!({"other": 1})),
            Err(FilterError::Evaluate(_))
        ));
    }

    #[test]
    fn a_non_boolean_result_is_an_error() {
        let f = Filter::compile("record.temperature").unwrap();
        assert!(matches!(
            f.matches(&json!({"temperature": 1})),
            Err(FilterError::NotBoolean(_))
        ));
    }

    #[test]
    fn the_fields_an_expression_reads_are_found_or_all_are_kept() {
        let fields = |e: &str| record_fields(e).map(|f| f.into_iter().collect::<Vec<_>>());
        assert_eq!(
            fields(
                r#"record.temperature > -50.0 && record.site.name == "north" && has(record.vip)"#
            ),
            Some(vec!["site".into(), "temperature".into(), "vip".into()])
        );
        assert_eq!(fields("my_record.x > 1 && 1 < 2"), Some(vec![]));
        assert_eq!(fields(r#"record["temperature"] > 1.0"#), None);
        assert_eq!(fields("size(record) > 2"), None);
    }

    fn operand() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop::sample::select(vec![
            "record.a",
            "record.b",
            "record.s",
            "record.n.x",
            "record.n",
            "1",
            "-2",
            "3u",
            "2.5",
            "-0.5",
            "18446744073709551615u",
            "-9223372036854775808",
            "\"x\"",
            "\"y\"",
            "true",
            "false",
            "null",
        ])
        .prop_map(str::to_owned)
    }

    fn condition() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            (
                operand(),
                prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]),
                operand()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            prop::sample::select(vec!["has(record.a)", "has(record.n.x)", "record.t", "true"])
                .prop_map(str::to_owned),
        ];
        leaf.prop_recursive(3, 12, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} && {b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} || {b})")),
                inner.prop_map(|a| format!("!({a})")),
            ]
        })
    }

    fn field() -> impl proptest::strategy::Strategy<Value = Option<serde_json::Value>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(None),
            Just(Some(json!(null))),
            any::<bool>().prop_map(|b| Some(json!(b))),
            (-3i64..4).prop_map(|i| Some(json!(i))),
            prop::sample::select(vec![2.5, -0.5, 1.0, 0.0, 3.0]).prop_map(|f| Some(json!(f))),
            Just(Some(json!(u64::MAX))),
            Just(Some(json!(i64::MIN))),
            prop::sample::select(vec!["x", "y", ""]).prop_map(|s| Some(json!(s))),
            Just(Some(json!([1, 2]))),
        ]
    }

    proptest::proptest! {
        #[test]
        fn native_evaluation_agrees_with_the_interpreter(
            expression in condition(),
            fields in proptest::collection::vec(field(), 5),
            nested in field(),
        ) {
            let mut record = serde_json::Map::new();
            for (name, value) in ["a", "b", "s", "t", "n"].iter().zip(fields) {
                if let Some(v) = value {
                    record.insert((*name).to_owned(), v);
                }
            }
            if let Some(x) = nested {
                record.insert("n".into(), json!({"x": x}));
            }
            let record = Value::Object(record);
            let filter = Filter::compile(&expression).unwrap();
            let native = filter.matches(&record);
            let interpreted = filter.interpret(&record);
            match (&native, &interpreted) {
                (Ok(a), Ok(b)) => proptest::prop_assert_eq!(a, b, "{} on {}", expression, record),
                (Err(_), Err(_)) => {}
                _ => proptest::prop_assert!(false, "{expression} on {record}: native {native:?}, interpreter {interpreted:?}"),
            }
        }
    }

    #[test]
    fn common_shapes_run_natively() {
        for e in [
            "record.temperature > -50.0 && record.status == \"ok\"",
            "has(record.vip) && record.vip || !(record.amount <= 10u)",
        ] {
            assert!(Filter::compile(e).unwrap().is_native(), "{e}");
        }
        // Decided natively, without the interpreter.
        let f = Filter::compile("record.t > -50.0 && record.s == \"ok\" && record.n < 3").unwrap();
        let record = json!({"t": 21.5, "s": "ok", "n": 2, "other": [1, 2]});
        assert_eq!(
            f.native.as_ref().unwrap().eval(&record),
            Some(native::Scalar::Bool(true))
        );
        // A missing field is left to the interpreter (which reports it).
        assert_eq!(f.native.as_ref().unwrap().eval(&json!({"s": "ok"})), None);
        for e in [
            "size(record.tags) > 1",
            "record.name.startsWith(\"a\")",
            "record.a in [1, 2]",
        ] {
            assert!(!Filter::compile(e).unwrap().is_native(), "{e}");
        }
    }

    #[test]
    fn invalid_expressions_fail_to_compile() {
        assert!(matches!(
            Filter::compile("record.x >"),
            Err(FilterError::Compile(_))
        ));
    }

    #[test]
    fn has_macro_guards_optional_fields() {
        let f = Filter::compile("has(record.vip) && record.vip").unwrap();
        assert!(!f.matches(&json!({"a": 1})).unwrap());
        assert!(f.matches(&json!({"vip": true})).unwrap());
    }
}
