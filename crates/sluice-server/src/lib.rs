//! sluice's HTTP adapter: the API under `/api/v1`, `/metrics`, `/health`, `/ready` and the
//! dashboard at `/`, served by `sluice serve`. Like the CLI it is an adapter: each route parses
//! its request, calls one `sluice_app` function and answers the result as JSON; it has no
//! logic of its own.
//!
//! A tour:
//! - [`Server::bind`] checks the [`Config`] (no token: loopback only) and binds;
//!   [`Server::run`] serves until a `CancellationToken` is cancelled.
//! - [`router`] is the whole API with its layers: the token guard (`auth`), the body limit,
//!   and a fallback that answers unknown routes in the API's error shape (`error`).
//! - The routes are declared once (`routes`); [`route_table`] lists them, and the OpenAPI
//!   document ([`OPENAPI`], served at `/api/v1/openapi.json`) is checked against it by a test.
//! - `/metrics` is the store's numbers in the Prometheus text format (`metrics`).
//! - The dashboard at `/` (`dashboard`) is HTML, CSS and JavaScript embedded in the binary;
//!   its pages read and act through the API like any client.
//!
//! ```no_run
//! # async fn example(store: std::sync::Arc<dyn sluice_store::Store>) -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_server::{Config, Server};
//! let config = Config {
//!     listen: "127.0.0.1:0".parse()?,
//!     token: None,
//!     public_read: false,
//!     roots: sluice_app::roots::Roots::new(&[])?,
//!     max_body: sluice_server::DEFAULT_MAX_BODY,
//! };
//! let server = Server::bind(config, store).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.run(tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

mod auth;
mod dashboard;
mod error;
mod extract;
mod metrics;
mod process;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use sluice_app::roots::Roots;
use sluice_store::Store;
use tokio_util::sync::CancellationToken;

pub use auth::{MIN_TOKEN_LEN, Token};
pub use error::ApiError;
pub use process::process_metrics;
pub use routes::Route;

/// The OpenAPI 3.1 document of the API, kept by hand beside the routes (a test checks that it
/// documents every route and only those).
pub const OPENAPI: &str = include_str!("openapi.json");

/// The largest request body by default (a pipeline spec or a schema is a few KiB).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// How `sluice serve` serves.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The API token; `None` serves loopback only, without checks.
    pub token: Option<Token>,
    /// Reads need no token.
    pub public_read: bool,
    /// Where specs sent over the API may name files.
    pub roots: Roots,
    /// The largest request body taken, in bytes.
    pub max_body: usize,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {0} without an API token: anyone who can reach it could change the pipelines; set SLUICE_API_TOKEN or --token-file, or listen on 127.0.0.1"
    )]
    NoTokenOffLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP stopped: {0}")]
    Serve(#[source] std::io::Error),
}

/// The whole API over `store`, with its layers.
pub fn router(store: Arc<dyn Store>, config: &Config) -> Router {
    let state = routes::AppState {
        store,
        roots: Arc::new(config.roots.clone()),
    };
    let access = auth::Access {
        token: config.token.clone(),
        public_read: config.public_read,
    };
    let (router, _) = routes::routes();
    router
        .merge(dashboard::router())
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(config.max_body))
        .layer(axum::middleware::from_fn_with_state(access, auth::guard))
        .with_state(state)
}

/// Every route the router serves.
pub fn route_table() -> Vec<Route> {
    routes::routes().1
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {method} {}: the routes are listed in /api/v1/openapi.json",
        uri.path()
    ))
}

async fn no_method(method: Method, uri: Uri) -> ApiError {
    ApiError::user(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}: see /api/v1/openapi.json for its methods",
            uri.path()
        ),
    )
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Server {
    /// Binds `config.listen`, refusing an address off loopback when no token is configured.
    pub async fn bind(config: Config, store: Arc<dyn Store>) -> Result<Server, ServeError> {
        if config.token.is_none() && !config.listen.ip().is_loopback() {
            return Err(ServeError::NoTokenOffLoopback(config.listen));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        let router = router(store, &config);
        Ok(Server { listener, router })
    }

    /// The address it listens on (the port chosen, for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `stop` is cancelled; requests in flight then finish.
    pub async fn run(self, stop: CancellationToken) -> Result<(), ServeError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .map_err(ServeError::Serve)
    }
}
