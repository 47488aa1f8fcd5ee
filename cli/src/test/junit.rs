//! JUnit XML for `netpol test --junit FILE`: one `<testsuite>` per DIR, one `<testcase>`
//! per case directory, a `<failure>` carrying the reports of its failed checks.
//!
//! Text and attributes are escaped by quick-xml; characters XML 1.0 cannot carry at all
//! (control characters other than tab, LF and CR) become U+FFFD first.

use std::borrow::Cow;
use std::io::Write as _;
use std::path::Path;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};

use super::report::{Status, Suite};

/// Writes the report to `path`.
pub(crate) fn write(path: &Path, suites: &[Suite]) -> std::io::Result<()> {
    let xml = render(suites)?;
    let mut f = std::fs::File::create(path)?;
    f.write_all(&xml)?;
    f.flush()
}

/// Replaces characters that are not allowed in an XML 1.0 document.
pub(crate) fn xml_safe(s: &str) -> Cow<'_, str> {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    };
    if s.chars().all(allowed) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(
            s.chars()
                .map(|c| if allowed(c) { c } else { '\u{FFFD}' })
                .collect(),
        )
    }
}

/// The XML document.
pub(crate) fn render(suites: &[Suite]) -> std::io::Result<Vec<u8>> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let tests: usize = suites.iter().map(|s| s.cases.len()).sum();
    let failures: usize = suites
        .iter()
        .flat_map(|s| &s.cases)
        .filter(|c| !c.passed)
        .count();
    w.create_element("testsuites")
        .with_attribute(("name", "netpol test"))
        .with_attribute(("tests", tests.to_string().as_str()))
        .with_attribute(("failures", failures.to_string().as_str()))
        .with_attribute(("errors", "0"))
        .write_inner_content(|w| {
            for suite in suites {
                write_suite(w, suite)?;
            }
            Ok(())
        })?;
    let mut out = w.into_inner();
    out.push(b'\n');
    Ok(out)
}

fn write_suite(w: &mut Writer<Vec<u8>>, suite: &Suite) -> std::io::Result<()> {
    let failures = suite.cases.iter().filter(|c| !c.passed).count();
    let dir = xml_safe(&suite.dir);
    w.create_element("testsuite")
        .with_attribute(("name", dir.as_ref()))
        .with_attribute(("tests", suite.cases.len().to_string().as_str()))
        .with_attribute(("failures", failures.to_string().as_str()))
        .with_attribute(("errors", "0"))
        .with_attribute(("skipped", "0"))
        .write_inner_content(|w| {
            for case in &suite.cases {
                let name = xml_safe(&case.name);
                let el = w
                    .create_element("testcase")
                    .with_attribute(("name", name.as_ref()))
                    .with_attribute(("classname", dir.as_ref()))
                    .with_attribute(("file", xml_safe(&case.path).as_ref()));
                let failed: Vec<_> = case
                    .checks
                    .iter()
                    .filter(|c| c.status == Status::Failed)
                    .collect();
                if failed.is_empty() {
                    el.write_empty()?;
                    continue;
                }
                let message = failed
                    .iter()
                    .map(|c| c.what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                let mut body = String::new();
                for c in &failed {
                    body.push_str(&c.what);
                    body.push('\n');
                    for line in c.report.lines() {
                        body.push_str("  ");
                        body.push_str(line);
                        body.push('\n');
                    }
                }
                el.write_inner_content(|w| {
                    w.create_element("failure")
                        .with_attribute(("message", xml_safe(&message).as_ref()))
                        .with_attribute(("type", "netpol.test"))
                        .write_text_content(BytesText::new(&xml_safe(&body)))?;
                    Ok(())
                })?;
            }
            Ok(())
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::report::{CaseReport, Check};
    use super::*;
    use quick_xml::Reader;

    fn case(name: &str, report: &str) -> CaseReport {
        CaseReport {
            name: name.into(),
            path: format!("d/{name}"),
            passed: report.is_empty(),
            checks: vec![Check {
                kind: "expect",
                what: format!("check of {name}"),
                status: if report.is_empty() {
                    Status::Passed
                } else {
                    Status::Failed
                },
                report: report.into(),
            }],
            warnings: Vec::new(),
        }
    }

    #[test]
    fn xml_safe_replaces_only_forbidden_characters() {
        assert!(matches!(xml_safe("a\tb\nc\r<&>\"'é"), Cow::Borrowed(_)));
        assert_eq!(xml_safe("a\u{1b}[31mb\u{0}"), "a\u{FFFD}[31mb\u{FFFD}");
        assert_eq!(xml_safe("\u{FFFF}"), "\u{FFFD}");
    }

    #[test]
    fn hostile_text_survives_a_round_trip() {
        let nasty = "<failure> & \"quotes\" 'apos' ]]> \u{7} end";
        let suites = [Suite {
            dir: "d<&>".into(),
            cases: vec![case("ok", ""), case("bad\"name", nasty)],
        }];
        let xml = String::from_utf8(render(&suites).unwrap()).unwrap();
        assert!(!xml.contains("<failure> &"), "{xml}");
        let mut r = Reader::from_str(&xml);
        let mut texts = String::new();
        let mut names = Vec::new();
        loop {
            match r.read_event().unwrap() {
                Event::Eof => break,
                Event::Start(e) | Event::Empty(e) => {
                    names.push(e.name().as_ref().to_string());
                    for a in e.attributes() {
                        a.unwrap();
                    }
                }
                Event::Text(t) => texts.push_str(&t.xml10_content()),
                Event::GeneralRef(g) => {
                    let c = match g.xml10_content().as_ref() {
                        "lt" => "<",
                        "gt" => ">",
                        "amp" => "&",
                        "quot" => "\"",
                        "apos" => "'",
                        other => panic!("unexpected entity {other}"),
                    };
                    texts.push_str(c);
                }
                _ => {}
            }
        }
        assert_eq!(
            names,
            ["testsuites", "testsuite", "testcase", "testcase", "failure"]
        );
        assert!(
            texts.contains("<failure> & \"quotes\" 'apos' ]]> \u{FFFD} end"),
            "{texts}"
        );
    }
}
