//! Which stores a node uses, from `--database` and `--storage`.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::{
    AudioStore, JobStore, KeyStore, Leases, LocalAudioStore, PgJobStore, S3AudioStore, SqliteJobStore, StoreResult,
};

/// `--database`: `sqlite://PATH` (one process: `serve`) or `postgres://...` (shared by many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file, e.g. sqlite:///var/lib/dgx-music/dgx-music.db".into());
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(text.to_string()));
        }
        Err(format!(
            "{:?} is not a database URL: give sqlite://PATH (one machine) or \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE (several)",
            redact(text)
        ))
    }
}

impl DatabaseUrl {
    /// For logs: never the password.
    pub fn describe(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("SQLite {}", path.display()),
            DatabaseUrl::Postgres(url) => format!("PostgreSQL {}", redact(url)),
        }
    }
}

/// A URL with its password (between `:` and `@` of the authority) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_string(),
    };
    match path {
        Some(path) => format!("{scheme}://{authority}/{path}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// `--storage`: a directory (tracks in `audio/`, uploads in `uploads/`) or `s3://bucket/prefix`
/// (tracks under `prefix/tracks/`, uploads under `prefix/uploads/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    Dir(PathBuf),
    S3(String),
}

impl FromStr for StorageUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let bucket = rest.split('/').next().unwrap_or("");
            if bucket.is_empty() {
                return Err(format!("{text:?} names no bucket: the form is s3://BUCKET/PREFIX"));
            }
            return Ok(StorageUrl::S3(text.trim_end_matches('/').to_string()));
        }
        if text.contains("://") {
            return Err(format!("{text:?} is not a storage this server knows: give a directory or s3://BUCKET/PREFIX"));
        }
        if text.is_empty() {
            return Err("the storage is empty: give a directory or s3://BUCKET/PREFIX".into());
        }
        Ok(StorageUrl::Dir(PathBuf::from(text)))
    }
}

impl StorageUrl {
    pub fn describe(&self) -> String {
        match self {
            StorageUrl::Dir(dir) => format!("the directory {}", dir.display()),
            StorageUrl::S3(url) => url.clone(),
        }
    }
}

/// The job database, with the concrete store kept for what only it does.
pub enum Database {
    Sqlite(Arc<SqliteJobStore>),
    Postgres(Arc<PgJobStore>),
}

impl Database {
    pub async fn open(url: &DatabaseUrl, leases: Leases) -> StoreResult<Database> {
        Ok(match url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        super::StoreError::Database(format!("cannot create {} for the database: {e}", parent.display()))
                    })?;
                }
                Database::Sqlite(Arc::new(SqliteJobStore::open(path).await?))
            }
            DatabaseUrl::Postgres(url) => Database::Postgres(Arc::new(PgJobStore::connect(url, leases).await?)),
        })
    }

    pub fn jobs(&self) -> Arc<dyn JobStore> {
        match self {
            Database::Sqlite(store) => store.clone(),
            Database::Postgres(store) => store.clone(),
        }
    }

    pub fn keys(&self) -> Arc<dyn KeyStore> {
        match self {
            Database::Sqlite(store) => store.clone(),
            Database::Postgres(store) => store.clone(),
        }
    }

    /// Shared by several processes (and so by several machines).
    pub fn is_shared(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }

    pub async fn close(&self) {
        match self {
            Database::Sqlite(store) => store.close().await,
            Database::Postgres(store) => store.close().await,
        }
    }
}

/// The tracks and the uploads jobs continue.
pub struct Storage {
    pub audio: Arc<dyn AudioStore>,
    pub uploads: Arc<dyn AudioStore>,
}

impl Storage {
    pub async fn open(url: &StorageUrl) -> StoreResult<Storage> {
        Ok(match url {
            StorageUrl::Dir(dir) => Storage {
                audio: Arc::new(LocalAudioStore::open(dir.join("audio"))?),
                uploads: Arc::new(LocalAudioStore::open(dir.join("uploads"))?),
            },
            StorageUrl::S3(url) => {
                let runtime = tokio::runtime::Handle::current();
                let (tracks, uploads) = (format!("{url}/tracks"), format!("{url}/uploads"));
                let (audio, uploads) = tokio::task::spawn_blocking(move || {
                    Ok::<_, super::StoreError>((
                        S3AudioStore::open(&tracks, runtime.clone())?,
                        S3AudioStore::open(&uploads, runtime)?,
                    ))
                })
                .await
                .map_err(|e| super::StoreError::ObjectStore {
                    key: String::new(),
                    message: format!("opening the object store: {e}"),
                })??;
                Storage { audio: Arc::new(audio), uploads: Arc::new(uploads) }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_passwords_never_shown() {
        assert_eq!("sqlite:///tmp/x.db".parse(), Ok(DatabaseUrl::Sqlite("/tmp/x.db".into())));
        let pg: DatabaseUrl = "postgres://dgx:secret@db:5432/music".parse().unwrap();
        assert_eq!(pg.describe(), "PostgreSQL postgres://dgx:***@db:5432/music");
        let err = "mysql://root:hunter2@db/x".parse::<DatabaseUrl>().unwrap_err();
        assert!(err.contains("postgres://USER") && !err.contains("hunter2"), "{err}");
        assert!("sqlite://".parse::<DatabaseUrl>().is_err());
        assert_eq!("s3://music/tracks/".parse(), Ok(StorageUrl::S3("s3://music/tracks".into())));
        assert_eq!("/srv/music".parse(), Ok(StorageUrl::Dir("/srv/music".into())));
        assert!("s3:///x".parse::<StorageUrl>().unwrap_err().contains("no bucket"));
        assert!("gs://b/x".parse::<StorageUrl>().is_err());
        assert_eq!(redact("postgres:///music?host=/tmp"), "postgres:///music?host=/tmp");
    }
}
