//! Label selectors: `matchLabels` and `matchExpressions`, validated and normalised into a
//! list of requirements that are ANDed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::validate;

/// Labels of a Pod or Namespace.
pub type Labels = BTreeMap<String, String>;

/// A selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One requirement on one label key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub op: Op,
    /// Values for `In` / `NotIn`; empty otherwise.
    pub values: BTreeSet<String>,
}

impl Requirement {
    /// True when `labels` satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            Op::In => v.is_some_and(|v| self.values.contains(v)),
            Op::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
        }
    }

    /// Why `labels` fail this requirement, e.g. `lacks label team=a`.
    pub fn why_not(&self, labels: &Labels) -> String {
        let v = labels.get(&self.key);
        let vals = self.values.iter().cloned().collect::<Vec<_>>().join(", ");
        match (self.op, v) {
            (Op::In, None) if self.values.len() == 1 => format!("lacks label {self}"),
            (Op::In, None) => format!("lacks label {} (wanted one of {vals})", self.key),
            (Op::In, Some(v)) if self.values.len() == 1 => {
                format!("has label {}={v}, not {self}", self.key)
            }
            (Op::In, Some(v)) => format!("has label {}={v}, not one of {vals}", self.key),
            (Op::NotIn, Some(v)) => format!("has label {}={v}, excluded by {self}", self.key),
            (Op::Exists, _) => format!("lacks label key {}", self.key),
            (Op::DoesNotExist, Some(v)) => {
                format!("has label {}={v}, but {self} requires it absent", self.key)
            }
            _ => format!("does not satisfy {self}"),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vals = || self.values.iter().cloned().collect::<Vec<_>>().join(",");
        match self.op {
            Op::In if self.values.len() == 1 => write!(f, "{}={}", self.key, vals()),
            Op::In => write!(f, "{} in ({})", self.key, vals()),
            Op::NotIn => write!(f, "{} notin ({})", self.key, vals()),
            Op::Exists => write!(f, "{}", self.key),
            Op::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A validated selector; no requirements selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches everything (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector from requirements (sorted and deduplicated).
    pub fn from_requirements(mut reqs: Vec<Requirement>) -> Self {
        reqs.sort();
        reqs.dedup();
        Self { reqs }
    }

    /// A `matchLabels`-only selector.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::from_requirements(
            labels
                .into_iter()
                .map(|(k, v)| Requirement {
                    key: k.to_string(),
                    op: Op::In,
                    values: BTreeSet::from([v.to_string()]),
                })
                .collect(),
        )
    }

    /// The requirements, sorted.
    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }

    /// True for `{}`.
    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    /// True when every requirement holds.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// The first requirement that `labels` fail.
    pub fn first_miss(&self, labels: &Labels) -> Option<&Requirement> {
        self.reqs.iter().find(|r| !r.matches(labels))
    }

    /// Validates and normalises an API selector. Errors are `(field, value, message)`
    /// relative to the selector.
    pub fn parse(sel: &LabelSelector) -> Result<Self, Vec<SelectorError>> {
        let mut reqs = Vec::new();
        let mut errs = Vec::new();
        if let Some(ml) = &sel.match_labels {
            for (k, v) in ml {
                let field = format!("matchLabels.{k}");
                if let Err(e) = validate::label_key(k) {
                    errs.push(SelectorError::new(
                        &field,
                        k,
                        format!("invalid label key: {e}"),
                    ));
                }
                if let Err(e) = validate::label_value(v) {
                    errs.push(SelectorError::new(
                        &field,
                        v,
                        format!("invalid label value: {e}"),
                    ));
                }
                reqs.push(Requirement {
                    key: k.clone(),
                    op: Op::In,
                    values: BTreeSet::from([v.clone()]),
                });
            }
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            if let Err(m) = validate::label_key(&e.key) {
                errs.push(SelectorError::new(
                    &format!("{field}.key"),
                    &e.key,
                    format!("invalid label key: {m}"),
                ));
            }
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let op = match e.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    errs.push(SelectorError::new(
                        &format!("{field}.operator"),
                        other,
                        "not a valid selector operator: supported values are In, NotIn, Exists, DoesNotExist",
                    ));
                    continue;
                }
            };
            match op {
                Op::In | Op::NotIn if values.is_empty() => errs.push(SelectorError::new(
                    &format!("{field}.values"),
                    "[]",
                    "must be specified when `operator` is 'In' or 'NotIn'",
                )),
                Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                    errs.push(SelectorError::new(
                        &format!("{field}.values"),
                        &values.iter().cloned().collect::<Vec<_>>().join(","),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ))
                }
                _ => {}
            }
            for (j, v) in e.values.iter().flatten().enumerate() {
                if let Err(m) = validate::label_value(v) {
                    errs.push(SelectorError::new(
                        &format!("{field}.values[{j}]"),
                        v,
                        format!("invalid label value: {m}"),
                    ));
                }
            }
            reqs.push(Requirement {
                key: e.key.clone(),
                op,
                values,
            });
        }
        if errs.is_empty() {
            Ok(Self::from_requirements(reqs))
        } else {
            Err(errs)
        }
    }
}

impl fmt::Display for Selector {
    /// `{}` for everything, else the requirements joined by `,`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reqs.is_empty() {
            return write!(f, "{{}}");
        }
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A problem in a selector, relative to the selector's field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    /// Field path relative to the selector, e.g. `matchExpressions[0].values`.
    pub field: String,
    /// Offending value.
    pub value: String,
    /// What is wrong.
    pub message: String,
}

impl SelectorError {
    fn new(field: &str, value: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            value: value.to_string(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let sel = Selector::parse(&LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                expr("tier", "In", Some(&["a", "b"])),
                expr("legacy", "DoesNotExist", None),
                expr("env", "NotIn", Some(&["prod"])),
                expr("team", "Exists", None),
            ]),
        })
        .unwrap();
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "a"), ("team", "t")])));
        assert!(sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "b"),
            ("team", "t"),
            ("env", "dev")
        ])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "c"), ("team", "t")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "a"),
            ("team", "t"),
            ("legacy", "1")
        ])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "a"),
            ("team", "t"),
            ("env", "prod")
        ])));
        assert_eq!(
            sel.first_miss(&labels(&[("tier", "a"), ("team", "t")]))
                .unwrap()
                .why_not(&labels(&[])),
            "lacks label app=web"
        );
    }

    #[test]
    fn empty_selects_all() {
        let sel = Selector::parse(&LabelSelector::default()).unwrap();
        assert!(sel.is_everything());
        assert!(sel.matches(&labels(&[])));
        assert_eq!(sel.to_string(), "{}");
    }

    #[test]
    fn operator_value_lists_are_checked() {
        let errs = Selector::parse(&LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                expr("a", "In", Some(&[])),
                expr("b", "Exists", Some(&["x"])),
                expr("c", "Equals", Some(&["x"])),
                expr("Bad Key", "Exists", None),
            ]),
        })
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "matchExpressions[0].values",
                "matchExpressions[1].values",
                "matchExpressions[2].operator",
                "matchExpressions[3].key"
            ]
        );
    }
}
