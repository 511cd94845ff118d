//! The control API's request and response bodies, one file per resource. The server's
//! handlers, the host agent and the CLI all use these, so what one side sends is what the
//! other reads; the handlers keep only the logic.

pub mod audit;
pub mod auth;
pub mod hosts;
pub mod keys;
pub mod leases;
pub mod phones;
pub mod profiles;
pub mod users;
pub mod utilisation;
