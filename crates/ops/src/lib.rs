//! Operator tooling around the runtime: provisioning a tree (`provision`),
//! keys and TLS requests born on a node's own machine (`init`), changing a
//! deployed tree (`lifecycle`: rotate, retire, move), the deployment CA
//! (`certs`), and the simulated district (`demo`, `workload`). Nothing here
//! runs inside `gridsync serve`.

pub mod certs;
pub mod demo;
pub mod init;
pub mod lifecycle;
pub mod provision;
pub mod workload;
