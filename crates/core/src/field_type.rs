//! Column types of inferred bronze schemas and of schema hints (`"dbu decimal(38,9), n long"`).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    String,
    Long,
    Double,
    Boolean,
    /// RFC 3339 text, stored as UTC microseconds.
    Timestamp,
    /// Nested objects, arrays, and fields whose first values disagree: the exact JSON text.
    Json,
    Decimal {
        precision: u8,
        scale: i8,
    },
}

impl FieldType {
    /// Parses a type name as used in schema hints (Spark SQL spellings accepted).
    pub fn parse(s: &str) -> Option<Self> {
        let t = s.trim().to_ascii_lowercase();
        Some(match t.as_str() {
            "string" | "varchar" | "text" => Self::String,
            "long" | "bigint" | "int" | "integer" => Self::Long,
            "double" | "float" => Self::Double,
            "boolean" | "bool" => Self::Boolean,
            "timestamp" => Self::Timestamp,
            "json" | "variant" => Self::Json,
            _ => {
                let inner = t.strip_prefix("decimal(")?.strip_suffix(')')?;
                let (p, s) = inner.split_once(',')?;
                let precision: u8 = p.trim().parse().ok()?;
                let scale: i8 = s.trim().parse().ok()?;
                if precision == 0 || precision > 38 || scale < 0 || scale as u8 > precision {
                    return None;
                }
                Self::Decimal { precision, scale }
            }
        })
    }

    /// The type two observed types widen to: long + double → double, anything else that
    /// disagrees → json (which holds any value exactly).
    pub fn unify(a: Self, b: Self) -> Self {
        match (a, b) {
            (x, y) if x == y => x,
            (Self::Long, Self::Double) | (Self::Double, Self::Long) => Self::Double,
            _ => Self::Json,
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String => f.write_str("string"),
            Self::Long => f.write_str("long"),
            Self::Double => f.write_str("double"),
            Self::Boolean => f.write_str("boolean"),
            Self::Timestamp => f.write_str("timestamp"),
            Self::Json => f.write_str("json"),
            Self::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
        }
    }
}

/// Parses schema hints: comma-separated `name type` pairs, e.g. `"dbu decimal(38,9), n long"`.
pub fn parse_hints(text: &str) -> Result<Vec<(String, FieldType)>, String> {
    let mut out: Vec<(String, FieldType)> = Vec::new();
    // Split on commas outside parentheses (decimal(38,9) has one inside).
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let (name, ty) = part
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("schema hint {part:?} must be `<column> <type>`"))?;
        let ty = FieldType::parse(ty).ok_or_else(|| {
            format!(
                "schema hint {part:?}: unknown type {:?} (string, long, double, boolean, timestamp, json, decimal(p,s))",
                ty.trim()
            )
        })?;
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(format!("schema hint for {name:?} given twice"));
        }
        out.push((name.to_string(), ty));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_parse_with_decimals_and_reject_unknown_types() {
        let h = parse_hints("dbu decimal(38,9), n long , ok BOOLEAN").unwrap();
        assert_eq!(
            h,
            vec![
                ("dbu".into(), FieldType::Decimal { precision: 38, scale: 9 }),
                ("n".into(), FieldType::Long),
                ("ok".into(), FieldType::Boolean)
            ]
        );
        assert!(parse_hints("x money").unwrap_err().contains("unknown type"));
        assert!(parse_hints("x").unwrap_err().contains("<column> <type>"));
        assert!(parse_hints("x long, X string").is_err());
        assert!(parse_hints("").unwrap().is_empty());
        assert_eq!(FieldType::unify(FieldType::Long, FieldType::Double), FieldType::Double);
        assert_eq!(FieldType::unify(FieldType::Long, FieldType::String), FieldType::Json);
        assert_eq!(
            FieldType::parse(&FieldType::Decimal { precision: 10, scale: 2 }.to_string()),
            Some(FieldType::Decimal { precision: 10, scale: 2 })
        );
    }
}
