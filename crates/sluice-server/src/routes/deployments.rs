//! Deployments: the place for `/api/v1/pipelines/{pipeline}/deployments` (start one from a
//! spec, its status, promote, pause, resume, abort, rollback, history).
//!
//! Nothing is routed here yet: the deployment controller (`sluice_app::deploy`) is being built.
//! Its routes go in [`add`], each calling one `sluice_app` function like the other modules; a
//! spec sent to start one is compiled with `sluice_app::roots::compile_confined`, so it may
//! only name locations under the server's roots. Add each route to `openapi.json` too (the
//! route table test fails until the two agree).

use super::Routes;

pub(crate) fn add(routes: Routes) -> Routes {
    routes
}
