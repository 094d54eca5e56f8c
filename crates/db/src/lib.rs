//! Database plumbing shared by products: migrations embedded in the binary.
//!
//! Each product owns its schema as `.sql` files and lists them in an
//! [`Embedded`] source (`include_str!`), which sqlx's `Migrator` applies
//! and records in `_sqlx_migrations`. sqlx's `migrate!` macro would do the
//! same but needs the `macros` feature, a proc-macro build of every driver
//! that this workspace does not otherwise compile. (mtls-proxy carries an
//! earlier copy of this in its `store::schema` and can move here.)
//!
//! This crate holds no schema and opens no connection.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType};

/// One migration: version, description, SQL. Never edit a released one:
/// sqlx refuses to start when a checksum changes.
pub type EmbeddedMigration = (i64, &'static str, &'static str);

/// Migrations compiled into the binary, oldest first.
#[derive(Debug, Clone, Copy)]
pub struct Embedded(pub &'static [EmbeddedMigration]);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = self
            .0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// Builds a migrator over embedded migrations.
pub async fn migrator(
    migrations: &'static [EmbeddedMigration],
) -> Result<sqlx::migrate::Migrator, sqlx::migrate::MigrateError> {
    sqlx::migrate::Migrator::new(Embedded(migrations)).await
}
