//! Rivetr's state in SQLite (sqlx, WAL): apps, their domains and env vars,
//! deployments (which are also the build queue), build logs and API tokens.
//!
//! The store keeps rows. It does not seal secrets (values arrive sealed),
//! decide what runs, or talk to the container engine.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use crate::domain::DeploymentStatus;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("preparing the database file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} exists already")]
    Duplicate(&'static str),
}

const MIGRATIONS: &[db::EmbeddedMigration] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "meta", include_str!("../migrations/0002_meta.sql")),
];

/// A stored app.
#[derive(Debug, Clone, serde::Serialize)]
pub struct App {
    pub id: i64,
    pub name: String,
    pub git_url: String,
    pub branch: String,
    pub commit_pin: Option<String>,
    #[serde(skip)]
    pub ssh_key: Option<String>,
    pub has_ssh_key: bool,
    pub created_at: i64,
    pub domains: Vec<String>,
}

/// What a new app row holds.
#[derive(Debug, Clone, Copy)]
pub struct NewApp<'a> {
    pub name: &'a str,
    pub git_url: &'a str,
    pub branch: &'a str,
    pub commit_pin: Option<&'a str>,
    pub ssh_key_sealed: Option<&'a str>,
    pub domains: &'a [String],
}

/// A stored env var; `value` is sealed when `secret`.
#[derive(Debug, Clone)]
pub struct EnvVar {
    pub key: String,
    pub value: String,
    pub secret: bool,
}

/// A stored deployment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployment {
    pub id: i64,
    pub app_id: i64,
    pub app: String,
    pub status: DeploymentStatus,
    pub reason: Option<String>,
    pub kind: String,
    pub rollback_of: Option<i64>,
    pub commit_sha: Option<String>,
    pub image: Option<String>,
    #[serde(skip)]
    pub config: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A stored API token (its secret only as a hash).
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub secret_sha256: String,
    pub role: String,
}

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

fn map_unique(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return StoreError::Duplicate(what);
            }
        }
        StoreError::Db(e)
    }
}

const DEPLOYMENT_COLUMNS: &str = "d.id, d.app_id, a.name AS app, d.status, d.reason, d.kind, \
     d.rollback_of, d.commit_sha, d.image, d.config, d.created_at, d.started_at, d.finished_at";

fn deployment(row: &SqliteRow) -> Result<Deployment, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Deployment {
        id: row.try_get("id")?,
        app_id: row.try_get("app_id")?,
        app: row.try_get("app")?,
        status: DeploymentStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: format!("unknown status {status:?}").into(),
        })?,
        reason: row.try_get("reason")?,
        kind: row.try_get("kind")?,
        rollback_of: row.try_get("rollback_of")?,
        commit_sha: row.try_get("commit_sha")?,
        image: row.try_get("image")?,
        config: row.try_get("config")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

