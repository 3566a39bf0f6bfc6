//! Reading Kubernetes resource quantities (`500m`, `2`, `1Gi`, `1e3`) as numbers.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid quantity {0:?}: expected a number with an optional suffix such as m, Ki, Mi, Gi, k, M, G"
)]
pub struct QuantityParseError(String);

/// The value of a quantity in base units (cores for CPU, bytes for memory).
pub fn parse_quantity(quantity: &Quantity) -> Result<f64, QuantityParseError> {
    let text = quantity.0.trim();
    let err = || QuantityParseError(quantity.0.clone());
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| err())?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..].parse().map_err(|_| err())?;
            10f64.powi(power)
        }
        _ => return Err(err()),
    };
    let result = value * factor;
    if result.is_finite() {
        Ok(result)
    } else {
        Err(err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<f64, QuantityParseError> {
        parse_quantity(&Quantity(s.to_owned()))
    }

    #[test]
    fn reads_cpu_and_memory_suffixes() {
        assert_eq!(q("500m").unwrap(), 0.5);
        assert_eq!(q("2").unwrap(), 2.0);
        assert_eq!(q("1.5").unwrap(), 1.5);
        assert_eq!(q("1Gi").unwrap(), 1024.0 * 1024.0 * 1024.0);
        assert_eq!(q("256Mi").unwrap(), 256.0 * 1024.0 * 1024.0);
        assert_eq!(q("1G").unwrap(), 1e9);
        assert_eq!(q("1e3").unwrap(), 1000.0);
    }

    #[test]
    fn rejects_unknown_suffixes_and_garbage() {
        for bad in ["", "abc", "1Gb", "1 Gi", "Mi", "1x"] {
            assert!(q(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
