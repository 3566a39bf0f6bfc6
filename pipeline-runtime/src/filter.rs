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

/// A compiled filter with its evaluation context (one per slot).
pub struct Filter {
    program: Program,
    root: Context<'static>,
}

impl Filter {
    /// Compiles `expression`.
    pub fn compile(expression: &str) -> Result<Self, FilterError> {
        let program =
            Program::compile(expression).map_err(|e| FilterError::Compile(e.to_string()))?;
        Ok(Self {
            program,
            root: Context::default(),
        })
    }

    /// Whether `record` passes.
    pub fn matches(&self, record: &Value) -> Result<bool, FilterError> {
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
