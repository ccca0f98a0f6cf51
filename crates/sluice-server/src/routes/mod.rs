//! Every route, declared once in [`routes`]: the router is built from the table, and the
//! table is what the OpenAPI document is checked against (`openapi.json` documents each route
//! and nothing else; a test says so). Handlers are thin: parse the request, call one
//! `sluice_app` function, answer its result as JSON.

mod datasets;
mod deployments;
mod pipelines;
mod probes;
mod quarantine;

use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, on};
use sluice_app::roots::Roots;
use sluice_store::Store;

/// What every handler is given: the store and the roots specs may name.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub roots: Arc<Roots>,
}

/// One route: its method and path (axum's `{param}` syntax, as OpenAPI writes it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
}

/// A router under construction and the table of what it routes.
pub(crate) struct Routes {
    router: Router<AppState>,
    table: Vec<Route>,
}

impl Routes {
    fn new() -> Routes {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = match method {
            Method::GET => MethodFilter::GET,
            Method::POST => MethodFilter::POST,
            Method::PUT => MethodFilter::PUT,
            Method::DELETE => MethodFilter::DELETE,
            _ => MethodFilter::PATCH,
        };
        self.router = self.router.route(path, on(filter, handler));
        self.table.push(Route { method, path });
        self
    }

    pub(crate) fn get<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
    ) -> Routes {
        self.add(Method::GET, path, h)
    }

    pub(crate) fn post<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
    ) -> Routes {
        self.add(Method::POST, path, h)
    }

    pub(crate) fn put<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
    ) -> Routes {
        self.add(Method::PUT, path, h)
    }
}

/// The whole API: the router (without its layers) and its table.
pub fn routes() -> (Router<AppState>, Vec<Route>) {
    let routes = Routes::new();
    let routes = probes::add(routes);
    let routes = pipelines::add(routes);
    let routes = quarantine::add(routes);
    let routes = datasets::add(routes);
    let routes = deployments::add(routes);
    (routes.router, routes.table)
}
