//! JUnit XML for CI systems: one `<testsuite>` per scenario file, one
//! `<testcase>` per step, failures with their reason.

use super::runner::ScenarioResult;

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

pub fn render(results: &[ScenarioResult]) -> String {
    let tests: usize = results
        .iter()
        .map(|r| r.steps.len() + usize::from(r.setup_error.is_some()))
        .sum();
    let failures = results.iter().filter(|r| !r.passed()).count();
    let mut xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"otpgate scenarios\" tests=\"{tests}\" failures=\"{failures}\">\n");
    for r in results {
        let cases = r.steps.len() + usize::from(r.setup_error.is_some());
        let failed = usize::from(!r.passed());
        xml.push_str(&format!(
            "  <testsuite name=\"{}\" file=\"{}\" tests=\"{cases}\" failures=\"{failed}\">\n",
            escape(&r.name),
            escape(&r.file)
        ));
        if let Some(e) = &r.setup_error {
            xml.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"setup\">\n      <failure message=\"{}\"/>\n    </testcase>\n",
                escape(&r.name),
                escape(e)
            ));
        }
        for (i, s) in r.steps.iter().enumerate() {
            let name = format!("{:02} {}", i + 1, s.label);
            match &s.outcome {
                Ok(_) => xml.push_str(&format!("    <testcase classname=\"{}\" name=\"{}\"/>\n", escape(&r.name), escape(&name))),
                Err(why) => xml.push_str(&format!(
                    "    <testcase classname=\"{}\" name=\"{}\">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    escape(&r.name),
                    escape(&name),
                    escape(why),
                    escape(why)
                )),
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::super::runner::{ScenarioResult, StepResult};
    use super::*;

    #[test]
    fn failures_are_escaped_and_counted() {
        let r = ScenarioResult {
            name: "a <b>".into(),
            file: "f.toml".into(),
            steps: vec![
                StepResult {
                    label: "ok".into(),
                    outcome: Ok("x".into()),
                    seconds: 0.0,
                },
                StepResult {
                    label: "bad".into(),
                    outcome: Err("expected `verified`, got \"x\" & <y>".into()),
                    seconds: 0.0,
                },
            ],
            setup_error: None,
        };
        let xml = render(&[r]);
        assert!(xml.contains("failures=\"1\""));
        assert!(xml.contains("&lt;y&gt;") && xml.contains("&amp;") && xml.contains("a &lt;b&gt;"));
    }
}
