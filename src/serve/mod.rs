//! `runner serve`: a live results page over a results folder. One HTML page (built into the
//! binary), a JSON API over the sweeps' trials.csv and steps.csv (read through
//! [`crate::report::SweepResults`], journal included), and server-sent events that tell the page
//! which sweeps changed. It only ever reads the folder.
//!
//! Bound to 127.0.0.1 by default; on a loopback address it also refuses requests whose `Host`
//! is not a loopback name, so a web page elsewhere cannot read the results through DNS
//! rebinding. Reach it from another machine through an SSH tunnel (docs/serve.md).

mod api;
mod changes;
mod folder;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Value as Json, json};
use tokio::sync::broadcast;

use folder::{Refused, ResultsFolder};

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// A bound, not yet running, results server.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    root: PathBuf,
}

impl Server {
    /// Binds `host:port` (port 0 picks a free one) to serve `root`, which need not exist yet
    /// (a sweep about to run creates it). A host that is not a loopback address gets a warning:
    /// anyone who reaches the port can read the results.
    pub fn bind(root: &Path, host: &str, port: u16) -> Result<Self> {
        let addr = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve host {host:?}"))?
            .next()
            .with_context(|| format!("host {host:?} has no address"))?;
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            eprintln!(
                "warning: serving on {addr}, not a loopback address: anyone who can reach this \
                 port can read the results, unencrypted. Prefer the default 127.0.0.1 and an SSH \
                 tunnel (docs/serve.md)."
            );
        }
        Ok(Self {
            listener,
            addr,
            root: root.to_path_buf(),
        })
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves until `stop` is set (open pages are then dropped, not waited for).
    pub fn run(self, stop: &AtomicBool) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the server's runtime")?;
        let folder = Arc::new(ResultsFolder::new(self.root));
        let (changes_tx, _) = broadcast::channel(64);
        changes::spawn(folder.clone(), changes_tx.clone());
        let state = Arc::new(AppState {
            folder,
            changes: changes_tx,
            loopback_only: self.addr.ip().is_loopback(),
        });
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(self.listener)?;
            let serve = axum::serve(listener, router(state));
            let stopped = async {
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                r = serve => r.context("the server stopped"),
                () = stopped => Ok(()),
            }
        })
    }
}

struct AppState {
    folder: Arc<ResultsFolder>,
    changes: broadcast::Sender<Arc<str>>,
    loopback_only: bool,
}

type Shared = State<Arc<AppState>>;

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/sweeps", get(list))
        .route("/api/sweeps/{name}", get(sweep))
        .route("/api/sweeps/{name}/steps", get(steps))
        .route("/api/sweeps/{name}/table", get(table))
        .route("/api/events", get(events))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// JSON that is never cached: the next request must see the next row.
fn fresh(body: Json) -> Response {
    let mut r = axum::Json(body).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether a `Host` header names this machine's loopback interface (any port: an SSH tunnel
/// may forward from another one).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn check_host(State(state): Shared, req: Request, next: Next) -> Response {
    if state.loopback_only {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !loopback_host(host) {
            return error(
                StatusCode::FORBIDDEN,
                format!("this server answers to localhost only, not to Host {host:?}"),
            );
        }
    }
    next.run(req).await
}

/// Runs a file-reading closure off the async thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a results read panicked")
}

async fn list(State(state): Shared) -> Response {
    let folder = state.folder.clone();
    fresh(blocking(move || api::sweep_list(&folder)).await)
}

/// Loads sweep `name` and answers with `view` of it, or with why it cannot.
async fn with_sweep(
    state: &AppState,
    name: String,
    view: impl FnOnce(&crate::report::SweepResults) -> Result<Json, String> + Send + 'static,
) -> Response {
    let folder = state.folder.clone();
    let shown = name.clone();
    let outcome = blocking(move || {
        folder.results(&name).map(|loaded| {
            loaded
                .as_ref()
                .as_ref()
                .map_err(Clone::clone)
                .and_then(view)
        })
    })
    .await;
    match outcome {
        Ok(Ok(body)) => fresh(body),
        // A malformed file: the page shows the message (file and line).
        Ok(Err(message)) => error(StatusCode::UNPROCESSABLE_ENTITY, message),
        Err(Refused::BadName) => error(
            StatusCode::BAD_REQUEST,
            format!("{shown:?} is not a sweep folder name"),
        ),
        Err(Refused::NotFound) => error(StatusCode::NOT_FOUND, format!("no sweep {shown:?}")),
    }
}

async fn sweep(State(state): Shared, UrlPath(name): UrlPath<String>) -> Response {
    with_sweep(&state, name, |r| Ok(api::sweep(r))).await
}

async fn steps(
    State(state): Shared,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let key = q.get("key").cloned().unwrap_or_else(|| "loss".into());
    let trials: Option<Vec<String>> = q.get("trials").map(|t| {
        t.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    });
    with_sweep(&state, name, move |r| {
        api::curves(r, &key, trials.as_deref())
    })
    .await
}

async fn table(
    State(state): Shared,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    with_sweep(&state, name, move |r| api::table(r, &q)).await
}

/// Server-sent events: `hello` on connecting (the page reloads everything: it may have missed
/// changes while disconnected), then `change` with the changed sweeps' names.
async fn events(State(state): Shared) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let hello = stream::once(async { Ok(Event::default().event("hello").data("{}")) });
    let changes = stream::unfold(state.changes.subscribe(), |mut rx| async move {
        let data = match rx.recv().await {
            Ok(names) => names,
            // Too far behind to know which: everything may have changed.
            Err(broadcast::error::RecvError::Lagged(_)) => Arc::from("null"),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(Event::default().event("change").data(&*data)), rx))
    });
    Sse::new(hello.chain(changes)).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for ok in [
            "localhost:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "localhost",
            "LOCALHOST:9",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "",
            "10.0.0.2:8080",
            "localhost.evil:80",
            "[::2]:1",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
