//! Shared test fixtures.

pub mod binary;
pub mod chaos;
pub mod db;
pub mod fake;
pub mod http;
pub mod proxy;
pub mod synapse;
pub mod v2;

/// Runs each named test body, an `async fn(Backend)` beside the call, once per store:
/// as `postgres::NAME` and `sqlite::NAME`. A leading `#[...]` replaces `#[tokio::test]`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $crate::support::on_both_stores!(#[tokio::test] $($name),*);
    };
    (#[$test:meta] $($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[$test]
                async fn $name() {
                    super::$name($crate::support::db::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[$test]
                async fn $name() {
                    super::$name($crate::support::db::Backend::Sqlite).await
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;
