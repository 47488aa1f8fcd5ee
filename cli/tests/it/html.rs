//! `-o html` in a real headless browser (Debian's chromium): the page draws the expected
//! groups, nodes and edges without script or console errors, and selecting an edge shows
//! its ports and deciding rules. Skipped with a message when chromium is absent, unless
//! `NETPOL_REQUIRE_BROWSER=1`.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::support::netpol;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The DOM after the page's scripts ran, and chromium's log (console messages).
fn render(browser: &str, page: &Path, fragment: &str, profile: &Path) -> (String, String) {
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}{fragment}", page.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn no_console_errors(log: &str) {
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(bad.is_empty(), "console messages:\n{}", bad.join("\n"));
}

#[test]
fn html_pages_draw_in_a_headless_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("NETPOL_REQUIRE_BROWSER").is_none(),
            "NETPOL_REQUIRE_BROWSER is set but chromium is not installed"
        );
        eprintln!("skipped: chromium not installed (apt-get install -y chromium)");
        return;
    };
    let dir = TempDir::new().unwrap();
    let shop = "testdata/cases/apps/shop-multi-tier";
    let (cluster, policies) = (
        format!("{shop}/cluster.yaml"),
        format!("{shop}/policies.yaml"),
    );

    // list: one edge per connection of `-o json`.
    let run = netpol(&["list", "-f", &cluster, "-f", &policies, "-o", "html"]);
    run.expect_code(0);
    let page = &run.stdout;
    assert!(
        page.contains("default-src 'none'"),
        "no network fetches allowed"
    );
    for attr in [" src=", " href=", "@import", "url(http"] {
        assert!(
            !page.contains(attr),
            "page refers to something outside: {attr}"
        );
    }
    let json = netpol(&["list", "-f", &cluster, "-f", &policies, "-o", "json"]);
    let conns = serde_json::from_str::<serde_json::Value>(&json.stdout).unwrap()["connections"]
        .as_array()
        .unwrap()
        .len();
    let file = dir.path().join("list.html");
    std::fs::write(&file, page).unwrap();
    let (dom, log) = render(browser, &file, "", &dir.path().join("p1"));
    no_console_errors(&log);
    assert!(dom.contains("data-status=\"drawn\""), "{dom}");
    assert!(!dom.contains("data-error"), "{dom}");
    assert!(dom.contains(&format!("data-edges=\"{conns}\"")), "{dom}");
    for ns in ["monitoring", "shop", "external"] {
        assert!(
            dom.contains(&format!("class=\"ns\" data-ns=\"{ns}\"")),
            "{ns}"
        );
    }
    assert!(dom.contains("data-id=\"shop/db\""));
    assert_eq!(dom.matches("class=\"edge allowed\"").count(), conns);

    // Selecting an edge shows its ports and the deciding rules.
    let (dom, log) = render(browser, &file, "#edge=5", &dir.path().join("p2"));
    no_console_errors(&log);
    assert!(dom.contains("data-shown=\"edge\""), "{dom}");
    assert!(dom.contains("shop/api → shop/cache"), "{dom}");
    assert!(dom.contains("deciding rules"), "{dom}");
    assert!(dom.contains("shop/api egress rule"), "{dom}");

    // diff: added and changed edges coloured by kind.
    let u = "testdata/cases/upstream";
    let run = netpol(&[
        "diff",
        &format!("{u}/port-81-only"),
        &format!("{u}/allow-all-ingress"),
        "-o",
        "html",
    ]);
    run.expect_code(1);
    let file = dir.path().join("diff.html");
    std::fs::write(&file, &run.stdout).unwrap();
    let (dom, log) = render(browser, &file, "#node=x%2Fa", &dir.path().join("p3"));
    no_console_errors(&log);
    assert!(dom.contains("data-status=\"drawn\""), "{dom}");
    assert_eq!(dom.matches("class=\"edge added\"").count(), 6, "{dom}");
    assert_eq!(dom.matches("class=\"edge changed\"").count(), 3, "{dom}");
    assert!(dom.contains("data-shown=\"node\""), "{dom}");
}