impl Store {
    /// Opens (creating it 0600) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        prepare_file(path)?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5))
            // SQLite's page cache lives in the C heap, per connection; the
            // database is small, and 2 MiB a connection was most of an idle
            // server's heap.
            .pragma("cache_size", "-256");
        let pool = SqlitePoolOptions::new()
            .max_connections(3)
            .min_connections(0)
            // An idle server holds no connection (each has a thread).
            .idle_timeout(std::time::Duration::from_secs(30))
            .connect_with(options)
            .await?;
        db::migrator(MIGRATIONS).await?.run(&pool).await?;
        // The WAL and shared-memory files SQLite makes next to the database
        // get the process umask; tighten them like the database itself.
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Store { pool })
    }

    // ------------------------------------------------------------- apps --

    pub async fn create_app(&self, new: &NewApp<'_>, now: i64) -> Result<App, StoreError> {
        let NewApp {
            name,
            git_url,
            branch,
            commit_pin,
            ssh_key_sealed,
            domains,
        } = *new;
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO apps (name, git_url, branch, commit_pin, ssh_key, created_at) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(git_url)
        .bind(branch)
        .bind(commit_pin)
        .bind(ssh_key_sealed)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_unique("an app with this name"))?
        .try_get("id")?;
        for domain in domains {
            sqlx::query("INSERT INTO domains (domain, app_id) VALUES (?, ?)")
                .bind(domain)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_unique("the domain"))?;
        }
        tx.commit().await?;
        Ok(self.app(name).await?.expect("app just created"))
    }

    /// Updates the source settings of an app; `None` leaves a field as it is.
    pub async fn update_app_source(
        &self,
        id: i64,
        git_url: Option<&str>,
        branch: Option<&str>,
        commit_pin: Option<Option<&str>>,
        ssh_key_sealed: Option<Option<&str>>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(url) = git_url {
            sqlx::query("UPDATE apps SET git_url = ? WHERE id = ?")
                .bind(url)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(branch) = branch {
            sqlx::query("UPDATE apps SET branch = ? WHERE id = ?")
                .bind(branch)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(pin) = commit_pin {
            sqlx::query("UPDATE apps SET commit_pin = ? WHERE id = ?")
                .bind(pin)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(key) = ssh_key_sealed {
            sqlx::query("UPDATE apps SET ssh_key = ? WHERE id = ?")
                .bind(key)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_domains(&self, app_id: i64, domains: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM domains WHERE app_id = ?")
            .bind(app_id)
            .execute(&mut *tx)
            .await?;
        for domain in domains {
            sqlx::query("INSERT INTO domains (domain, app_id) VALUES (?, ?)")
                .bind(domain)
                .bind(app_id)
                .execute(&mut *tx)
                .await
                .map_err(map_unique("the domain"))?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn app_from_row(row: &SqliteRow, domains: Vec<String>) -> Result<App, sqlx::Error> {
        let ssh_key: Option<String> = row.try_get("ssh_key")?;
        Ok(App {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            git_url: row.try_get("git_url")?,
            branch: row.try_get("branch")?,
            commit_pin: row.try_get("commit_pin")?,
            has_ssh_key: ssh_key.is_some(),
            ssh_key,
            created_at: row.try_get("created_at")?,
            domains,
        })
    }

    pub async fn app(&self, name: &str) -> Result<Option<App>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM apps WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let id: i64 = row.try_get("id")?;
        let domains = self.domains_of(id).await?;
        Ok(Some(Self::app_from_row(&row, domains)?))
    }

    pub async fn app_by_id(&self, id: i64) -> Result<Option<App>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM apps WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let domains = self.domains_of(id).await?;
        Ok(Some(Self::app_from_row(&row, domains)?))
    }

    async fn domains_of(&self, app_id: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT domain FROM domains WHERE app_id = ? ORDER BY domain")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("domain"))
            .collect::<Result<_, _>>()?)
    }

    pub async fn apps(&self) -> Result<Vec<App>, StoreError> {
        let rows = sqlx::query("SELECT * FROM apps ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut apps = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            apps.push(Self::app_from_row(row, self.domains_of(id).await?)?);
        }
        Ok(apps)
    }

    pub async fn delete_app(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM apps WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The app a domain belongs to, if any.
    pub async fn domain_owner(&self, domain: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT a.name FROM domains d JOIN apps a ON a.id = d.app_id WHERE d.domain = ?",
        )
        .bind(domain)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("name")).transpose()?)
    }

    // -------------------------------------------------------------- env --

    pub async fn set_env(&self, app_id: i64, vars: &[EnvVar]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for var in vars {
            sqlx::query(
                "INSERT INTO env_vars (app_id, key, value, secret) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (app_id, key) DO UPDATE SET value = excluded.value, secret = excluded.secret",
            )
            .bind(app_id)
            .bind(&var.key)
            .bind(&var.value)
            .bind(var.secret)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes a variable; whether it existed.
    pub async fn unset_env(&self, app_id: i64, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM env_vars WHERE app_id = ? AND key = ?")
            .bind(app_id)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn env(&self, app_id: i64) -> Result<Vec<EnvVar>, StoreError> {
        let rows =
            sqlx::query("SELECT key, value, secret FROM env_vars WHERE app_id = ? ORDER BY key")
                .bind(app_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(EnvVar {
                    key: r.try_get("key")?,
                    value: r.try_get("value")?,
                    secret: r.try_get("secret")?,
                })
            })
            .collect()
    }

    // ------------------------------------------------------ deployments --

    pub async fn enqueue(
        &self,
        app_id: i64,
        kind: &str,
        rollback_of: Option<i64>,
        now: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO deployments (app_id, status, kind, rollback_of, created_at) \
             VALUES (?, 'queued', ?, ?, ?) RETURNING id",
        )
        .bind(app_id)
        .bind(kind)
        .bind(rollback_of)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    pub async fn deployment(&self, id: i64) -> Result<Option<Deployment>, StoreError> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN apps a ON a.id = d.app_id WHERE d.id = ?"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(deployment).transpose()?)
    }

    /// The app's deployments, newest first.
    pub async fn deployments(
        &self,
        app_id: i64,
        limit: i64,
    ) -> Result<Vec<Deployment>, StoreError> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN apps a ON a.id = d.app_id \
             WHERE d.app_id = ? ORDER BY d.id DESC LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(app_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(deployment).collect::<Result<_, _>>()?)
    }

    /// Deployments in a given status across all apps, oldest first.
    pub async fn deployments_in(
        &self,
        status: DeploymentStatus,
    ) -> Result<Vec<Deployment>, StoreError> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN apps a ON a.id = d.app_id \
             WHERE d.status = ? ORDER BY d.id"
        );
        let rows = sqlx::query(&sql)
            .bind(status.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(deployment).collect::<Result<_, _>>()?)
    }

    /// Work that was under way when the server stopped goes back to the
    /// queue; how many rows.
    pub async fn requeue_interrupted(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE deployments SET status = 'queued', started_at = NULL \
             WHERE status IN ('cloning', 'building', 'starting')",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Takes the oldest queued deployment of an app that has none in
    /// progress, skipping apps in `busy`; marks it `cloning` (or `starting`
    /// for a rollback) in the same statement so two workers never take one.
    pub async fn claim_next(
        &self,
        busy: &[i64],
        now: i64,
    ) -> Result<Option<Deployment>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.app_id, d.kind FROM deployments d WHERE d.status = 'queued' \
             AND NOT EXISTS (SELECT 1 FROM deployments o WHERE o.app_id = d.app_id \
                AND o.status IN ('cloning', 'building', 'starting')) \
             ORDER BY d.id",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let app_id: i64 = row.try_get("app_id")?;
            let kind: String = row.try_get("kind")?;
            if busy.contains(&app_id) {
                continue;
            }
            let next = if kind == "rollback" {
                "starting"
            } else {
                "cloning"
            };
            let claimed = sqlx::query(
                "UPDATE deployments SET status = ?, started_at = ? WHERE id = ? AND status = 'queued'",
            )
            .bind(next)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
            if claimed.rows_affected() == 1 {
                return self.deployment(id).await;
            }
        }
        Ok(None)
    }

    pub async fn set_status(
        &self,
        id: i64,
        status: DeploymentStatus,
        reason: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let finished = status.is_final().then_some(now);
        sqlx::query(
            "UPDATE deployments SET status = ?, reason = COALESCE(?, reason), \
             finished_at = COALESCE(?, finished_at) WHERE id = ?",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(finished)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_build_result(
        &self,
        id: i64,
        commit_sha: Option<&str>,
        image: Option<&str>,
        config_json: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deployments SET commit_sha = COALESCE(?, commit_sha), image = COALESCE(?, image), \
             config = COALESCE(?, config) WHERE id = ?",
        )
        .bind(commit_sha)
        .bind(image)
        .bind(config_json)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes `id` the app's running deployment and the one running before
    /// it `superseded`, in one transaction.
    pub async fn promote(&self, app_id: i64, id: i64, now: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE deployments SET status = 'superseded' WHERE app_id = ? AND status = 'running' AND id != ?",
        )
        .bind(app_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE deployments SET status = 'running', finished_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The deployment serving an app, if any.
    pub async fn running(&self, app_id: i64) -> Result<Option<Deployment>, StoreError> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN apps a ON a.id = d.app_id \
             WHERE d.app_id = ? AND d.status = 'running' ORDER BY d.id DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(app_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(deployment).transpose()?)
    }

    pub async fn append_log(&self, id: i64, seq: i64, line: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO deployment_logs (deployment_id, seq, line) VALUES (?, ?, ?)")
            .bind(id)
            .bind(seq)
            .bind(line)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Log lines of a deployment from `from_seq` on, as (seq, line).
    pub async fn log_lines(
        &self,
        id: i64,
        from_seq: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, line FROM deployment_logs WHERE deployment_id = ? AND seq >= ? ORDER BY seq",
        )
        .bind(id)
        .bind(from_seq)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("line")?)))
            .collect()
    }

    pub async fn clear_log(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deployment_logs WHERE deployment_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// This installation's id, made at first use.
    pub async fn instance_id(&self) -> Result<String, StoreError> {
        let fresh = hex::encode(secrets::random_bytes::<6>().map_err(|e| StoreError::File {
            path: "random source".into(),
            source: std::io::Error::other(e.to_string()),
        })?);
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('instance', ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&fresh)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM meta WHERE key = 'instance'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    // ----------------------------------------------------------- tokens --

    pub async fn add_token(&self, token: &ApiToken, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, secret_sha256, role, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(&token.secret_sha256)
        .bind(&token.role)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_unique("a token with this id"))?;
        Ok(())
    }

    pub async fn token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        let row = sqlx::query("SELECT id, name, secret_sha256, role FROM api_tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(ApiToken {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                secret_sha256: r.try_get("secret_sha256")?,
                role: r.try_get("role")?,
            })
        })
        .transpose()
    }

    pub async fn token_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }
}

/// Creates the database file 0600 before SQLite does (SQLite would use the
/// umask), and tightens an existing one.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(())
}
