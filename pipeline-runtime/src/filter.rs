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
