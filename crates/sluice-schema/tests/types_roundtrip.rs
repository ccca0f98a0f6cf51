//! The canonical type string, serde and Arrow mappings are lossless.

mod common;

use proptest::prelude::*;
use sluice_schema::types::FieldType;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn display_parses_back_to_the_same_type(t in common::field_type()) {
        let text = t.to_string();
        let parsed: FieldType = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&parsed, &t);
        // Canonical means printing again changes nothing.
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn arrow_mapping_round_trips(t in common::field_type()) {
        let back = FieldType::from_arrow(&t.to_arrow()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, t);
    }

    #[test]
    fn serde_json_and_yaml_use_the_canonical_string(t in common::field_type()) {
        let json = serde_json::to_string(&t).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&json, &serde_json::to_string(&t.to_string()).unwrap_or_default());
        let back: FieldType = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &t);
        let yaml = yaml_serde::to_string(&t).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: FieldType = yaml_serde::from_str(&yaml).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, t);
    }

    #[test]
    fn case_and_spacing_do_not_matter(t in common::leaf_type()) {
        // Time zones are values, not keywords, so keep them as written.
        let text = t.to_string();
        let spaced = match &t {
            FieldType::Timestamp { unit, tz: Some(tz) } => {
                let tz = FieldType::Timestamp { unit: *unit, tz: Some(tz.clone()) }.to_string();
                let zone = tz.split_once(", ").map(|(_, z)| z).unwrap_or(")");
                format!(" TimeStamp ( {} ,  {zone}", unit.as_str().to_uppercase())
            }
            _ => text.to_uppercase().replace('(', " ( ").replace(',', " , "),
        };
        let parsed: FieldType = spaced.parse().map_err(|e| TestCaseError::fail(format!("{spaced}: {e}")))?;
        prop_assert_eq!(parsed, t);
    }

    #[test]
    fn parser_never_panics(s in "\\PC{0,40}") {
        let _ = s.parse::<FieldType>();
    }

    #[test]
    fn parser_never_panics_on_type_like_text(s in "(list<|struct<|decimal\\(|timestamp\\(|[a-z]{1,3}|[0-9]|[,:<>()` ']){0,30}") {
        let _ = s.parse::<FieldType>();
    }
}
