//! strata-control's integration tests: real SQLite files, a throwaway
//! PostgreSQL cluster, the real server on port 0, real agent and receiver
//! processes.

mod alerts;
mod api;
mod dashboard;
mod e2e;
mod enrolment;
mod helpers;
mod postgres;
mod protocol;
mod reconcile;
mod store_contract;
