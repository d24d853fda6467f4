//! The registry over real HTTP: every endpoint of the distribution spec, its error
//! cases, and Wharf's index policies. Each test runs against SQLite, against PostgreSQL, and
//! against two replicas sharing a Garage bucket and a PostgreSQL schema behind nginx.
//! The web UI is driven in a real browser (headless chromium) by `ui.rs`.

mod auth;
mod auth_external;
mod auth_hardening;
mod conformance;
mod harness;
mod latency;
mod limits;
mod protocol;
mod size_limit;
mod sparse;
mod storage;
mod ui;
mod webhooks;

/// Instantiate async test fns `fn(Backend)` once per backend.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::harness::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::harness::Backend::Postgres).await } )*
        }
        mod replicas {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::harness::Backend::Replicas).await } )*
        }
    };
}
