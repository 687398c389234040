//! `runner serve`, the live results page: its HTTP API and its refusals over raw sockets, and
//! the page itself driven in headless Chromium through chromedriver (WebDriver) while a sweep
//! runs and its files change.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver`. Without them it says so
//! and passes, unless RUNNER_REQUIRE_BROWSER=1 (as in CI), where it fails.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::common::{column, read_csv, root};

/// The tiny model-free sweep of the resume tests: six trials of three logged steps.
const SWEEP: &str = "tests/fixtures/recipes/resume_sweep.lua";

/// A `runner serve` process; its stderr (the server log) goes to a file.
struct Serve {
    child: Child,
    url: String,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Serve {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("serve.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .arg("serve")
            .arg(dir)
            .args(["--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("runner serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Self {
            child,
            url,
            log,
            _log_dir: log_dir,
        }
    }

    fn addr(&self) -> String {
        self.url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 GET (no client-side path normalisation: `..` reaches the server as sent).
fn get(addr: &str, target: &str, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn get_json(addr: &str, target: &str) -> (u16, Json) {
    let (status, body) = get(addr, target, "localhost");
    (status, serde_json::from_str(&body).unwrap_or(Json::Null))
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replaces `path` the way a sweep does: a temporary file renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Reads the event stream until `needle` arrives; fails after 20 s, whether the stream ends or
/// only keep-alive comments come.
fn read_until(events: &mut BufReader<TcpStream>, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !seen.contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in 20 s: {seen:?}"
        );
        assert!(
            events.read_line(&mut seen).unwrap() > 0,
            "events ended: {seen:?}"
        );
    }
}

const TRIALS: &str = "trial_id,x,status,seconds,score\nt1,1,ok,0.5,10\nt2,2,ok,0.5,20\n";

#[test]
fn serve_refuses_paths_outside_the_folder_and_survives_corrupt_files() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    fs::create_dir_all(results.join("s")).unwrap();
    fs::write(results.join("s/trials.csv"), TRIALS).unwrap();
    fs::write(tmp.path().join("secret.txt"), "do not serve").unwrap();
    let serve = Serve::start(&results, &[]);
    let addr = serve.addr();
    assert!(serve.url.starts_with("http://127.0.0.1:"), "{}", serve.url);

    let (status, list) = get_json(&addr, "/api/sweeps");
    assert_eq!(status, 200);
    assert_eq!(list["sweeps"][0]["name"], "s");
    assert_eq!(list["sweeps"][0]["trials"], 2);

    // Paths that try to leave the results folder.
    for target in [
        "/../secret.txt",
        "/api/sweeps/..%2Fsecret.txt",
        "/api/sweeps/%2e%2e",
        "/api/sweeps/..%2F..%2Fetc%2Fpasswd/steps",
        "/api/sweeps/%2Fetc",
    ] {
        let (status, body) = get(&addr, target, "localhost");
        assert!(status == 400 || status == 404, "{target}: {status} {body}");
        assert!(!body.contains("do not serve"), "{target}: {body}");
    }
    // Another Host (DNS rebinding) is refused on a loopback address.
    let (status, body) = get(&addr, "/api/sweeps", "attacker.example:80");
    assert_eq!(status, 403, "{body}");

    // The page tells which sweeps change, as server-sent events.
    let mut events = TcpStream::connect(&addr).unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        events,
        "GET /api/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut events = BufReader::new(events);
    read_until(&mut events, "event: hello");

    // A corrupt trials.csv: the API names file and line, the log says it, the server goes on.
    replace(
        &results.join("s/trials.csv"),
        "trial_id,x,status,seconds,score\nt1,1,ok,0.5,10\nt2,2,ok,0.5\n",
    );
    read_until(&mut events, "data: [\"s\"]");
    let (status, body) = get_json(&addr, "/api/sweeps/s");
    assert_eq!(status, 422);
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("s/trials.csv:3") && msg.contains("4 fields, but the header has 5"),
        "{msg}"
    );
    wait_until(
        "the error in the server log",
        Duration::from_secs(5),
        || serve.log().contains("trials.csv:3"),
    );
    let (status, list) = get_json(&addr, "/api/sweeps");
    assert_eq!(status, 200);
    assert!(list["sweeps"][0]["error"].as_str().unwrap().contains(":3"));

    // Repaired, it reads again; a sweep folder deleted is gone from the list.
    replace(&results.join("s/trials.csv"), TRIALS);
    let (status, body) = get_json(&addr, "/api/sweeps/s");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["trials"][1]["metrics"]["score"], "20");
    fs::remove_dir_all(results.join("s")).unwrap();
    assert_eq!(get_json(&addr, "/api/sweeps/s").0, 404);
    assert_eq!(get_json(&addr, "/api/sweeps").1["sweeps"], json!([]));
}

#[test]
fn serve_warns_on_a_non_local_address() {
    let tmp = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(tmp.path(), &["--host", "0.0.0.0"]);
    assert!(serve.url.starts_with("http://0.0.0.0:"), "{}", serve.url);
    let log = serve.log();
    assert!(
        log.contains("warning: serving on 0.0.0.0") && log.contains("SSH"),
        "{log}"
    );
    let _ = serve.child.kill();
}

#[test]
fn serve_flag_serves_while_the_recipe_runs_and_after() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("run.log");
    let mut run = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(root())
        .args([SWEEP, "--serve=127.0.0.1:0", "--results"])
        .arg(tmp.path().join("results"))
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut addr = String::new();
    wait_until("the address", Duration::from_secs(20), || {
        let text = fs::read_to_string(&log).unwrap();
        match text.split_whitespace().find(|w| w.starts_with("http://")) {
            Some(url) => {
                addr = url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .into();
                true
            }
            None => false,
        }
    });
    wait_until(
        "all six trials on the page's API",
        Duration::from_secs(60),
        || get_json(&addr, "/api/sweeps").1["sweeps"][0]["trials"] == 6,
    );
    wait_until(
        "the run to finish and keep serving",
        Duration::from_secs(30),
        || {
            fs::read_to_string(&log)
                .unwrap()
                .contains("still serving the results")
        },
    );
    assert!(run.try_wait().unwrap().is_none(), "it stopped serving");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    let status = run.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        fs::read_to_string(&log).unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// The page in a browser

/// chromedriver with one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Browser {
    /// `None` when chromium or chromedriver is missing (and the test may skip).
    fn start() -> Option<Self> {
        let has = |bin: &str| {
            Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !has("chromedriver") || !has("chromium") {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let base = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver", Duration::from_secs(30), || {
            ureq::get(&format!("{base}/status")).call().is_ok()
        });
        let caps = json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": { "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1800"
        ] } } } });
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
        };
        let created = browser.call("POST", "/session", Some(caps));
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Some(browser)
    }

    fn call(&self, method: &str, path: &str, body: Option<Json>) -> Json {
        let url = format!("{}{path}", self.base);
        let resp = match body {
            Some(b) => ureq::request(method, &url).send_json(b),
            None => ureq::request(method, &url).call(),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "WebDriver {method} {path}: {code} {}",
                    r.into_string().unwrap()
                )
            }
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        };
        let v: Json = resp.into_json().unwrap();
        v["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        );
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn eval(&self, script: &str) -> Json {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits until `script` returns something other than null or false, and returns it.
    fn wait_for(&self, what: &str, script: &str) -> Json {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = self.eval(script);
            if !(last.is_null() || last == Json::Bool(false)) {
                return last;
            }
            if Instant::now() > deadline {
                let page = self.eval(
                    "const v = (id) => { const e = document.getElementById(id); \
                       return e && [...e.selectedOptions].map((o) => o.value).join(','); }; \
                     return [document.getElementById('error').textContent, \
                     document.querySelectorAll('#trials tbody tr').length, \
                     document.getElementById('live').textContent, \
                     [v('pv-rows'), v('pv-cols'), v('pv-value')].join(' / '), \
                     document.getElementById('pivot').textContent.slice(0, 300)];",
                );
                panic!(
                    "timed out waiting for {what}; the page shows (error, rows, live, pivot \
                     rows / cols / value, pivot text): {page}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &Path) {
        use base64_png::decode;
        let b64 = self.call("GET", &self.session_path("/screenshot"), None);
        fs::write(path, decode(b64.as_str().unwrap())).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Base64 as WebDriver sends screenshots (standard alphabet, padded); a few lines instead of a
/// dependency.
mod base64_png {
    pub fn decode(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        };
        let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
        let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= (val(c) as u32) << (18 - 6 * i);
            }
            out.extend(&n.to_be_bytes()[1..chunk.len()]);
        }
        out
    }
}

/// Every file under `dir` with its size and modification time.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(listing(&e.path()));
        } else {
            out.push((e.path(), m.len(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

/// The page's trial table: per row its trial id and each cell's exact text by column.
const TABLE_ROWS: &str = "return [...document.querySelectorAll('#trials tbody tr')].map(tr => \
    ({ id: tr.dataset.trial, cells: Object.fromEntries([...tr.querySelectorAll('td[data-col]')]\
    .map(td => [td.dataset.col, td.dataset.value])) }));";

#[test]
fn the_page_follows_a_running_sweep_in_chromium() {
    let Some(browser) = Browser::start() else {
        assert!(
            std::env::var("RUNNER_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "RUNNER_REQUIRE_BROWSER=1 but chromium or chromedriver is missing \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: no chromium/chromedriver here (set RUNNER_REQUIRE_BROWSER=1 to fail)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    // The folder does not exist yet: the sweep appears on an open page as it starts.
    let serve = Serve::start(&results, &[]);
    browser.goto(&serve.url);
    browser.wait_for(
        "the empty page",
        "return !document.getElementById('no-sweeps').hidden;",
    );

    let mut run = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(root())
        .args([SWEEP, "--set", "pause=0.3", "--results"])
        .arg(&results)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    browser.wait_for(
        "the running sweep on the page",
        "return document.querySelectorAll('#trials tbody tr').length > 0;",
    );
    assert!(
        run.try_wait().unwrap().is_none(),
        "the sweep finished before the page showed it running"
    );
    assert_eq!(run.wait().unwrap().code(), Some(0));
    let sweep = results.join("resume");
    browser.wait_for(
        "six trials",
        "return document.querySelectorAll('#trials tbody tr').length === 6;",
    );

    // The table is trials.csv, cell for cell.
    let (header, rows) = read_csv(&sweep.join("trials.csv"));
    let shown = browser.eval(TABLE_ROWS);
    assert_eq!(shown.as_array().unwrap().len(), rows.len());
    for row in &rows {
        let id = &row[0];
        let page = shown
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("trial {id} not on the page: {shown}"));
        for name in ["status", "x", "y", "score"] {
            assert_eq!(
                page["cells"][name],
                row[column(&header, name)],
                "trial {id}, column {name}"
            );
        }
        let seconds: f64 = page["cells"]["seconds"].as_str().unwrap().parse().unwrap();
        let want: f64 = row[column(&header, "seconds")].parse().unwrap();
        assert!((seconds - want).abs() < 1e-9, "{seconds} vs {want}");
    }

    // A curve's points are steps.csv's rows of that trial.
    let (sh, steps) = read_csv(&sweep.join("steps.csv"));
    let first = &rows[0][0];
    let curve = browser.wait_for(
        "the first trial's curve",
        &format!(
            "const p = document.querySelector('#curves path.curve[data-trial=\"{first}\"]'); \
             return p && [p.dataset.steps, p.dataset.values, p.getAttribute('d')];"
        ),
    );
    let (mut want_steps, mut want_values) = (Vec::new(), Vec::new());
    for s in steps.iter().filter(|s| &s[0] == first) {
        want_steps.push(s[column(&sh, "step")].parse::<f64>().unwrap());
        want_values.push(s[column(&sh, "loss")].parse::<f64>().unwrap());
    }
    let nums = |v: &Json| -> Vec<f64> {
        v.as_str()
            .unwrap()
            .split(',')
            .map(|x| x.parse().unwrap())
            .collect()
    };
    assert_eq!(nums(&curve[0]), want_steps);
    assert_eq!(nums(&curve[1]), want_values);
    assert_eq!(
        curve[2].as_str().unwrap().matches(['M', 'L']).count(),
        want_steps.len(),
        "one vertex per point"
    );

    // Serving wrote nothing into the folder.
    let before = listing(&results);
    browser.eval("window.__noReload = 42; return true;");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(listing(&results), before);

    // A new trial (trials.csv replaced, steps appended) appears without a reload.
    let mut text = fs::read_to_string(sweep.join("trials.csv")).unwrap();
    let mut cells = rows[0].clone();
    cells[0] = "feedbeef0001".into();
    cells[column(&header, "x")] = "9".into();
    cells[column(&header, "score")] = "90".into();
    text.push_str(&cells.join(","));
    text.push('\n');
    replace(&sweep.join("trials.csv"), &text);
    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(sweep.join("steps.csv"))
        .unwrap();
    let width = sh.len();
    for (step, loss) in [(1, 9.0), (2, 4.5), (3, 3.0)] {
        let mut line = vec![String::new(); width];
        line[0] = "feedbeef0001".into();
        line[column(&sh, "step")] = step.to_string();
        line[column(&sh, "loss")] = loss.to_string();
        writeln!(log, "{}", line.join(",")).unwrap();
    }
    drop(log);
    let added = browser.wait_for(
        "the appended trial and its curve",
        "const tr = document.querySelector('#trials tbody tr[data-trial=\"feedbeef0001\"]'); \
         const p = document.querySelector('#curves path.curve[data-trial=\"feedbeef0001\"]'); \
         return tr && p && [tr.querySelector('td[data-col=\"score\"]').dataset.value, \
         p.dataset.values, window.__noReload];",
    );
    assert_eq!(added, json!(["90", "9,4.5,3", 42]));

    // The screenshot the docs can show, beside the test's other output.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    browser.screenshot(&shot);
    let png = fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );

    // Sorting by a metric, and a filter.
    browser.eval(
        "document.querySelector('#trials th[data-col=\"score\"]').click(); \
                  document.querySelector('#trials th[data-col=\"score\"]').click(); return 1;",
    );
    let order = browser.eval(TABLE_ROWS);
    assert_eq!(
        order[0]["cells"]["score"], "90",
        "descending by score: {order}"
    );
    let filtered = browser.eval(
        "const f = document.getElementById('filter'); f.value = 'x>=3 y=b'; \
         f.dispatchEvent(new Event('input')); \
         return document.querySelectorAll('#trials tbody tr').length;",
    );
    let want = rows
        .iter()
        .chain([&cells])
        .filter(|r| r[column(&header, "x")].parse::<f64>().unwrap() >= 3.0)
        .filter(|r| r[column(&header, "y")] == "b")
        .count();
    assert_eq!(filtered, json!(want));
    browser.eval(
        "const f = document.getElementById('filter'); f.value = ''; \
         f.dispatchEvent(new Event('input')); return 1;",
    );

    // The pivot table is `runner table`'s. Under load the page may first draw it before the
    // sweep's parameters are known (rows = trial_id); the default (rows = x) follows.
    let pivot = browser.wait_for(
        "the pivot table by x",
        "const t = document.querySelector('#pivot table'); \
         const rows = t && [...t.querySelectorAll('tr')].map(r => [...r.children].map(c => c.textContent)); \
         return rows && rows[0][0] === 'x' && rows;",
    );
    assert_eq!(pivot[0][0], "x", "{pivot}");

    // A corrupt trials.csv shows on the page with its file and line; repaired, the table returns.
    replace(
        &sweep.join("trials.csv"),
        &format!("{}\nbroken,row\n", text.trim_end()),
    );
    let error = browser.wait_for(
        "the error on the page",
        "const e = document.getElementById('error'); return !e.hidden && e.textContent;",
    );
    let line = text.lines().count() + 1;
    assert!(
        error
            .as_str()
            .unwrap()
            .contains(&format!("trials.csv:{line}")),
        "{error}"
    );
    assert!(serve.log().contains(&format!("trials.csv:{line}")));
    replace(&sweep.join("trials.csv"), &text);
    browser.wait_for(
        "the table back",
        "return document.getElementById('error').hidden && \
         document.querySelectorAll('#trials tbody tr').length === 7;",
    );

    // A deleted sweep leaves the list, and the page says so.
    fs::remove_dir_all(&sweep).unwrap();
    let gone = browser.wait_for(
        "the deleted sweep gone",
        "return document.querySelectorAll('#sweeps li').length === 0 && \
         document.getElementById('error').textContent;",
    );
    assert!(gone.as_str().unwrap().contains("no longer"), "{gone}");
    assert_eq!(browser.eval("return window.__noReload;"), json!(42));
}
